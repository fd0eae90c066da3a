"""A confirmation page for risky admin actions: it says exactly what will happen and to how
many, and the action runs only when staff press the button.

`confirm_page` serves changelist actions (the selected rows travel as hidden inputs);
`confirm_form` serves the admin's own pages (launch, resume, the reminder gate), whose
values travel as `hidden` pairs to `form_action` (default: the same URL)."""

from django.contrib.admin import helpers
from django.template.response import TemplateResponse


def confirmed(request) -> bool:
    return request.POST.get("post") == "yes"


def confirm_page(
    modeladmin,
    request,
    queryset,
    *,
    action: str,
    title: str,
    summary: str,
    confirm_label: str,
    items=(),
    ask_reason: bool = False,
    details=(),
    inputs=(),
):
    """`inputs`: (name, label) of optional text inputs posted back with the confirmation."""
    return _render(
        modeladmin,
        request,
        {
            "queryset": queryset,
            "action": action,
            "title": title,
            "summary": summary,
            "confirm_label": confirm_label,
            "items": items,
            "ask_reason": ask_reason,
            "reason_required": True,
            "details": details,
            "inputs": list(inputs),
        },
    )


def confirm_form(
    modeladmin,
    request,
    *,
    title: str,
    summary: str,
    confirm_label: str,
    hidden=(),
    form_action: str = "",
    items=(),
    details=(),
    ask_reason: bool = False,
    reason_required: bool = True,
    reason: str = "",
    cancel_url: str = "",
    danger: bool = False,
):
    """A confirmation page for a view of the admin (not a changelist action). `hidden` is
    a list of (name, value) pairs posted back with post=yes."""
    return _render(
        modeladmin,
        request,
        {
            "queryset": (),
            "action": "",
            "title": title,
            "summary": summary,
            "confirm_label": confirm_label,
            "items": items,
            "details": details,
            "hidden": list(hidden),
            "form_action": form_action,
            "ask_reason": ask_reason,
            "reason_required": reason_required,
            "reason": reason,
            "cancel_url": cancel_url,
            "danger": danger,
        },
    )


def _render(modeladmin, request, values: dict):
    items = list(values.pop("items"))
    context = {
        **modeladmin.admin_site.each_context(request),
        **values,
        "items": items[:50],
        "more_items": max(len(items) - 50, 0),
        "opts": modeladmin.model._meta,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/herald/confirm_action.html", context)
