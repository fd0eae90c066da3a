"""Admin screens of batch customer notification: the batch form with its preview, run pages
with progress and breaker state, proposed actions with bulk decisions, customers, and the
seed's POST /admin/batch/resume. Every action calls notifications.batch and reports what
happened."""

import json
import uuid
from datetime import datetime

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.http import HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import get_valid_filename
from django.views.decorators.http import require_POST

from notifications import batch, breakers
from notifications.admin_confirm import confirm_form, confirm_page, confirmed
from notifications.admin_filters import WorkflowRunFilter
from notifications.admin_records import KeptRecordAdmin
from notifications.cohort import FILTER_FIELDS
from notifications.dispatch import provider_of
from notifications.killswitches import active_switches, switch_for
from notifications.models import (
    AuditEntry,
    Customer,
    Delivery,
    ProposedAction,
    ProviderBreaker,
    ReflexionEntry,
    VerifyCheck,
    Workflow,
    WorkflowRun,
)
from notifications.staged_files import (
    drop_staged,
    is_staged,
    stage_attachments,
    staged_attachments,
)


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, list | tuple):
            return [single(item, initial) for item in data]
        return [single(data, initial)] if data else []


class BatchForm(forms.Form):
    customer_cohort_filter = forms.CharField(
        help_text="Which customers, as field=value conditions separated by & (not ;), e.g. "
        "bid=B5875&region=NYC DOE; all must match. A value is taken as typed (a + is a plus); "
        "write %26 for a literal & in it (company=Smith %26 Sons). Fields: "
        + ", ".join(FILTER_FIELDS)
        + ".",
        widget=forms.TextInput(attrs={"size": 70}),
    )
    subject = forms.CharField(
        help_text="Template syntax, e.g. Holiday schedule for {{ customer_name }}.",
        widget=forms.TextInput(attrs={"size": 70}),
    )
    body_template = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8, "cols": 70}),
        help_text="Variables: " + ", ".join(f"{{{{ {v} }}}}" for v in batch.VARIABLES) + ".",
    )
    max_recipients = forms.IntegerField(required=False)  # help text: __init__ (a setting)
    attachments = MultipleFileField(
        required=False,
        widget=MultipleFileInput(),
        help_text="Optional files sent with every message.",
    )
    confirm_recent = forms.BooleanField(
        required=False,
        label="Send anyway to recipients emailed in the last 48 hours",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The limits batch.clean_max_recipients enforces, said where the value is typed.
        self.fields["max_recipients"].help_text = (
            f"Optional, a whole number from 1 to {settings.BATCH_MAX_RECIPIENTS_CEILING:,}. "
            f"Without it the cap is {batch.DEFAULT_CAP}; a higher value needs the cap-override "
            "permission and is audited."
        )


def _launched_twin(form: BatchForm) -> WorkflowRun | None:
    """The unfinished run a posted launch would repeat (batch.unfinished_twin), read from the
    posted filter, subject and body as the form cleans them."""
    form.is_valid()
    data = form.cleaned_data
    if not all(data.get(name) for name in ("customer_cohort_filter", "subject", "body_template")):
        return None
    return batch.unfinished_twin(
        cohort_filter=data["customer_cohort_filter"],
        subject=data["subject"],
        body_template=data["body_template"],
    )


def _form_errors(form: BatchForm, error: ValidationError) -> None:
    for field, messages_ in error.message_dict.items():
        target = field if field in form.fields else None
        if field == "body":
            target = "body_template"
        for message in messages_:
            form.add_error(target, message)


@admin.register(WorkflowRun)
class WorkflowRunAdmin(KeptRecordAdmin):
    list_display = (
        "id",
        "workflow",
        "status",
        "progress_bar",
        "created_by",
        "started_at",
        "completed_at",
    )
    list_filter = ("status", "workflow__type", "workflow", "created_by")
    date_hierarchy = "started_at"
    search_fields = ("=id", "created_by", "status_reason")
    list_select_related = ("workflow",)
    readonly_fields = (
        "workflow",
        "status",
        "status_reason",
        "progress_bar",
        "breaker_state",
        "started_at",
        "completed_at",
        "created_by",
        "inputs",
        "run_summary",
    )
    fields = readonly_fields
    change_form_template = "admin/notifications/workflowrun/change_form.html"
    change_list_template = "admin/notifications/workflowrun/change_list.html"
    actions = ["resume_runs", "cancel_runs"]

    def has_add_permission(self, request):
        return False

    def get_urls(self):
        return [
            path("batch/new/", self.admin_site.admin_view(self.batch_view), name="batch_new"),
            path(
                "<int:run_id>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name="batch_cancel",
            ),
            path(
                "<int:run_id>/resume/",
                self.admin_site.admin_view(self.resume_view),
                name="batch_resume_confirm",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="progress")
    def progress_bar(self, obj):
        if obj.workflow.type != "batch_notify":
            return "—"
        p = batch.run_progress(obj)
        return format_html(
            '<div class="herald-progress" title="{}% done" style="width:220px;background:#e5e7eb;'
            'border-radius:4px;height:12px;display:flex;overflow:hidden">'
            '<span style="width:{}%;background:#059669"></span>'
            '<span style="width:{}%;background:#dc2626"></span>'
            '<span style="width:{}%;background:#9ca3af"></span></div>'
            '<small class="herald-progress-text">{} sent · {} failed · '
            "{} not sent (skipped, expired or cancelled) · {} pending · {} awaiting review · "
            "{} rejected — of {} ({}%)</small>",
            p["percent"],
            _share(p["sent"], p["total"]),
            _share(p["failed"], p["total"]),
            _share(p["not_sent"] + p["rejected"], p["total"]),
            p["sent"],
            p["failed"],
            p["not_sent"],
            p["pending"],
            p["awaiting"],
            p["rejected"],
            p["total"],
            p["percent"],
        )

    @admin.display(description="summary")
    def run_summary(self, obj):
        """The counts written when the run ended; a run reopened since (a retry, a
        reconciliation) still holds its last ending's, said as such until it ends again."""
        if not obj.summary:
            return "—"
        counts = json.dumps(obj.summary, ensure_ascii=False)
        if obj.status in WorkflowRun.FINISHED:
            return counts
        return format_html(
            "<em>As it was when the run last ended; it was reopened since (now: {}), and "
            "the progress above is what it is now.</em><br>{}",
            obj.get_status_display(),
            counts,
        )

    @admin.display(description="circuit breaker")
    def breaker_state(self, obj):
        if obj.status == WorkflowRun.Status.ABORTED:
            return format_html(
                '<strong style="color:#dc2626">tripped</strong> — {}', obj.status_reason
            )
        if obj.consecutive_failures >= batch.BREAKER_FAILURES:  # aborted, then cancelled
            return format_html(
                '<strong style="color:#dc2626">tripped</strong> ({} failures in a row); the run '
                "was then {}",
                obj.consecutive_failures,
                obj.get_status_display().lower(),
            )
        state = f"closed ({obj.consecutive_failures} of {batch.BREAKER_FAILURES} failures in a row)"
        # The batch's own breaker is closed; a provider's may still hold its deliveries.
        held = (
            ""
            if obj.status in WorkflowRun.FINISHED
            else _breakers_holding([obj.id], now=timezone.now())
        )
        return f"{state}; {held}" if held else state

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = self.get_object(request, unquote(object_id))
        if run is None:  # no such run, or not a run number at all
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        extra_context = {
            **(extra_context or {}),
            "run": run,
            "envelope": run.proposed_actions.filter(customer__isnull=True).first(),
            "reflexions": ReflexionEntry.objects.filter(workflow_run=run).order_by("id"),
            "verify_checks": VerifyCheck.objects.filter(workflow_run=run),
            "can_resume": request.user.has_perm("notifications.resume_batch")
            and run.status == WorkflowRun.Status.ABORTED,
            "can_cancel": request.user.has_perm("notifications.resume_batch")
            and run.status not in WorkflowRun.FINISHED,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def batch_view(self, request):
        if not request.user.has_perm("notifications.launch_batch"):
            raise PermissionDenied
        form = BatchForm(request.POST or None, request.FILES or None)
        preview = None
        staged: list[str] = []
        if request.method == "POST" and "_launch" in request.POST and confirmed(request):
            # A confirmation posted again (the browser's back button, a double click, days
            # later) names a batch already launched: say so before anything else (its files
            # were dropped at launch, and "choose it again" would launch it twice).
            used = batch.launched_with(request.POST.get("launch_token", ""))
            if used is not None:
                return self._launched_already(request, used)
            twin = _launched_twin(form)
            if twin is not None:
                change = reverse("admin:notifications_workflowrun_change", args=[twin.id])
                self.message_user(
                    request,
                    format_html(
                        'This batch was already launched: <a href="{}">run {}</a>, {}, has the '
                        "same filter, subject and body. It was not launched again.",
                        change,
                        twin.id,
                        batch.status_words(twin),
                    ),
                    messages.WARNING,
                )
                return HttpResponseRedirect(change)
        if request.method == "POST":
            # Browsers do not post a chosen file again (after a preview, an error, or on the
            # confirmation page): what was chosen is kept on the server and carried by name.
            posted = request.POST.getlist("staged_attachment")
            staged = [name for name in dict.fromkeys(posted) if is_staged(name)]
            if len(staged) < len(set(posted)):
                form.is_valid()
                form.add_error(
                    "attachments",
                    "A file chosen earlier is no longer kept (files wait 24 hours): choose it "
                    "again.",
                )
            elif not confirmed(request):
                form.is_valid()  # the chosen files are kept even when another field is wrong
                names = {name.rsplit("/", 1)[-1] for name in staged}
                chosen = [
                    f
                    for f in form.cleaned_data.get("attachments") or []
                    if get_valid_filename(f.name) not in names
                ]
                staged += stage_attachments(chosen)  # a file chosen again is not added twice
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            now = timezone.now()
            try:
                preview = batch.build_preview(
                    cohort_filter=data["customer_cohort_filter"],
                    subject=data["subject"],
                    body_template=data["body_template"],
                    max_recipients=data["max_recipients"],
                    now=now,
                    user=request.user,
                )
                if "_launch" in request.POST and not confirmed(request):
                    # What the launch would refuse is said now, on the form.
                    if preview.blocks:
                        raise batch.BatchBlocked(preview.blocks)
                    if preview.warnings and not data["confirm_recent"]:
                        raise batch.NeedsConfirmation(preview.warnings)
                    return self._launch_confirmation(request, data, preview, staged)
                if "_launch" in request.POST:
                    run = batch.batch_launch(
                        user=request.user,
                        cohort_filter=data["customer_cohort_filter"],
                        subject=data["subject"],
                        body_template=data["body_template"],
                        max_recipients=data["max_recipients"],
                        attachments=[*data["attachments"], *staged_attachments(staged)],
                        confirm_recent=data["confirm_recent"],
                        launch_token=request.POST.get("launch_token", ""),
                        now=now,
                    )
                    drop_staged(staged)
                    self.message_user(
                        request,
                        f"Run {run.id} staged for {len(run.inputs['customer_ids'])} recipients. "
                        "Approve its HITL gate to personalize and review.",
                    )
                    return HttpResponseRedirect(
                        reverse("admin:notifications_workflowrun_change", args=[run.id])
                    )
            except ValidationError as error:
                _form_errors(form, error)
                preview = None
            except batch.AlreadyLaunched as already:  # the same confirmation, at the same time
                return self._launched_already(request, already.run)
            except (batch.BatchBlocked, batch.NeedsConfirmation) as stop:
                for message in stop.messages:
                    self.message_user(request, message, messages.ERROR)
                if isinstance(stop, batch.NeedsConfirmation):
                    # What to do about it, on the field that does it.
                    form.add_error(
                        "confirm_recent",
                        "Tick this to send anyway, then launch again (or tighten the filter).",
                    )
        context = {
            **self.admin_site.each_context(request),
            "title": "New batch customer notification",
            "form": form,
            "preview": preview,
            "staged": [(name, name.rsplit("/", 1)[-1]) for name in staged],
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/notifications/workflowrun/batch_form.html", context)

    def _launched_already(self, request, run: WorkflowRun):
        change = reverse("admin:notifications_workflowrun_change", args=[run.id])
        self.message_user(
            request,
            format_html(
                'This confirmation was used already: it launched <a href="{}">run {}</a>, '
                "{}. It was not launched again; to send the batch again, start a new one "
                "(its preview shows what was sent since).",
                change,
                run.id,
                batch.status_words(run),
            ),
            messages.WARNING,
        )
        return HttpResponseRedirect(change)

    def _launch_confirmation(self, request, data, preview, attachments: list[str]):
        count = len(preview.recipients)
        hidden = [
            ("customer_cohort_filter", data["customer_cohort_filter"]),
            ("subject", data["subject"]),
            ("body_template", data["body_template"]),
            ("max_recipients", "" if data["max_recipients"] is None else data["max_recipients"]),
            ("_launch", "1"),
            # One launch per confirmation page, whenever it is posted.
            ("launch_token", uuid.uuid4().hex),
            *((("confirm_recent", "on"),) if data["confirm_recent"] else ()),
            *(("staged_attachment", name) for name in attachments),
        ]
        details = [
            ("cohort filter", data["customer_cohort_filter"]),
            ("recipients", f"{count} (cap {preview.cap})"),
            ("left out (suppressed)", len(preview.suppressed)),
            ("left out (not an email address)", len(preview.invalid)),
            ("subject", data["subject"]),
            ("attachments", ", ".join(n.rsplit("/", 1)[-1] for n in attachments) or "none"),
        ]
        for customer, rendered in preview.samples[:1]:
            details.append((f"e.g. {customer.company_name} gets", rendered.subject))
        if preview.warnings:
            details.append(("confirmed warning", "; ".join(preview.warnings)))
        return confirm_form(
            self,
            request,
            title=f"Launch a batch notification to {count} customer(s)",
            summary=(
                f"Launching stages a batch run for {count} recipient(s) and its HITL gate. "
                "Nothing is sent yet: each recipient's message is sent only once the gate "
                "and that recipient's review are approved."
            ),
            details=details,
            items=[f"{c.company_name} <{c.email}>" for c in preview.recipients],
            hidden=hidden,
            confirm_label=f"Yes, launch for {count} recipient(s)",
        )

    def resume_view(self, request, run_id):
        """GET: what a resume would send, and a button posting to the seed's
        POST /admin/batch/resume?run_id=<id>."""
        if not request.user.has_perm("notifications.resume_batch"):
            raise PermissionDenied
        run = get_object_or_404(WorkflowRun, pk=run_id)
        change = reverse("admin:notifications_workflowrun_change", args=[run.id])
        if run.status != WorkflowRun.Status.ABORTED:
            self.message_user(
                request, f"Run {run.id} is {batch.status_words(run)}: nothing to resume."
            )
            return HttpResponseRedirect(change)
        counts = Delivery.objects.filter(workflow_run=run).aggregate(
            unsent=Count("id", filter=Q(status=Delivery.Status.SCHEDULED)),
            sent=Count("id", filter=Q(status__in=batch.SENT_STATUSES)),
            failed=Count("id", filter=Q(status__in=["failed", "bounced", "unknown"])),
        )
        switch = switch_for(Delivery(channel="email", workflow_run=run), active_switches())
        frozen = (
            f" But kill switch {switch.name} is on: they stay frozen until it is turned off."
            if switch is not None
            else ""
        )
        held = _breaker_note([run.id], now=timezone.now())
        return confirm_form(
            self,
            request,
            title=f"Resume run {run.id}",
            summary=(
                f"Resuming run {run.id} sends its {counts['unsent']} unsent deliveries; the "
                f"{counts['sent']} recipient(s) already sent are never sent again.{frozen}" + held
            ),
            details=[
                ("aborted because", run.status_reason or "—"),
                (
                    "unsent deliveries (will go once the provider breaker lets them)"
                    if held
                    else "unsent deliveries (will go)",
                    counts["unsent"],
                ),
                ("already sent (will not go again)", counts["sent"]),
                ("failed (stay failed; retry them from the delivery list)", counts["failed"]),
            ],
            form_action=f"{reverse('batch_resume')}?run_id={run.id}",
            confirm_label=(
                f"Yes, resume ({counts['unsent']} deliveries wait for the provider breaker)"
                if held
                else f"Yes, resume and send {counts['unsent']} deliveries"
            ),
            cancel_url=change,
        )

    def cancel_view(self, request, run_id):
        if not request.user.has_perm("notifications.resume_batch"):
            raise PermissionDenied
        run = get_object_or_404(WorkflowRun, pk=run_id)
        change = reverse("admin:notifications_workflowrun_change", args=[run.id])
        if request.method != "POST" or not confirmed(request):
            if run.status in WorkflowRun.FINISHED:
                return HttpResponseRedirect(change)
            counts = Delivery.objects.filter(workflow_run=run).aggregate(
                unsent=Count("id", filter=Q(status=Delivery.Status.SCHEDULED)),
            )
            return confirm_form(
                self,
                request,
                title=f"Cancel run {run.id}",
                summary=(
                    f"Cancelling run {run.id} stops it for good: {counts['unsent']} scheduled "
                    f"deliveries are cancelled and {_pending_rejected(run.proposed_actions)}. "
                    "What was already sent stays sent."
                ),
                confirm_label=f"Yes, cancel run {run.id}",
                cancel_url=change,
                danger=True,
            )
        finished = run.status in WorkflowRun.FINISHED
        try:
            count = batch.run_cancel(run=run, user=request.user, now=timezone.now())
        except PermissionDenied as denied:
            self.message_user(request, str(denied), messages.ERROR)
        else:
            if finished:
                self.message_user(
                    request,
                    f"Run {run.id} was already {run.get_status_display().lower()}: nothing to "
                    "cancel.",
                    messages.WARNING,
                )
            else:
                self.message_user(
                    request, f"Run {run.id} cancelled: {count} scheduled deliveries will not go."
                )
        return HttpResponseRedirect(
            reverse("admin:notifications_workflowrun_change", args=[run.id])
        )

    @admin.action(description="Resume selected aborted batches")
    def resume_runs(self, request, queryset):
        if _refused(self, request, batch.require_resumer):
            return None
        batches = queryset.filter(workflow__type=Workflow.Type.BATCH_NOTIFY)
        runs = list(batches.filter(status=WorkflowRun.Status.ABORTED).select_related("workflow"))
        left = _left_alone(queryset, runs, "only an aborted batch can be resumed")
        if not runs:
            self.message_user(request, f"Nothing to resume: {left}", messages.WARNING)
            return None
        if not confirmed(request):
            return confirm_page(
                self,
                request,
                queryset.filter(id__in=[r.id for r in runs]),
                action="resume_runs",
                title=f"Resume {len(runs)} aborted batch(es)",
                summary=f"Resuming sends the {_unsent(runs)} unsent deliveries of {len(runs)} "
                "run(s); recipients already sent are never sent again."
                + _frozen_by_switches(runs)
                + _breaker_note([r.id for r in runs], now=timezone.now())
                + (f" Left alone: {left}" if left else ""),
                items=[f"run {r.id}: {r.status_reason}" for r in runs],
                confirm_label="Yes, resume",
            )
        now = timezone.now()
        try:
            done = sum(batch.run_resume(run=r, user=request.user, now=now) for r in runs)
        except PermissionDenied as denied:
            self.message_user(request, str(denied), messages.ERROR)
            return None
        held = _breaker_note([r.id for r in runs], now=now) if done else ""
        self.message_user(
            request,
            f"{done} run(s) resumed." + held + (f" Left alone: {left}" if left else ""),
            messages.WARNING if held else messages.INFO,
        )
        return None

    @admin.action(description="Cancel selected batches")
    def cancel_runs(self, request, queryset):
        if _refused(self, request, batch.require_resumer):
            return None
        batches = queryset.filter(workflow__type=Workflow.Type.BATCH_NOTIFY)
        runs = list(batches.exclude(status__in=WorkflowRun.FINISHED))
        left = _left_alone(queryset, runs, "only an unfinished batch can be cancelled")
        if not runs:
            self.message_user(request, f"Nothing to cancel: {left}", messages.WARNING)
            return None
        if not confirmed(request):
            return confirm_page(
                self,
                request,
                queryset.filter(id__in=[r.id for r in runs]),
                action="cancel_runs",
                title=f"Cancel {len(runs)} batch(es)",
                summary=f"Cancelling stops {len(runs)} run(s) for good: their "
                f"{_unsent(runs)} scheduled deliveries are cancelled and "
                + _pending_rejected(ProposedAction.objects.filter(workflow_run__in=runs))
                + "."
                + (f" Left alone: {left}" if left else ""),
                items=[str(r) for r in runs],
                confirm_label="Yes, cancel",
            )
        rejected = _pending_rejected(ProposedAction.objects.filter(workflow_run__in=runs))
        try:
            count = sum(
                batch.run_cancel(run=r, user=request.user, now=timezone.now()) for r in runs
            )
        except PermissionDenied as denied:
            self.message_user(request, str(denied), messages.ERROR)
            return None
        self.message_user(
            request,
            f"{len(runs)} run(s) cancelled; {count} deliveries will not go; {rejected}."
            + (f" Left alone: {left}" if left else ""),
        )
        return None


@require_POST
@staff_member_required
def batch_resume(request):
    """POST /admin/batch/resume?run_id=<id>: continue an aborted batch (seed 001)."""
    given = [*request.GET.getlist("run_id"), *request.POST.getlist("run_id")]
    if len(given) > 1:
        return JsonResponse(
            {"error": f"run_id is given {len(given)} times: give exactly one run number"},
            status=400,
        )
    run_id = given[0] if given else ""
    if not (run_id.isascii() and run_id.isdigit()):
        return JsonResponse({"error": "run_id must be a run number"}, status=400)
    run = WorkflowRun.objects.filter(id=int(run_id)).first()
    if run is None:
        return JsonResponse({"error": f"no run {run_id}"}, status=404)
    now = timezone.now()
    try:
        resumed = batch.run_resume(run=run, user=request.user, now=now)
    except PermissionDenied as denied:
        return JsonResponse({"error": str(denied)}, status=403)
    run.refresh_from_db()
    result = {"run_id": run.id, "resumed": resumed, "status": run.status}
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse(result, status=200 if resumed else 409)
    if not resumed:
        messages.warning(
            request,
            f"Run {run.id} is {batch.status_words(run)}: nothing to resume.",
        )
    elif held := _breaker_note([run.id], now=now) + _frozen_by_switches([run]):
        messages.warning(request, f"Run {run.id} resumed.{held}")
    else:
        messages.success(request, f"Run {run.id} resumed: its unsent deliveries go out now.")
    return HttpResponseRedirect(reverse("admin:notifications_workflowrun_change", args=[run.id]))


def _refused(modeladmin, request, require) -> bool:
    """Checked before any confirmation page: staff without the permission are told at once
    (by the service's own rule and words) instead of after confirming."""
    try:
        require(request.user)
    except PermissionDenied as denied:
        modeladmin.message_user(request, str(denied), messages.ERROR)
        return True
    return False


def _breakers_holding(run_ids, *, now: datetime) -> str:
    """The provider breakers, not closed, of the channels these runs' unsent deliveries go
    by, each with until when it holds them ("" if none): dispatch sends nothing through an
    open breaker, resumed or not (notifications.breakers.gate)."""
    channels = (
        Delivery.objects.filter(workflow_run__in=run_ids, status=Delivery.Status.SCHEDULED)
        .order_by()
        .values_list("channel", flat=True)
        .distinct()
    )
    keys = sorted(breakers.breaker_key(channel, provider_of(channel)) for channel in channels)
    held = []
    for breaker in ProviderBreaker.objects.filter(provider__in=keys).exclude(
        state=ProviderBreaker.State.CLOSED
    ):
        if breaker.state == ProviderBreaker.State.HALF_OPEN:
            held.append(
                f"the provider breaker {breaker.provider} is half-open (one trial call is "
                "under way; the rest follow once it succeeds)"
            )
            continue
        trial = breakers.trial_at(breaker, now=now)
        if trial > now:
            held.append(
                f"the provider breaker {breaker.provider} is open until {_when(trial)} (then "
                "one trial call is made; the rest follow once it succeeds)"
            )
        else:
            held.append(
                f"the provider breaker {breaker.provider} is open; its cool-off ended at "
                f"{_when(trial)} (the next dispatch round makes one trial call; the rest "
                "follow once it succeeds)"
            )
    return "; ".join(held)


def _breaker_note(run_ids, *, now: datetime) -> str:
    held = _breakers_holding(run_ids, now=now)
    return f" But {held}: the unsent deliveries go when it lets them, not at once." if held else ""


def _when(moment: datetime) -> str:
    local = timezone.localtime(moment)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"


def _left_alone(queryset, chosen, why: str) -> str:
    """The selected runs an action leaves alone, each with its status, and why ("" if
    none)."""
    others = queryset.exclude(id__in=[r.id for r in chosen]).order_by("id")
    count = others.count()
    if not count:
        return ""
    listed = ", ".join(f"run {r.id} ({r.get_status_display().lower()})" for r in others[:10])
    more = f" and {count - 10} more" if count > 10 else ""
    return f"{listed}{more}: {why}."


def _frozen_by_switches(runs) -> str:
    """What a kill switch that is on does to the resumed runs' deliveries ("" if nothing)."""
    switches = active_switches()
    names = sorted(
        {
            switch.name
            for run in runs
            if (switch := switch_for(Delivery(channel="email", workflow_run=run), switches))
        }
    )
    if not names:
        return ""
    return (
        f" But kill switch(es) {', '.join(names)} are on: their deliveries stay frozen until "
        "turned off."
    )


def _pending_rejected(proposals) -> str:
    """What cancelling rejects among these proposed actions, the HITL gate (the envelope)
    called a gate, not a review: "1 pending gate(s) and 3 pending review(s) rejected"."""
    counts = proposals.filter(status=ProposedAction.Status.PENDING).aggregate(
        gates=Count("id", filter=Q(action_type=ProposedAction.Type.BATCH_ENVELOPE)),
        reviews=Count("id", filter=~Q(action_type=ProposedAction.Type.BATCH_ENVELOPE)),
    )
    parts = []
    if counts["gates"]:
        parts.append(f"{counts['gates']} pending gate(s)")
    if counts["reviews"] or not counts["gates"]:
        parts.append(f"{counts['reviews']} pending review(s)")
    return " and ".join(parts) + " rejected"


def _unsent(runs) -> int:
    return Delivery.objects.filter(
        workflow_run__in=[r.id for r in runs], status=Delivery.Status.SCHEDULED
    ).count()


def _share(part: int, total: int) -> int:
    return round(100 * part / total) if total else 0


class DecisionFilter(admin.SimpleListFilter):
    title = "needs a decision"
    parameter_name = "waiting"

    def lookups(self, request, model_admin):
        return [("yes", "Waiting for a decision")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(status=ProposedAction.Status.PENDING)
        return queryset


class ReviewChangeList(ChangeList):
    """Marks each listed review with what is wrong with its address, for the whole page in
    one suppression query."""

    def get_results(self, request):
        super().get_results(request)
        problems = address_problems(self.result_list)  # evaluates (and caches) the page
        for proposal in self.result_list:
            proposal.address_problem = problems.get(proposal.pk, "")


def address_problems(proposals) -> dict[int, str]:
    """Why each pending review's message would not reach its customer's current email (the
    address approving stages it to), by proposal id; none for one that would, or that is
    decided (batch.screen_addresses, as a launch's preview screens them)."""
    # Only reviews still to decide: a decided one's message went (or did not) as it was.
    waiting = [
        p
        for p in proposals
        if p.customer_id is not None and p.status == ProposedAction.Status.PENDING
    ]
    emails = {p.pk: p.customer.email for p in waiting}
    inactive = {p.pk for p in waiting if p.customer.is_inactive}
    said = {
        "missing": "no email address: nothing can be sent; add one in Customers",
        "invalid": "not an email address: the send fails; correct it in Customers",
        "inactive": "customer marked inactive: skipped, not sent; reactivate them in Customers "
        "to send",
    }
    return {
        pk: said.get(kind) or f"suppressed ({reason}): skipped, not sent"
        for pk, (kind, reason) in batch.screen_addresses(emails, inactive=inactive).items()
    }


@admin.register(ProposedAction)
class ProposedActionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "action_type",
        "entity",
        "customer",
        "sends_to",
        "subject_line",
        "status",
        "decided_by",
        "decided_at",
    )
    list_filter = (
        DecisionFilter,
        "status",
        "action_type",
        "decided_by",
        ("workflow_run", WorkflowRunFilter),
    )
    search_fields = (
        "entity_ref",
        "customer__company_name",
        "customer__email",
        "customer__account_ref",
        "subject",
    )
    date_hierarchy = "created_at"
    list_select_related = ("customer",)
    readonly_fields = (
        "action_type",
        "entity_ref",
        "workflow_run",
        "customer",
        "sends_to",
        "subject",
        "body",
        "status",
        "decided_by",
        "decided_at",
        "created_at",
    )
    actions = ["approve_selected", "reject_selected"]
    change_form_template = "admin/notifications/proposedaction/change_form.html"

    def has_add_permission(self, request):
        return False

    def get_changelist(self, request, **kwargs):
        return ReviewChangeList

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """Read-only: no Save. A pending one is decided by Approve or Reject, which post this
        one id to the list's approve_selected / reject_selected (their confirmation page
        first)."""
        if request.method == "POST":  # a Save from a page served before this had none
            self.message_user(
                request,
                "Nothing on this page is edited: approve or reject it with its buttons.",
                messages.WARNING,
            )
            return HttpResponseRedirect(request.get_full_path())
        proposal = self.get_object(request, object_id)
        pending = proposal is not None and proposal.status == ProposedAction.Status.PENDING
        extra_context = {
            **(extra_context or {}),
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
            "decide": pending,
            "may_decide": request.user.has_perm("notifications.decide_proposedaction"),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    # The list at 1400 px: the entity ref (one unbreakable word, broken at its colons here)
    # and long subjects pushed the status, decided by and decided at off the screen.
    @admin.display(description="entity", ordering="entity_ref")
    def entity(self, obj):
        return format_html(
            '<span title="{}">{}</span>',
            obj.entity_ref,
            obj.entity_ref.replace(":", ": "),
        )

    @admin.display(description="subject", ordering="subject")
    def subject_line(self, obj):
        if len(obj.subject) <= 60:
            return obj.subject
        return format_html('<span title="{}">{}…</span>', obj.subject, obj.subject[:59])

    @admin.display(description="sends to (current email)", ordering="customer__email")
    def sends_to(self, obj):
        if obj.customer_id is None:
            return "—"
        problem = getattr(obj, "address_problem", None)
        if problem is None:  # the change page: one review
            problem = address_problems([obj]).get(obj.pk, "")
        if not problem:
            return obj.customer.email
        return format_html(
            '{} <strong class="herald-address-problem" style="color:#b91c1c">⚠ {}</strong>',
            obj.customer.email or "—",
            problem,
        )

    def has_delete_permission(self, request, obj=None):
        # A decision is a record, and a deleted pending gate left its run awaiting approval
        # with nothing to approve: reject instead.
        return False

    def _decide(self, request, queryset, *, approve: bool):
        if _refused(self, request, batch.require_decider):
            return None
        verb = "approve" if approve else "reject"
        pending = queryset.filter(status=ProposedAction.Status.PENDING)
        counts = pending.aggregate(
            envelopes=Count("id", filter=Q(action_type=ProposedAction.Type.BATCH_ENVELOPE)),
            reviews=Count("id", filter=Q(action_type=ProposedAction.Type.HITL_REVIEW)),
        )
        if not confirmed(request):
            what = []
            suppressed, invalid = (
                batch.unreachable_reviews(pending) if approve and counts["reviews"] else (0, 0)
            )
            if counts["reviews"] - suppressed - invalid:
                what.append(
                    f"{counts['reviews'] - suppressed - invalid} recipient(s) "
                    + (
                        "will each get the message shown"
                        if approve
                        else "will not be sent anything"
                    )
                )
            if suppressed:
                what.append(
                    f"{suppressed} recipient(s) are suppressed or inactive now (unsubscribed, "
                    "bounced or complained, suppressed by hand, or marked inactive, since the "
                    "launch): approved, they are skipped, not sent"
                )
            if invalid:
                what.append(
                    f"{invalid} recipient(s) have no valid email address now (changed since the "
                    "launch): approved, their send fails and counts towards the batch's breaker; "
                    "correct them in Customers first"
                )
            if counts["envelopes"]:
                what.append(
                    f"{counts['envelopes']} batch gate(s) "
                    + (
                        "open: each recipient's message is staged for review"
                        if approve
                        else "close: the run is cancelled"
                    )
                )
            if approve:
                what.extend(_held_by_kill_switches(pending))
            already = queryset.count() - pending.count()
            if already:
                what.append(f"{already} already decided and left as they are")
            return confirm_page(
                self,
                request,
                queryset,
                action=f"{verb}_selected",
                title=f"{verb.capitalize()} {pending.count()} proposed action(s)",
                summary=f"{verb.capitalize()}: " + "; ".join(what) + ".",
                items=[f"{p.customer or p.entity_ref}: {p.subject}" for p in pending[:50]],
                confirm_label=f"Yes, {verb} {pending.count()}",
            )
        now = timezone.now()
        try:
            staged = gates_rejected = 0
            # Each gate read once: decided already (a second click, or someone else), or
            # decided here unless someone else does it meanwhile. Those not decided here are
            # named with their decision and who made it.
            gates_taken = []
            for envelope in queryset.filter(action_type=ProposedAction.Type.BATCH_ENVELOPE):
                if envelope.status == ProposedAction.Status.PENDING:
                    if approve:
                        staged += batch.envelope_approve(
                            envelope=envelope, user=request.user, now=now
                        )
                    elif batch.envelope_reject(envelope=envelope, user=request.user, now=now):
                        gates_rejected += 1
                    envelope.refresh_from_db()
                    if envelope.decided_at == now:
                        continue
                gates_taken.append(envelope)
            reviews = queryset.filter(action_type=ProposedAction.Type.HITL_REVIEW)
            decided = batch.reviews_decide(
                ids=reviews.values_list("id", flat=True),
                approve=approve,
                user=request.user,
                now=now,
            )
        except PermissionDenied as denied:
            self.message_user(request, str(denied), messages.ERROR)
            return None
        parts = []
        if decided.decided or decided.already_decided or not (staged or gates_rejected):
            if decided.decided or decided.already_decided or not gates_taken:
                parts.append(
                    f"{decided.decided} recipient(s) {'approved' if approve else 'rejected'}"
                )
                if approve:
                    parts.append(f"{decided.deliveries} deliveries staged")
            if decided.skipped_inactive:
                parts.append(f"{decided.skipped_inactive} skipped: customer marked inactive")
        for gate in gates_taken:
            parts.append(
                f"the batch gate of run {gate.workflow_run_id} was already {gate.status} by "
                f"{gate.decided_by or 'someone'} (no-op)"
            )
        if gates_rejected:
            parts.append(f"{gates_rejected} batch gate(s) rejected: their runs are cancelled")
        if staged:
            parts.append(f"{staged} review(s) staged from the batch gate")
        if decided.already_decided:
            parts.append(f"{decided.already_decided} already decided (no-op)")
        message = "; ".join(parts) + "."
        if staged:  # the list still shows the gate: say where the new reviews are
            runs = sorted(
                set(
                    queryset.filter(action_type=ProposedAction.Type.BATCH_ENVELOPE).values_list(
                        "workflow_run_id", flat=True
                    )
                )
            )
            reviews = reverse("admin:notifications_proposedaction_changelist")
            links = format_html_join(
                ", ",
                '<a href="{}?workflow_run__id__exact={}&amp;action_type__exact={}">run {}</a>',
                ((reviews, run, ProposedAction.Type.HITL_REVIEW, run) for run in runs),
            )
            message = format_html("{} Review them: {}.", message, links)
        self.message_user(request, message)
        return None

    @admin.action(description="Approve selected (whole cohort: select all)")
    def approve_selected(self, request, queryset):
        return self._decide(request, queryset, approve=True)

    @admin.action(description="Reject selected")
    def reject_selected(self, request, queryset):
        return self._decide(request, queryset, approve=False)


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = (
        "company_name",
        "email",
        "account_ref",
        "bid",
        "region",
        "school_year",
        "is_inactive",
    )
    list_filter = ("is_inactive", "bid", "region", "school_year")
    search_fields = ("company_name", "email", "phone", "account_ref", "bid", "region", "tags")
    list_per_page = 50

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and obj.is_inactive and "is_inactive" in form.changed_data:
            cancelled = batch.customer_deactivated(
                customer_id=obj.id, by=request.user.get_username(), now=timezone.now()
            )
            if cancelled:
                self.message_user(
                    request,
                    f"{cancelled} scheduled batch delivery(ies) to {obj} were cancelled: the "
                    "customer is marked inactive.",
                    messages.WARNING,
                )
        if not change or "email" not in form.changed_data:
            return
        old = form.initial.get("email") or ""
        done = batch.customer_email_changed(
            customer_id=obj.id,
            old=old,
            new=obj.email,
            by=request.user.get_username(),
            now=timezone.now(),
        )
        if done.readdressed:
            self.message_user(
                request,
                f"{done.readdressed} batch email(s) to {obj} not yet sent now go to "
                f"{obj.email} instead of {old}: scheduled ones when they are due, failed ones "
                "once retried (Deliveries → Retry selected failed deliveries).",
            )
        if done.kept_opted_out:
            self.message_user(
                request,
                f"{done.kept_opted_out} batch email(s) to {obj} stay addressed to {old}: that "
                "address unsubscribed (or complained), so what they opted out of is not moved "
                f"to {obj.email}; they are skipped at send.",
                messages.WARNING,
            )
        if done.still_failed:
            self.message_user(
                request,
                f"{done.still_failed} failed batch email(s) to {old} stay failed: {obj} has "
                "no email to retry them to.",
                messages.WARNING,
            )
        if done.cancelled:
            self.message_user(
                request,
                f"{done.cancelled} scheduled batch delivery(ies) to {old} were cancelled: "
                f"{obj} has no email now.",
                messages.WARNING,
            )
        if done.in_flight:
            self.message_user(
                request,
                f"{done.in_flight} delivery(ies) to {old} were already being sent (or their "
                "outcome is unknown) and keep that address"
                + (f"; should one fail, a retry sends it to {obj.email}." if obj.email else "."),
                messages.WARNING,
            )


@admin.register(AuditEntry)
class AuditEntryAdmin(KeptRecordAdmin):
    list_display = ("at", "by", "action", "target", "detail_summary")
    list_filter = ("action",)
    search_fields = ("by", "target")
    date_hierarchy = "at"
    readonly_fields = ("at", "by", "action", "target", "detail")

    @admin.display(description="detail")
    def detail_summary(self, obj):
        """The detail, its long lists cut to their first few (a retry of 10,000 deliveries
        names them all: the entry's page shows them)."""
        shown = {
            key: (f"{value[:5]} … ({len(value):,} in all)" if len(value) > 5 else value)
            if isinstance(value, list)
            else value
            for key, value in (obj.detail or {}).items()
        }
        return str(shown)[:300]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ReflexionEntry)
class ReflexionEntryAdmin(KeptRecordAdmin):
    list_display = ("created_at", "workflow_run", "narrative", "tags")
    search_fields = ("narrative", "tags")
    list_filter = ("workflow_run__workflow",)
    date_hierarchy = "created_at"
    readonly_fields = ("workflow_run", "narrative", "tags", "created_at")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # the reflexion log is a record


@admin.register(VerifyCheck)
class VerifyCheckAdmin(KeptRecordAdmin):
    list_display = (
        "workflow_run",
        "name",
        "status",
        "due_at",
        "checked_at",
        "expected",
        "observed",
        "detail",
    )
    list_filter = ("status", "name")
    search_fields = ("name", "detail", "=workflow_run__id")
    date_hierarchy = "due_at"
    list_select_related = ("workflow_run__workflow",)
    readonly_fields = [f.name for f in VerifyCheck._meta.fields if f.name != "id"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # results of the verify cron, not edited


def _held_by_kill_switches(pending) -> list[str]:
    """What a kill switch that is on would do to the deliveries these approvals stage."""
    switches = active_switches()
    if not switches:
        return []
    notes = []
    runs = WorkflowRun.objects.filter(
        id__in=pending.values_list("workflow_run_id", flat=True)
    ).select_related("workflow")
    for run in runs:
        switch = switch_for(Delivery(channel="email", workflow_run=run), switches)
        if switch is not None:
            notes.append(
                f"kill switch {switch.name} is on: run {run.id}'s deliveries will be staged "
                "but wait, frozen, until it is turned off"
            )
    return notes
