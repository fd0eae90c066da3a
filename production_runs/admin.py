"""Admin for production runs and their reminders. Actions and views are thin: they call
runs.py, discoverer.py, whatsapp_templates.py and activation.py and report what happened."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import NON_FIELD_ERRORS, ImproperlyConfigured, PermissionDenied
from django.db import models
from django.db.models import Case, Count, Q, Value, When
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django_celery_beat.admin import PeriodicTaskAdmin, PeriodicTaskForm
from django_celery_beat.models import PeriodicTask

from notifications.admin_confirm import confirm_form, confirm_page, confirmed
from production_runs import activation
from production_runs.discoverer import (
    KINDS,
    Thresholds,
    bucket_filter,
    discover_reminders,
    partner_change_url,
    with_idle_since,
)
from production_runs.dispatcher import mapping_problem, restore_default_mappings
from production_runs.models import (
    ACTIVE_STATUSES,
    Design,
    EventTemplateMapping,
    Partner,
    ProductionRun,
    ProgressUpdate,
    ReminderKind,
    ReminderSettings,
    RunStatus,
    ScheduleChange,
    TemplateStatus,
    TemplateVariantStatus,
    WhatsAppPlatform,
)
from production_runs.runs import RunStepRefused, run_record_progress, run_remind_now, run_step
from production_runs.whatsapp_templates import (
    SPECS,
    WAITING_FOR_APPROVAL,
    languages_for_platform,
    languages_without_variants,
    plan,
    selected_specs,
    sync,
)

OK_COLOUR, BAD_COLOUR, WAIT_COLOUR = "#059669", "#dc2626", "#d97706"


def pill(colour: str, text: str):
    return format_html(
        '<span style="background:{};color:#fff;padding:1px 7px;border-radius:9px;'
        'font-size:11px;white-space:nowrap">{}</span>',
        colour,
        text,
    )


# --- partners, designs --------------------------------------------------------------------


@admin.register(Partner)
class PartnerAdmin(admin.ModelAdmin):
    list_display = ("name", "whatsapp_number", "language", "platform", "active_runs")
    list_filter = ("language", "platform")
    search_fields = ("name", "whatsapp_number")
    readonly_fields = ("created_at",)
    list_select_related = ("platform",)

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(active=Count("runs", filter=Q(runs__status__in=ACTIVE_STATUSES)))
        )

    @admin.display(description="active runs", ordering="active")
    def active_runs(self, obj):
        return obj.active


@admin.register(Design)
class DesignAdmin(admin.ModelAdmin):
    list_display = ("name", "thumbnail")
    search_fields = ("name",)
    # WhatsApp fetches the image over HTTPS: a link typed without a scheme means https.
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    @admin.display(description="image")
    def thumbnail(self, obj):
        if not obj.image_url:
            return "—"
        return format_html('<img src="{}" alt="" style="height:40px">', obj.image_url)


# --- runs ---------------------------------------------------------------------------------


class BucketFilter(admin.SimpleListFilter):
    title = "reminder bucket (now)"
    parameter_name = "bucket"

    def lookups(self, request, model_admin):
        return [*ReminderKind.choices, ("none", "Not overdue")]

    def queryset(self, request, queryset):
        if self.value() not in (*KINDS, "none"):
            return queryset  # no filter, or a value no link offers (?bucket=bogus): ignored
        thresholds = Thresholds.of(ReminderSettings.load())
        now = timezone.now()
        queryset = with_idle_since(queryset)
        if self.value() == "none":
            overdue = Q()
            for kind in KINDS:
                overdue |= bucket_filter(kind, now=now, thresholds=thresholds)
            return queryset.filter(status__in=ACTIVE_STATUSES).exclude(overdue)
        # As the discoverer counts them: a run without a partner is never reminded.
        return queryset.filter(
            bucket_filter(self.value(), now=now, thresholds=thresholds), partner__isnull=False
        )


class FlaggedFilter(admin.SimpleListFilter):
    title = "flagged for ops"
    parameter_name = "flagged"

    def lookups(self, request, model_admin):
        return [
            ("yes", "Flagged: still stalled on the flag day of its reminders"),
            ("no", "Not flagged"),
        ]

    def queryset(self, request, queryset):
        flagged = Q(reminder__flagged_at__isnull=False, status__in=ACTIVE_STATUSES)
        if self.value() == "yes":
            return queryset.filter(flagged)
        if self.value() == "no":
            return queryset.exclude(flagged)
        return queryset


class ProgressUpdateInline(admin.TabularInline):
    """Updates are records: new ones can be added (they move the run's produced quantity
    through runs.run_record_progress), old ones are not edited."""

    model = ProgressUpdate
    extra = 0
    fields = ("produced_quantity", "at")
    can_delete = False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ProductionRun)
class ProductionRunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "partner",
        "design",
        "status",
        "bucket",
        "progress",
        "reminders_sent",
        "flagged",
        "created_at",
    )
    list_filter = ("status", BucketFilter, FlaggedFilter, "partner__platform")
    search_fields = ("=id", "reference", "partner__name", "design__name")
    date_hierarchy = "created_at"
    list_select_related = ("partner", "design", "reminder")
    autocomplete_fields = ("partner", "design")
    inlines = [ProgressUpdateInline]
    readonly_fields = (
        "produced_quantity",
        "created_at",
        "accepted_at",
        "started_at",
        "finished_at",
        "updated_at",
        "reminder_summary",
    )
    fields = (
        "reference",
        "partner",
        "design",
        "status",
        "quantity",
        *readonly_fields,
    )
    actions = ["send", "accept", "start", "complete", "cancel", "remind_now"]

    def get_readonly_fields(self, request, obj=None):
        # The status moves through the actions (which emit the lifecycle events), also for a
        # new run: added as "sent to partner", its partner was never told of it (no
        # sent_to_partner event), yet reminded the next day.
        fields = (*self.readonly_fields, "status")
        if obj is not None and obj.status != RunStatus.DRAFT:
            # Sent: its partner was told of it. Another partner would be reminded of a run
            # nobody assigned them; cancel it and send a new one to them instead.
            fields = (*fields, "partner")
        return fields

    def get_queryset(self, request):
        # The bucket as of this request, computed by the database with the discoverer's
        # own filters (no per-row work, nothing kept on this shared admin object).
        thresholds = Thresholds.of(ReminderSettings.load())
        now = timezone.now()
        buckets = [
            When(
                bucket_filter(kind, now=now, thresholds=thresholds) & Q(partner__isnull=False),
                then=Value(kind),
            )
            for kind in KINDS
        ]
        return with_idle_since(super().get_queryset(request)).annotate(
            bucket_now=Case(*buckets, default=Value(""))
        )

    def save_formset(self, request, form, formset, change):
        if formset.model is not ProgressUpdate:
            return super().save_formset(request, form, formset, change)
        for update in formset.save(commit=False):
            run_record_progress(
                run=form.instance,
                produced_quantity=update.produced_quantity,
                now=update.at or timezone.now(),
            )
        return None

    @admin.display(description="bucket (now)", ordering="bucket_now")
    def bucket(self, obj):
        if not getattr(obj, "bucket_now", ""):
            return "—"
        return pill(WAIT_COLOUR, ReminderKind(obj.bucket_now).label)

    @admin.display(description="progress", ordering="produced_quantity")
    def progress(self, obj):
        return f"{obj.produced_quantity} / {obj.quantity}"

    def _state(self, obj):
        try:
            return obj.reminder
        except ProductionRun.reminder.RelatedObjectDoesNotExist:
            return None

    def _no_number(self, obj, *, short=False):
        """A warning that the run cannot be reminded, with a link to add the number, for an
        active run whose partner has no WhatsApp number (the discoverer does not remind
        it); "" for any other run."""
        partner = obj.partner
        if partner is None or partner.whatsapp_number or obj.status not in ACTIVE_STATUSES:
            return ""
        if short:  # the list's column
            return format_html(
                '<span title="cannot be reminded: partner has no WhatsApp number">{}</span> '
                '<a href="{}">add it</a>',
                pill(BAD_COLOUR, "no WhatsApp number"),
                partner_change_url(partner.pk),
            )
        return format_html(
            '{} <a href="{}">add the WhatsApp number of {}</a>',
            pill(BAD_COLOUR, "cannot be reminded: partner has no WhatsApp number"),
            partner_change_url(partner.pk),
            partner.name,
        )

    @admin.display(description="reminders", ordering="reminder__reminder_count")
    def reminders_sent(self, obj):
        state = self._state(obj)
        count = state.reminder_count if state else 0
        if warning := self._no_number(obj, short=True):
            return format_html("{}<br>{}", count, warning)
        return count

    @admin.display(description="flagged", ordering="reminder__flagged_at")
    def flagged(self, obj):
        state = self._state(obj)
        if state is None or state.flagged_at is None or obj.status not in ACTIVE_STATUSES:
            return ""
        return pill(BAD_COLOUR, "call partner")

    @admin.display(description="reminders")
    def reminder_summary(self, obj):
        state = self._state(obj)
        warning = self._no_number(obj)
        if state is None:
            return format_html("no reminder sent; {}", warning) if warning else "no open stall"
        flagged = f"; flagged for ops {state.flagged_at:%Y-%m-%d}" if state.flagged_at else ""
        last = f"{state.last_reminded_at:%Y-%m-%d %H:%M}" if state.last_reminded_at else "never"
        summary = (
            f"{state.get_kind_display()} since {state.stalled_since:%Y-%m-%d %H:%M}; "
            f"{state.reminder_count} reminder(s), last {last}{flagged}"
        )
        return format_html("{}; {}", summary, warning) if warning else summary

    def _step(self, request, queryset, step: str, done: str):
        now = timezone.now()
        moved, refused = 0, []
        for run in queryset:
            try:
                moved += run_step(run=run, step=step, now=now)
            except RunStepRefused as error:
                refused.append(str(error))
        self.message_user(request, f"{moved} run(s) {done}.")
        skipped = queryset.count() - moved
        if skipped:
            detail = f" ({refused[0]})" if refused else ""
            self.message_user(
                request,
                f"{skipped} run(s) left as they were: not in a state to be {done}{detail}.",
                messages.WARNING,
            )

    @admin.action(
        description="Send to partner (emits production_run.sent_to_partner)", permissions=["change"]
    )
    def send(self, request, queryset):
        self._step(request, queryset, "send", "sent to their partner")

    @admin.action(description="Mark accepted", permissions=["change"])
    def accept(self, request, queryset):
        self._step(request, queryset, "accept", "accepted")

    @admin.action(description="Mark started", permissions=["change"])
    def start(self, request, queryset):
        self._step(request, queryset, "start", "started")

    @admin.action(
        description="Mark completed (emits production_run.completed)", permissions=["change"]
    )
    def complete(self, request, queryset):
        self._step(request, queryset, "complete", "completed")

    @admin.action(
        description="Cancel (emits production_run.cancelled unless it is a draft)",
        permissions=["change"],
    )
    def cancel(self, request, queryset):
        self._step(request, queryset, "cancel", "cancelled")

    @admin.action(description="Send a reminder now (WhatsApp)", permissions=["change"])
    def remind_now(self, request, queryset):
        if not confirmed(request):
            return confirm_page(
                self,
                request,
                queryset,
                action="remind_now",
                title=f"Send a reminder now for {queryset.count()} run(s)",
                summary=(
                    f"Each of the {queryset.count()} selected run(s) that is still stalled gets "
                    "today's reminder on WhatsApp, whatever the thresholds and escalation "
                    "say. One already sent within the dedup window is not sent again."
                ),
                items=[f"Run {r.pk} — {r.partner or 'no partner'}" for r in queryset],
                confirm_label="Yes, remind them now",
            )
        now = timezone.now()
        emitted, refused = [], []
        for run in queryset:
            try:
                if run_remind_now(run=run, now=now, by=request.user.get_username()):
                    emitted.append(str(run.pk))
            except RunStepRefused as error:
                refused.append(str(error))
        if emitted:
            self.message_user(
                request,
                f"{len(emitted)} reminder event(s) emitted (run {', '.join(emitted)}). The "
                "dispatcher sends each on WhatsApp in the partner's language unless one went "
                "out within the dedup window; one whose template is still in Meta's review "
                f"waits for its approval (Deliveries: scheduled, '{WAITING_FOR_APPROVAL}').",
            )
        if refused:
            self.message_user(request, f"Not reminded: {'; '.join(refused)}.", messages.WARNING)
        return None


# --- reminder settings, gate, dry run -----------------------------------------------------


@admin.register(ReminderSettings)
class ReminderSettingsAdmin(admin.ModelAdmin):
    fieldsets = (
        ("Thresholds", {"fields": ("assignment_pending_hours", "not_started_hours", "idle_hours")}),
        (
            "Escalation",
            {"fields": ("escalation_days", "escalation_repeat_days", "flag_after_days")},
        ),
        ("Sending", {"fields": ("digest_enabled", "dedup_window_minutes")}),
        ("Tools", {"fields": ("tools",)}),
    )
    readonly_fields = ("tools",)

    def has_add_permission(self, request):
        return not ReminderSettings.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        settings = ReminderSettings.load()
        return HttpResponseRedirect(
            reverse("admin:production_runs_remindersettings_change", args=[settings.pk])
        )

    @admin.display(description="")
    def tools(self, obj):
        return format_html(
            '<a class="button" href="{}">Activation gate and schedule</a> '
            '<a class="button" href="{}">Dry-run the discoverer</a>',
            reverse("admin:production_runs_reminder_gate"),
            reverse("admin:production_runs_reminder_dry_run"),
        )

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("gate/", wrap(self.gate_view), name="production_runs_reminder_gate"),
            path("dry-run/", wrap(self.dry_run_view), name="production_runs_reminder_dry_run"),
            *super().get_urls(),
        ]

    def _page(self, request, template, title, **context):
        return TemplateResponse(
            request,
            template,
            {**self.admin_site.each_context(request), "title": title, "opts": self.opts, **context},
        )

    def dry_run_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        summary = discover_reminders(now=timezone.now(), dry_run=True)
        runs = reverse("admin:production_runs_productionrun_changelist")
        # (key, label, count, link to the runs it counts: the same filters, checkable).
        rows = [
            (
                "total_inspected",
                "total inspected (active runs)",
                summary["total_inspected"],
                f"{runs}?status__in=sent_to_partner,in_progress",
            )
        ]
        rows += [
            (kind, ReminderKind(kind).label, summary["counts"][kind], f"{runs}?bucket={kind}")
            for kind in KINDS
        ]
        rows += [
            ("skipped_no_partner", "skipped: no partner", summary["skipped_no_partner"], ""),
            ("skipped_not_overdue", "skipped: not overdue", summary["skipped_not_overdue"], ""),
            ("skipped_not_due", "skipped: not due (escalation)", summary["skipped_not_due"], ""),
            (
                "skipped_no_whatsapp_number",
                "would not be reminded: partner has no WhatsApp number",
                summary["skipped_no_whatsapp_number"],
                "",
            ),
            ("already_emitted", "already reminded today", summary["already_emitted"], ""),
            ("dispatched", "would be reminded", summary["dispatched"], ""),
            ("events", "events that would be emitted", summary["events"], ""),
            ("flagged", "would be flagged for ops", summary["flagged"], ""),
        ]
        return self._page(
            request,
            "production_runs/admin/dry_run.html",
            "Reminder discoverer — dry run",
            summary=summary,
            rows=rows,
        )

    def gate_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        may_override = request.user.has_perm(activation.OVERRIDE_PERMISSION)
        if request.method == "POST":
            if not self.has_change_permission(request):
                raise PermissionDenied
            if not confirmed(request):
                page = self._gate_confirmation(request, may_override=may_override)
                if page is not None:
                    return page
            self._gate_post(request, may_override=may_override)
            return HttpResponseRedirect(request.path)
        task = activation.schedule()
        return self._page(
            request,
            "production_runs/admin/gate.html",
            "Reminder schedule — activation gate",
            gate=activation.activation_gate(),
            task=task,
            may_override=may_override,
            changes=ScheduleChange.objects.all()[:20],
        )

    def _gate_confirmation(self, request, *, may_override: bool):
        """The confirmation page of enable / override / disable: when the schedule runs and
        how many runs today's numbers would remind. None: nothing to confirm (the change
        is refused or does nothing; _gate_post says so)."""
        action = request.POST.get("action")
        task = activation.schedule()
        if task is None or action not in ("enable", "override", "disable"):
            return None
        gate = activation.activation_gate()
        if action == "disable" and not task.enabled:
            return None
        if action in ("enable", "override") and (
            task.enabled or not (gate.holds or (action == "override" and may_override))
        ):
            return None
        outlook = activation.reminder_outlook(now=timezone.now())
        cron = task.crontab
        when = (
            f"{cron.minute} {cron.hour} {cron.day_of_month} {cron.month_of_year} "
            f"{cron.day_of_week} in {cron.timezone}"
            if cron
            else str(task.interval or "its schedule")
        )
        buckets = ", ".join(
            f"{outlook.counts[kind]} {ReminderKind(kind).label.lower()}" for kind in KINDS
        )
        # Why a schedule with stalled runs would send nothing now: today's reminders are
        # out (a run is reminded once a day), or the runs wait for their escalation day.
        details = [
            ("schedule", f"{task.name} — crontab {when}"),
            ("stalled runs right now", f"{outlook.stalled} ({buckets})"),
            ("already reminded today", outlook.reminded_today),
            ("waiting for a later escalation day", outlook.waiting),
            ("cannot be reminded: partner has no WhatsApp number", outlook.no_whatsapp_number),
            ("due: would be reminded if it ran now", outlook.due),
            ("WhatsApp events if it ran now", outlook.events),
        ]
        failing = [f"{c.label}: {c.detail}" for c in gate.checks if not c.ok]
        if action == "disable":
            text = (
                "Disabling the reminder schedule stops every scheduled production-run reminder "
                f"until it is enabled again. {outlook.describe()}."
            )
            label = "Yes, disable the schedule"
        else:
            override = " although the activation gate does not hold" if not gate.holds else ""
            text = (
                f"Enabling the reminder schedule{override} runs the discoverer at {when}. "
                f"{outlook.describe()}: run now, it would send {outlook.events} WhatsApp "
                f"reminder event(s) for {outlook.due} run(s), and it keeps reminding stalled "
                "runs on their escalation days until they move."
            )
            label = "Yes, override the gate and enable" if override else "Yes, enable"
        return confirm_form(
            self,
            request,
            title=f"{'Disable' if action == 'disable' else 'Enable'} the reminder schedule",
            summary=text,
            details=details,
            items=failing,
            hidden=[("action", action)],
            ask_reason=action in ("override", "disable"),
            reason_required=action == "override",
            reason=request.POST.get("reason", ""),
            confirm_label=label,
            cancel_url=request.path,
            danger=action == "override",
        )

    def _gate_post(self, request, *, may_override: bool) -> None:
        action = request.POST.get("action")
        reason = request.POST.get("reason", "")
        by = request.user.get_username()
        if action == "disable":
            change = activation.schedule_disable(by=by, now=timezone.now(), reason=reason)
            self.message_user(
                request,
                "Reminder schedule disabled." if change else "The schedule was not enabled.",
            )
            return
        try:
            change = activation.schedule_enable(
                by=by,
                now=timezone.now(),
                may_override=may_override and action == "override",
                reason=reason,
            )
        except activation.GateClosed as refused:
            self.message_user(request, f"Not enabled: {refused}", messages.ERROR)
            return
        note = " (gate overridden, audited)" if change.overridden else ""
        self.message_user(request, f"Reminder schedule enabled{note}.")


# --- template map, platforms, template statuses -------------------------------------------


class EventTemplateMappingForm(forms.ModelForm):
    """A template is mapped to an event only if the event's dispatch fills every variable
    the template's body needs (otherwise each send would fail)."""

    class Meta:
        model = EventTemplateMapping
        fields = ("event_name", "template_name", "send_design_image", "is_live")

    def clean(self):
        data = super().clean()
        event_name, template_name = data.get("event_name"), data.get("template_name")
        if event_name and template_name:
            problem = mapping_problem(event_name, template_name)
            if problem:
                self.add_error(
                    "template_name",
                    f"{problem}. Pick a template whose variables the event provides.",
                )
        return data


