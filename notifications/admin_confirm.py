"""A confirmation page for risky admin actions: it says exactly what will happen and to how
many, and the action runs only when staff press the button."""

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
):
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "summary": summary,
        "items": list(items)[:50],
        "queryset": queryset,
        "action": action,
        "confirm_label": confirm_label,
        "ask_reason": ask_reason,
        "opts": modeladmin.model._meta,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/herald/confirm_action.html", context)