class EventTemplateMappingListForm(forms.ModelForm):
    """The list's editable columns: a mapping whose template its event cannot fill (saved
    before the form checked it) may be switched off, not on."""

    class Meta:
        model = EventTemplateMapping
        fields = ("is_live", "send_design_image")

    def add_error(self, field, error):
        # The model's own check names a field this list does not edit (a template not in
        # code, saved before the form checked it): said on the row, not a server error.
        if field is None and hasattr(error, "error_dict"):
            elsewhere = [name for name in error.error_dict if name not in self.fields]
            if any(name != NON_FIELD_ERRORS for name in elsewhere):
                error = forms.ValidationError(
                    [message for name in error.error_dict for message in error.error_dict[name]]
                )
        super().add_error(field, error)

    def clean(self):
        data = super().clean()
        mapping = self.instance
        if data.get("is_live") and "is_live" in self.changed_data:
            problem = mapping_problem(mapping.event_name, mapping.template_name)
            if problem:
                raise forms.ValidationError(f"Not made live: {problem}. Change its template first.")
        return data


@admin.register(EventTemplateMapping)
class EventTemplateMappingAdmin(admin.ModelAdmin):
    form = EventTemplateMappingForm
    list_display = ("event_name", "template_name", "send_design_image", "is_live", "known")
    list_editable = ("is_live", "send_design_image")
    list_filter = ("is_live", "send_design_image", "template_name")
    search_fields = ("event_name", "template_name")
    readonly_fields = ("updated_at",)
    actions = ["restore_defaults"]

    def get_changelist_form(self, request, **kwargs):
        return super().get_changelist_form(request, form=EventTemplateMappingListForm, **kwargs)

    @admin.display(description="template in code, fillable by the event", boolean=True)
    def known(self, obj):
        return obj.template_name in SPECS and not mapping_problem(obj.event_name, obj.template_name)

    @admin.action(description="Restore the missing default mappings", permissions=["add"])
    def restore_defaults(self, request, queryset):
        self.message_user(request, f"{restore_default_mappings()} default mapping(s) created.")


class TemplateVariantStatusInline(admin.TabularInline):
    model = TemplateVariantStatus
    extra = 0
    can_delete = False
    fields = ("template_name", "language", "status", "meta_id", "reason", "updated_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(WhatsAppPlatform)
class WhatsAppPlatformAdmin(admin.ModelAdmin):
    list_display = (
        "label",
        "waba_id",
        "phone_number_id",
        "country_codes",
        "languages",
        "approval",
        "is_active",
    )
    list_filter = ("is_active",)
    search_fields = ("label", "waba_id", "phone_number_id")
    inlines = [TemplateVariantStatusInline]
    actions = ["show_plan", "upsert_templates", "refresh_statuses"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                approved=Count(
                    "template_statuses",
                    filter=Q(template_statuses__status=TemplateStatus.APPROVED),
                )
            )
        )

    @admin.display(description="template languages")
    def languages(self, obj):
        try:
            return ", ".join(languages_for_platform(obj))
        except ImproperlyConfigured as error:
            return str(error)

    @admin.display(description="approved variants", ordering="approved")
    def approval(self, obj):
        try:
            items = plan(platforms=[obj], specs=selected_specs())
        except ImproperlyConfigured:
            return "—"  # the "template languages" column says why
        approved = sum(1 for i in items if i.status == TemplateStatus.APPROVED)
        colour = OK_COLOUR if approved == len(items) else WAIT_COLOUR
        return pill(colour, f"{approved} / {len(items)}")

    def _report(self, request, items, title):
        return TemplateResponse(
            request,
            "production_runs/admin/template_plan.html",
            {
                **self.admin_site.each_context(request),
                "title": title,
                "opts": self.opts,
                "items": items,
            },
        )

    def _languages_usable(self, request, platforms) -> bool:
        """False (with the error shown) when WHATSAPP_PLATFORM_LANGUAGES is malformed; warns
        of configured languages no template is written in (they are left out)."""
        try:
            warnings = languages_without_variants(platforms, selected_specs())
        except ImproperlyConfigured as error:
            self.message_user(request, str(error), messages.ERROR)
            return False
        for warning in warnings:
            self.message_user(request, warning, messages.WARNING)
        return True

    @admin.action(description="Show the template plan (dry run, no call to Meta)")
    def show_plan(self, request, queryset):
        if not self._languages_usable(request, list(queryset)):
            return None
        items = plan(platforms=list(queryset), specs=selected_specs())
        return self._report(request, items, "WhatsApp templates — plan (dry run)")

    def has_submit_permission(self, request) -> bool:
        return request.user.has_perm("production_runs.submit_whatsapp_templates")

    @admin.action(description="Submit missing templates to Meta (upsert)", permissions=["submit"])
    def upsert_templates(self, request, queryset):
        platforms = list(queryset)
        if not self._languages_usable(request, platforms):
            return None
        if not confirmed(request):
            missing = [
                i for i in plan(platforms=platforms, specs=selected_specs()) if i.action == "create"
            ]
            return confirm_page(
                self,
                request,
                queryset,
                action="upsert_templates",
                title="Submit missing WhatsApp templates",
                summary=(
                    f"Reads the templates of {len(platforms)} WABA(s) from Meta and submits the "
                    f"variants it lacks ({len(missing)} by Herald's records) for review."
                ),
                items=[f"{i.platform}: {i.template} ({i.language})" for i in missing],
                confirm_label="Yes, submit them",
            )
        items = sync(mode="upsert", platforms=platforms, specs=selected_specs(), now=timezone.now())
        return self._report(request, items, "WhatsApp templates — upsert result")

    @admin.action(description="Refresh template statuses from Meta", permissions=["submit"])
    def refresh_statuses(self, request, queryset):
        if not self._languages_usable(request, list(queryset)):
            return None
        items = sync(
            mode="refresh", platforms=list(queryset), specs=selected_specs(), now=timezone.now()
        )
        return self._report(request, items, "WhatsApp templates — statuses read back")


@admin.register(TemplateVariantStatus)
class TemplateVariantStatusAdmin(admin.ModelAdmin):
    """What Meta says about each variant. Read-only: a hand-set APPROVED would open the
    activation gate for a template Meta never approved. Use "Refresh template statuses
    from Meta" on the platform list (or Meta's status webhook) to update it."""

    list_display = ("template_name", "language", "platform", "status", "reason", "updated_at")
    list_filter = ("status", "platform", "language", "template_name")
    search_fields = ("template_name", "meta_id", "reason")
    date_hierarchy = "updated_at"
    readonly_fields = (
        "platform",
        "template_name",
        "language",
        "status",
        "meta_id",
        "reason",
        "updated_at",
    )

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ScheduleChange)
class ScheduleChangeAdmin(admin.ModelAdmin):
    list_display = ("at", "by", "enabled", "gate_held", "overridden", "reason")
    list_filter = ("enabled", "overridden", "gate_held")
    search_fields = ("by", "reason")
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- beat's periodic tasks: activation is confirmed, the reminder schedule goes by the gate --


class GuardedPeriodicTaskForm(PeriodicTaskForm):
    """No second task runs the discoverer (it would remind partners around the activation
    gate), and the reminder schedule's own task keeps running it."""

    def clean(self):
        data = super().clean()
        was = self.instance.task if self.instance.pk else ""
        now = data.get("task")
        gate = reverse("admin:production_runs_reminder_gate")
        if now == activation.DISCOVER_TASK and was != activation.DISCOVER_TASK:
            raise forms.ValidationError(
                format_html(
                    "{} is the reminder schedule's task: it already has its periodic task, "
                    'switched on its <a href="{}">activation gate page</a> (gate checked, '
                    "audited). A second one would remind partners around the gate.",
                    activation.DISCOVER_TASK,
                    gate,
                )
            )
        if was == activation.DISCOVER_TASK and now != was:
            raise forms.ValidationError(
                f"This is the reminder schedule: its task stays {activation.DISCOVER_TASK}."
            )
        return data


class GuardedPeriodicTaskAdmin(PeriodicTaskAdmin):
    """django-celery-beat's task list, with schedule activation made safe: enabling,
    disabling or toggling tasks shows a confirmation page naming each task and its
    schedule, and the reminder schedule (herald.discover_reminders) is switched only on its
    activation gate page, where the gate is checked and every switch audited; no other
    task may run the discoverer (GuardedPeriodicTaskForm)."""

    form = GuardedPeriodicTaskForm

    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj))
        # As stored: a refused form has already written its values on `obj`.
        if (
            obj is not None
            and type(obj).objects.filter(pk=obj.pk, task=activation.DISCOVER_TASK).exists()
        ):
            return (*fields, "enabled")
        return fields

    def _guarded(self, request, queryset):
        guarded = queryset.filter(task=activation.DISCOVER_TASK)
        if guarded.exists():
            self.message_user(
                request,
                format_html(
                    "The reminder schedule is switched on its "
                    '<a href="{}">activation gate page</a> (gate checked, audited); it was '
                    "left as it is.",
                    reverse("admin:production_runs_reminder_gate"),
                ),
                messages.WARNING,
            )
        return queryset.exclude(task=activation.DISCOVER_TASK)

    def _confirm(self, request, queryset, *, action: str, verb: str, effect: str):
        tasks = list(queryset.select_related("crontab", "interval"))
        return confirm_page(
            self,
            request,
            queryset,
            action=action,
            title=f"{verb.capitalize()} {len(tasks)} periodic task(s)",
            summary=f"{verb.capitalize()} {len(tasks)} periodic task(s): {effect}",
            items=[f"{t.name} — {t.task}, {t.scheduler}: {t.schedule}" for t in tasks],
            confirm_label=f"Yes, {verb} {len(tasks)}",
        )

    @admin.action(description="Enable selected tasks (confirm)", permissions=["change"])
    def enable_tasks(self, request, queryset):
        queryset = self._guarded(request, queryset)
        if not confirmed(request):
            return self._confirm(
                request,
                queryset.filter(enabled=False),
                action="enable_tasks",
                verb="enable",
                effect="beat starts running each on its schedule, the next due run included.",
            )
        return super().enable_tasks(request, queryset)

    @admin.action(description="Disable selected tasks (confirm)", permissions=["change"])
    def disable_tasks(self, request, queryset):
        queryset = self._guarded(request, queryset)
        if not confirmed(request):
            return self._confirm(
                request,
                queryset.filter(enabled=True),
                action="disable_tasks",
                verb="disable",
                effect="beat stops running each until it is enabled again (sends, reminders "
                "and evaluations they do stop with them).",
            )
        return super().disable_tasks(request, queryset)

    @admin.action(description="Run selected tasks", permissions=["change"])
    def run_tasks(self, request, queryset):
        # The discoverer runs by hand with `manage.py discover_reminders` (or its dry run on
        # the gate page), not around the gate from here.
        queryset = self._guarded(request, queryset)
        if not queryset.exists():
            return None
        return super().run_tasks(request, queryset)

    @admin.action(description="Toggle activity of selected tasks (confirm)", permissions=["change"])
    def toggle_tasks(self, request, queryset):
        queryset = self._guarded(request, queryset)
        if not confirmed(request):
            on = queryset.filter(enabled=False).count()
            return self._confirm(
                request,
                queryset,
                action="toggle_tasks",
                verb="toggle",
                effect=f"{on} disabled task(s) start running, "
                f"{queryset.count() - on} enabled task(s) stop.",
            )
        return super().toggle_tasks(request, queryset)


admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, GuardedPeriodicTaskAdmin)
