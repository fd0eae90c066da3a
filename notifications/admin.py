"""Admin for the delivery engine. Actions are thin: they call notifications.operations and
report a count."""

import json

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count, F, OuterRef, Q, Subquery
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape, format_html, format_html_join

from notifications import batch, operations, pacing
from notifications.admin_confirm import confirm_page, confirmed
from notifications.admin_filters import WorkflowRunFilter
from notifications.admin_records import KeptRecordAdmin
from notifications.holds import HoldContext, explain
from notifications.killswitches import blocks_launches, frozen_filter, killswitch_set
from notifications.models import (
    AuditEntry,
    BreakerTransition,
    Delivery,
    DeliveryEvent,
    Event,
    EventHandling,
    KillSwitch,
    KillSwitchChange,
    MessageTemplate,
    Notification,
    ProviderBreaker,
    ProviderReport,
    RecordedMessage,
    Sender,
    Suppression,
    UnmatchedProviderEvent,
    Workflow,
    WorkflowRun,
)
from notifications.templating import TemplateProblem, compile_template
from notifications.tracking import suppress, unsuppress

STATUS_COLOURS = {
    "scheduled": "#2563eb",
    "sending": "#7c3aed",
    "sent": "#059669",
    "delivered": "#047857",
    "opened": "#047857",
    "clicked": "#047857",
    "failed": "#dc2626",
    "bounced": "#dc2626",
    "complained": "#dc2626",
    "unknown": "#d97706",
    "expired": "#6b7280",
    "cancelled": "#6b7280",
    "skipped": "#6b7280",
}


def badge(status: str, label: str):
    colour = STATUS_COLOURS.get(status, "#6b7280")
    return format_html(
        '<span style="background:{};color:#fff;padding:1px 7px;border-radius:9px;'
        'font-size:11px;white-space:nowrap">{}</span>',
        colour,
        label,
    )


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class DeliveryEventInline(ReadOnlyInline):
    model = DeliveryEvent
    fields = ("at", "kind", "reason", "provider_event_id")
    readonly_fields = fields
    verbose_name = "timeline entry"
    verbose_name_plural = "Timeline (every state change and provider event)"


class DeliveryChangeList(ChangeList):
    """Reads the suppressions of the page's addresses at once (a query per row before),
    and the stakeholders of its stakeholder deliveries (one query): whether each is still
    active and where it is reached now, which decide what happens to a delivery when due."""

    def get_results(self, request):
        super().get_results(request)
        request.hold_context.read_suppressions(self.result_list)  # evaluates the page
        request.hold_context.read_addresses(self.result_list, now=timezone.now())


def _readdressed_since_failing(failed) -> dict[int, str]:
    """Of these failed deliveries, those re-addressed after their last failure (the
    customer's email corrected since): delivery id → the re-addressing event's reason."""
    last_failed = (
        DeliveryEvent.objects.filter(delivery_id=OuterRef("delivery_id"), kind="failed")
        .order_by("-id")
        .values("id")[:1]
    )
    moved = {}
    for delivery_id, reason in (
        DeliveryEvent.objects.filter(delivery__in=failed, kind=DeliveryEvent.Kind.READDRESSED)
        .annotate(last_failed=Subquery(last_failed))
        .filter(Q(last_failed__isnull=True) | Q(id__gt=F("last_failed")))
        .order_by("id")
        .values_list("delivery_id", "reason")
    ):
        moved[delivery_id] = reason  # the latest one
    return moved


def _retry_item(delivery: Delivery, readdressed: str | None) -> str:
    """A failed delivery as the retry's confirmation lists it: where it goes now and its
    error; re-addressed since it failed, its error was at the old address, said as such
    (it read as the new address's error)."""
    error = delivery.last_error or delivery.status_reason
    said = f"{delivery.get_channel_display()} to {delivery.address}"
    if readdressed is None:
        return f"{said}: {error}"
    return (
        f"{said} (re-addressed since it failed: {readdressed}); its error, at the old "
        f"address: {error}"
    )


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "channel",
        "address",
        "subject_short",
        "status_badge",
        "why_and_when",
        "send_at",
        "attempts",
        "provider",
    )
    list_filter = (
        "status",
        "channel",
        "message_type",
        "provider",
        ("send_at", admin.DateFieldListFilter),
        ("fallback_of", admin.EmptyFieldListFilter),
        ("workflow_run", WorkflowRunFilter),
    )
    date_hierarchy = "send_at"
    search_fields = (
        "address",
        "recipient_key",
        "subject",
        "context_key",
        "status_reason",
        "idempotency_key",
        "provider_message_id",
    )
    list_select_related = ("notification", "workflow_run__workflow")
    inlines = [DeliveryEventInline]
    actions = ["retry_failed", "cancel_scheduled", "reconcile_sent", "reconcile_failed"]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "status",
                    "status_reason",
                    "why_and_when",
                    "send_at",
                    "expires_at",
                    "sent_at",
                )
            },
        ),
        ("Recipient", {"fields": ("recipient_key", "channel", "address")}),
        ("Message", {"fields": ("subject", "body", "html_preview", "payload_pretty")}),
        (
            "Delivery",
            {
                "fields": (
                    "idempotency_key",
                    "attempts",
                    "max_attempts",
                    "last_error",
                    "provider",
                    "provider_message_id",
                    "claimed_at",
                    "sender",
                    "fallback_channel",
                    "fallback_address",
                    "fallback_of",
                    "notification",
                    "workflow_run",
                )
            },
        ),
    )

    def has_add_permission(self, request):
        return False  # deliveries come from workflows, never typed in

    def has_delete_permission(self, request, obj=None):
        # A deleted delivery takes its idempotency key and history with it: the same message
        # could be staged and sent again. Cancel a scheduled one instead.
        return False

    def get_readonly_fields(self, request, obj=None):
        # The outbox is a record: what was (or will be) sent is never edited by hand.
        # Use the actions to retry or cancel.
        return [f for fieldset in self.fieldsets for f in fieldset[1]["fields"]]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # Every field is read-only: a Save button would only say "changed successfully".
        no_save = {"show_save": False, "show_save_and_continue": False}
        return super().change_view(
            request, object_id, form_url, {**(extra_context or {}), **no_save}
        )

    def changelist_view(self, request, extra_context=None):
        # Read the switches, breakers and pauses once for the whole page.
        request.hold_context = HoldContext.load()
        return super().changelist_view(request, extra_context)

    def get_changelist(self, request, **kwargs):
        return DeliveryChangeList

    def get_queryset(self, request):
        self._request = request
        return super().get_queryset(request)

    @admin.display(description="why not sent yet / when")
    def why_and_when(self, obj):
        context = getattr(getattr(self, "_request", None), "hold_context", None)
        hold = explain(obj, now=timezone.now(), context=context)
        if hold is None:
            return obj.status_reason or "—"
        when = (
            f" — expected {hold.expected_at:%Y-%m-%d %H:%M:%S}"
            if hold.expected_at
            else (" — waits for a person")
        )
        return f"{hold.reason}{when}"

    @admin.display(description="subject", ordering="subject")
    def subject_short(self, obj):
        text = obj.subject or obj.body
        return text[:60] + ("…" if len(text) > 60 else "")

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return badge(obj.status, obj.get_status_display())

    @admin.display(description="HTML")
    def html_preview(self, obj):
        if not obj.html_body:
            return "—"
        return format_html(
            '<iframe sandbox="" srcdoc="{}" style="width:640px;height:360px;border:1px solid #ddd">'
            "</iframe>",
            escape(obj.html_body),  # always escaped: the attribute must hold the whole page
        )

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2, ensure_ascii=False))

    @admin.action(description="Retry selected failed deliveries", permissions=["change"])
    def retry_failed(self, request, queryset):
        failed = queryset.filter(status=Delivery.Status.FAILED)
        # A cancelled batch's are never retried (operations.delivery_retry leaves them alone).
        cancelled = failed.filter(workflow_run__status=WorkflowRun.Status.CANCELLED).count()
        if not confirmed(request):
            aborted = failed.filter(workflow_run__status=WorkflowRun.Status.ABORTED).count()
            live = list(
                failed.exclude(workflow_run__status=WorkflowRun.Status.CANCELLED).values_list(
                    "id", flat=True
                )
            )
            kept = batch.kept_from_retry(live)
            moved = _readdressed_since_failing(failed)
            left_failed = set(kept.inactive) | set(kept.no_email)
            suppressed = len(operations.suppressed_among([i for i in live if i not in left_failed]))
            n = len(live) - len(left_failed) - suppressed
            others = queryset.exclude(status=Delivery.Status.FAILED).count()
            notes = [f"{others} selected deliveries that are not failed are left alone."]
            if cancelled:
                notes.append(
                    f"{cancelled} of a cancelled batch are left alone too: a cancelled batch "
                    "sends nothing more."
                )
            if aborted:
                notes.append(
                    f"{aborted} belong to a batch its breaker aborted: they wait until the "
                    "batch is resumed."
                )
            if kept.inactive:
                notes.append(
                    f"{len(kept.inactive)} are to a customer marked inactive: they stay failed "
                    "(reactivate the customer in Customers first to send them)."
                )
            if kept.no_email:
                notes.append(
                    f"{len(kept.no_email)} are to a customer whose email was removed: they "
                    "stay failed, there is nowhere to send them."
                )
            if suppressed:
                notes.append(
                    f"{suppressed} go to an address suppressed now: they stay failed (lift "
                    "the suppression first to send them)."
                )
            return confirm_page(
                self,
                request,
                queryset,
                action="retry_failed",
                title=f"Retry {n} failed deliveries",
                summary=f"Retrying schedules {n} failed deliveries again with fresh attempts: "
                "each is sent on the next dispatch round (unless a kill switch, breaker or "
                "suppression holds it); a batch that had ended is reopened and ends again "
                "with their outcome. " + " ".join(notes),
                items=[_retry_item(d, moved.get(d.id)) for d in failed],
                confirm_label=f"Yes, send {n} again",
            )
        ids = list(queryset.values_list("id", flat=True))  # before the retry changes them
        now, by = timezone.now(), request.user.username
        # A cancelled batch's are counted as such (delivery_retry leaves them alone), not
        # also as kept for their address.
        live = list(
            failed.exclude(workflow_run__status=WorkflowRun.Status.CANCELLED).values_list(
                "id", flat=True
            )
        )
        addresses = batch.readdress_before_retry(ids=live, by=by, now=now)
        kept = set(addresses.no_email) | set(addresses.inactive)
        suppressed = operations.suppressed_among([i for i in live if i not in kept])
        kept |= set(suppressed)
        count = operations.delivery_retry(ids=[i for i in ids if i not in kept], now=now, by=by)
        self._report(
            request,
            f"{count} failed deliveries scheduled again.",
            len(ids) - count - cancelled - len(kept),
            "failed",
        )
        if addresses.readdressed:
            self.message_user(
                request,
                f"{addresses.readdressed} went to a customer whose email was corrected while "
                "they were being sent: they go to the customer's email as it is now.",
            )
        if addresses.no_email:
            self.message_user(
                request,
                f"{len(addresses.no_email)} stay failed: their customer's email was removed "
                "while they were being sent, so there is nowhere to send them.",
                messages.WARNING,
            )
        if suppressed:
            self.message_user(
                request,
                f"{len(suppressed)} stay failed: their address is suppressed now (a bounce, "
                "an unsubscribe or a complaint; lift it in Suppressions to send).",
                messages.WARNING,
            )
        if addresses.inactive:
            self.message_user(
                request,
                f"{len(addresses.inactive)} stay failed: their customer is marked inactive "
                "(reactivate them in Customers to send).",
                messages.WARNING,
            )
        if cancelled:
            self.message_user(
                request,
                f"{cancelled} of a cancelled batch were left alone: a cancelled batch sends "
                "nothing more.",
                messages.WARNING,
            )

    @admin.action(description="Cancel selected scheduled deliveries", permissions=["change"])
    def cancel_scheduled(self, request, queryset):
        scheduled = queryset.filter(status=Delivery.Status.SCHEDULED)
        if not confirmed(request):
            n = scheduled.count()
            return confirm_page(
                self,
                request,
                queryset,
                action="cancel_scheduled",
                title=f"Cancel {n} scheduled deliveries",
                summary=f"Cancelling {n} scheduled deliveries: they will never be sent. "
                f"{queryset.count() - n} selected deliveries that are not scheduled are left "
                "alone.",
                items=[f"{d.get_channel_display()} to {d.address}: {d.subject}" for d in scheduled],
                confirm_label=f"Yes, cancel {n}",
            )
        ids = list(queryset.values_list("id", flat=True))  # before the cancel changes them
        count = operations.delivery_cancel(ids=ids, now=timezone.now(), by=request.user.username)
        self._report(
            request, f"{count} scheduled deliveries cancelled.", len(ids) - count, "scheduled"
        )

    def _report(self, request, done: str, left_alone: int, state: str) -> None:
        """What an action did, and how many of the selected rows were not in the state it
        acts on (counted from the ids read before it changed them)."""
        self.message_user(request, done)
        if left_alone:
            self.message_user(
                request, f"{left_alone} were not {state} and were left alone.", messages.WARNING
            )

    @admin.action(
        description="Reconcile unknown: the provider has them (mark sent)", permissions=["change"]
    )
    def reconcile_sent(self, request, queryset):
        return self._reconcile(request, queryset, accepted=True)

    @admin.action(
        description="Reconcile unknown: the provider does not have them (mark failed)",
        permissions=["change"],
    )
    def reconcile_failed(self, request, queryset):
        return self._reconcile(request, queryset, accepted=False)

    def _reconcile(self, request, queryset, *, accepted: bool):
        unknown = queryset.filter(status=Delivery.Status.UNKNOWN)
        outcome = "sent" if accepted else "failed"
        n = unknown.count()
        # One delivery the provider has: the message id found there can be given with it.
        asks_id = accepted and n == 1
        if not confirmed(request):
            return confirm_page(
                self,
                request,
                queryset,
                action=f"reconcile_{outcome}",
                title=f"Mark {n} unknown deliveries {outcome}",
                summary=(
                    f"You checked the provider: it {'has' if accepted else 'does not have'} "
                    f"these {n} messages, so they are marked {outcome}"
                    + (
                        " (give the provider's message id below if you found it: its tracking "
                        "events are then matched; without one they stay unmatched in Admin → "
                        "Unmatched provider events)"
                        if asks_id
                        else " (with no provider message id, their later tracking events stay "
                        "unmatched in Admin → Unmatched provider events)"
                        if accepted
                        else "; retry them afterwards to send them again"
                    )
                    + f". {queryset.count() - n} selected deliveries that are not unknown are "
                    "left alone."
                ),
                items=[
                    f"{d.get_channel_display()} to {d.address}: {d.status_reason}" for d in unknown
                ],
                confirm_label=f"Yes, mark {n} {outcome}",
                inputs=[("provider_message_id", "Provider message id (optional)")]
                if asks_id
                else (),
            )
        message_id = request.POST.get("provider_message_id", "").strip() if asks_id else ""
        if len(message_id) > Delivery._meta.get_field("provider_message_id").max_length:
            self.message_user(request, "That provider message id is too long.", messages.ERROR)
            return None
        selected = list(queryset.values_list("id", flat=True))
        try:
            count = operations.delivery_reconcile(
                # With a message id, only the one it belongs to (the others are left alone).
                ids=list(unknown.values_list("id", flat=True)) if message_id else selected,
                accepted=accepted,
                now=timezone.now(),
                by=request.user.username,
                provider_message_id=message_id,
            )
        except ValueError as refused:
            self.message_user(request, f"{refused} Nothing was changed.", messages.ERROR)
            return None
        self._report(
            request,
            f"{count} unknown deliveries marked {outcome}.",
            len(selected) - count,
            "unknown",
        )
        return None


@admin.register(DeliveryEvent)
class DeliveryEventAdmin(KeptRecordAdmin):
    """Every state change and tracking event (delivered, opened, clicked, bounced...): a
    record, never edited."""

    list_display = ("at", "kind", "delivery_link", "channel", "reason", "provider_event_id")
    list_filter = ("kind", "delivery__channel", "delivery__provider")
    search_fields = ("delivery__address", "reason", "provider_event_id", "=delivery__id")
    date_hierarchy = "at"
    list_select_related = ("delivery",)
    readonly_fields = ("delivery", "kind", "at", "reason", "provider_event_id", "data")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="delivery", ordering="delivery")
    def delivery_link(self, obj):
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:notifications_delivery_change", args=[obj.delivery_id]),
            obj.delivery,
        )

    @admin.display(description="channel", ordering="delivery__channel")
    def channel(self, obj):
        return obj.delivery.get_channel_display()


class TemplateMadeByFilter(admin.SimpleListFilter):
    title = "made by"
    parameter_name = "made_by"

    def lookups(self, request, model_admin):
        return [("staff", "staff (reusable)"), ("batch", "a batch launch (its record)")]

    def queryset(self, request, queryset):
        if self.value() == "staff":
            return queryset.filter(batch_run__isnull=True)
        if self.value() == "batch":
            return queryset.filter(batch_run__isnull=False)
        return queryset


@admin.register(MessageTemplate)
class MessageTemplateAdmin(admin.ModelAdmin):
    list_display = ("name", "channel", "message_type", "subject", "made_by", "updated_at")
    list_filter = (TemplateMadeByFilter, "channel", "message_type")
    search_fields = ("name", "subject", "body", "whatsapp_template")
    readonly_fields = ("preview", "made_by", "updated_at")
    fields = (
        "name",
        "channel",
        "message_type",
        "variables",
        "subject",
        "body",
        "whatsapp_template",
        "sample_context",
        "preview",
        "made_by",
        "updated_at",
    )

    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.batch_run_id:
            return False  # the record of what a batch launched: shown, never saved
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.batch_run_id:
            return False
        return super().has_delete_permission(request, obj)

    @admin.display(description="made by")
    def made_by(self, obj):
        if obj is None or not obj.batch_run_id:
            return "staff"
        url = reverse("admin:notifications_workflowrun_change", args=[obj.batch_run_id])
        return format_html('<a href="{}">batch run {}</a>', url, obj.batch_run_id)

    @admin.display(description="Preview (rendered from the sample values)")
    def preview(self, obj):
        if obj is None or not obj.pk:
            return "Save the template to see a preview."
        try:
            rendered = compile_template(obj).render(obj.sample_context or {})
        except TemplateProblem as problem:
            return format_html('<span style="color:#dc2626">{}</span>', problem)
        parts = [format_html("<p><strong>Subject:</strong> {}</p>", rendered.subject)]
        if rendered.html_body:
            parts.append(
                format_html(
                    '<iframe sandbox="" srcdoc="{}" style="width:640px;height:360px;'
                    'border:1px solid #ddd"></iframe>',
                    escape(rendered.html_body),  # rendered HTML is marked safe: escape anyway
                )
            )
        else:
            parts.append(format_html("<pre>{}</pre>", rendered.body))
        return format_html_join("", "{}", ((p,) for p in parts))


class EventHandlingInline(ReadOnlyInline):
    model = EventHandling
    fields = ("subscriber", "status", "attempts", "last_error", "next_attempt_at", "handled_at")
    readonly_fields = fields


@admin.register(Event)
class EventAdmin(KeptRecordAdmin):
    list_display = ("name", "idempotency_key", "created_at", "handling_summary")
    list_filter = ("name", "handlings__status")
    search_fields = ("name", "idempotency_key")
    date_hierarchy = "created_at"
    readonly_fields = ("name", "payload", "idempotency_key", "created_at")
    inlines = [EventHandlingInline]

    def has_add_permission(self, request):
        return False

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                handled=Count("handlings", filter=Q(handlings__status="done")),
                handling_total=Count("handlings"),
            )
        )

    @admin.display(description="handled")
    def handling_summary(self, obj):
        return f"{obj.handled}/{obj.handling_total}"


@admin.register(EventHandling)
class EventHandlingAdmin(KeptRecordAdmin):
    list_display = ("event", "subscriber", "status", "attempts", "last_error", "next_attempt_at")
    list_filter = ("status", "subscriber")
    search_fields = ("event__name", "event__idempotency_key", "subscriber", "last_error")
    date_hierarchy = "next_attempt_at"
    list_select_related = ("event",)
    readonly_fields = [f.name for f in EventHandling._meta.fields if f.name != "id"]
    actions = ["retry_now"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Retry selected failed handlings now", permissions=["change"])
    def retry_now(self, request, queryset):
        count = operations.handling_retry(
            ids=queryset.values_list("id", flat=True), now=timezone.now()
        )
        self.message_user(request, f"{count} handlings will run again.")


@admin.register(RecordedMessage)
class RecordedMessageAdmin(admin.ModelAdmin):
    """What the development backends would have sent."""

    list_display = ("created_at", "channel", "to", "subject", "provider_message_id")
    list_filter = ("channel",)
    search_fields = ("to", "subject", "body", "provider_message_id")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in RecordedMessage._meta.fields if f.name != "id"]

    def has_add_permission(self, request):
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("id", "origin", "template", "message_type", "created_at", "delivery_count")
    list_filter = ("message_type", ("template", admin.RelatedOnlyFieldListFilter))
    search_fields = ("origin", "template__name")
    date_hierarchy = "created_at"
    list_select_related = ("template",)
    readonly_fields = (
        "template",
        "context",
        "origin",
        "message_type",
        "workflow_run",
        "created_at",
    )

    def has_add_permission(self, request):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n=Count("deliveries"))

    @admin.display(description="deliveries", ordering="n")
    def delivery_count(self, obj):
        return obj.n


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    list_display = ("name", "type", "risk_level", "is_active", "retry_max_attempts")
    list_filter = ("type", "is_active", "risk_level", "reflexion_enabled")
    search_fields = ("name", "description")
    readonly_fields = ("created_at",)

    def get_readonly_fields(self, request, obj=None):
        # A workflow's type decides what runs it (the 5-minute trigger tick, a batch, a
        # schedule) and which rules hold for it (a trigger's risk is 1 or 2): changing it
        # would take a trigger out of the tick unseen, or around its risk rule.
        # Deactivate the workflow and define a new one instead.
        if obj is not None:
            return ("type", *self.readonly_fields)
        return self.readonly_fields

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and "risk_level" in form.changed_data:
            # What the high_risk_ops kill switch holds follows this level: audited.
            AuditEntry.objects.create(
                at=timezone.now(),
                by=request.user.get_username(),
                action="workflow_risk_change",
                target=f"workflow:{obj.pk}",
                detail={"from": form.initial.get("risk_level"), "to": obj.risk_level},
            )


class KillSwitchChangeInline(ReadOnlyInline):
    model = KillSwitchChange
    fields = ("at", "turned_on", "by", "reason")
    readonly_fields = fields
    verbose_name_plural = "Audit: every time it was turned on or off"


@admin.register(KillSwitch)
class KillSwitchAdmin(admin.ModelAdmin):
    """Turning a switch on or off needs notifications.toggle_killswitch and is audited."""

    list_display = (
        "name",
        "scope",
        "channel",
        "workflow",
        "state",
        "reason",
        "changed_by",
        "changed_at",
    )
    list_filter = ("is_on", "scope")
    search_fields = ("name", "reason", "changed_by")
    readonly_fields = ("is_on", "reason", "changed_by", "changed_at")
    fields = ("name", "scope", "channel", "workflow", "is_on", "reason", "changed_by", "changed_at")
    inlines = [KillSwitchChangeInline]
    actions = ["turn_on", "turn_off"]

    def get_readonly_fields(self, request, obj=None):
        # What a switch that is on holds changes only by turning it off (with a reason):
        # widening or narrowing it in the form would move held sends unaudited. A switch's
        # name is how people, its history and the audit know it: fixed once it exists.
        if obj is not None and obj.is_on:
            return self.fields
        if obj is not None:
            return ("name", *self.readonly_fields)
        return self.readonly_fields

    def has_delete_permission(self, request, obj=None):
        # Deleting a switch would release what it holds without a reason and take its
        # on/off history with it: turn it off instead; an old switch stays, off.
        return False

    @admin.display(description="state", ordering="is_on")
    def state(self, obj):
        return badge(
            "failed" if obj.is_on else "sent", "ON — holding sends" if obj.is_on else "off"
        )

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not request.user.has_perm("notifications.toggle_killswitch"):
            actions.pop("turn_on", None)
            actions.pop("turn_off", None)
        return actions

    def _toggle(self, request, queryset, *, on: bool):
        if not request.user.has_perm("notifications.toggle_killswitch"):
            self.message_user(request, "You may not turn kill switches on or off.", messages.ERROR)
            return None
        state = "on" if on else "off"
        targets = queryset.filter(is_on=not on)
        if not targets.exists():
            names = ", ".join(s.name for s in queryset)
            self.message_user(request, f"Nothing to do: already {state}: {names}.")
            return None
        if not confirmed(request):
            switches = list(targets.select_related("workflow"))
            matching = frozen_filter(switches)
            held = (
                Delivery.objects.filter(status=Delivery.Status.SCHEDULED).filter(matching).count()
                if matching is not None
                else 0
            )
            if on:
                effect = (
                    "freezes every matching scheduled delivery in place: "
                    f"{held} scheduled deliveries are held right now, and new ones wait too"
                )
                if any(blocks_launches(s) for s in switches):
                    effect += "; every launch of a batch notification is blocked"
            else:
                effect = (
                    f"releases the {held} scheduled deliveries it holds; they are sent on the "
                    "next dispatch round"
                )
            return confirm_page(
                self,
                request,
                targets,
                action="turn_on" if on else "turn_off",
                title=f"Turn {'on' if on else 'off'} {len(switches)} kill switch(es)",
                summary=f"Turning {'on' if on else 'off'} {len(switches)} switch(es) {effect}.",
                items=[f"{s}: {s.get_scope_display()}" for s in switches],
                confirm_label=f"Yes, turn {'on' if on else 'off'}",
                ask_reason=True,
            )
        reason = request.POST.get("reason", "").strip()
        if not reason:  # the page's field is required; a hand-made POST is refused here too
            self.message_user(
                request,
                f"Give a reason to turn kill switches {'on' if on else 'off'}; nothing changed.",
                messages.ERROR,
            )
            return None
        changed = [
            s.pk
            for s in targets
            if killswitch_set(
                switch=s, on=on, by=request.user.username, reason=reason, now=timezone.now()
            )
        ]
        said = f"{len(changed)} kill switch(es) turned {state}."
        left = [s.name for s in queryset.exclude(pk__in=changed)]
        if left:  # already so when chosen, or turned by someone else meanwhile
            said += f" Already {state}: {', '.join(left)}."
        self.message_user(request, said)
        return None

    @admin.action(description="Turn on (freeze matching deliveries)")
    def turn_on(self, request, queryset):
        return self._toggle(request, queryset, on=True)

    @admin.action(description="Turn off (release held deliveries)")
    def turn_off(self, request, queryset):
        return self._toggle(request, queryset, on=False)


@admin.register(Sender)
class SenderAdmin(admin.ModelAdmin):
    list_display = (
        "key",
        "channel",
        "rate_per_second",
        "max_queue_hours",
        "next_slot_at",
        "paused_until",
    )
    list_filter = ("channel",)
    search_fields = ("key",)
    list_editable = ("rate_per_second",)
    readonly_fields = ("next_slot_at", "paused_until")
    actions = ["restart_pace"]

    @admin.action(
        description="Restart pacing from now (clear the next slot and any pause)",
        permissions=["change"],
    )
    def restart_pace(self, request, queryset):
        now = timezone.now()
        ahead = queryset.filter(Q(next_slot_at__gt=now) | Q(paused_until__gt=now))
        if not confirmed(request):
            senders = list(ahead)
            return confirm_page(
                self,
                request,
                queryset,
                action="restart_pace",
                title=f"Restart pacing of {len(senders)} sender(s)",
                summary=(
                    "Their next sends get slots from now on, at their rate, instead of waiting "
                    "for the slot or pause shown; the deliveries they hold for a slot are due "
                    "again, in their order. Use it when the slot is wrong, for example after "
                    "`dispatch_due --at` a time ahead of the clock. A provider's slow-down "
                    "(429) pause is lifted too: the provider may refuse again."
                ),
                items=[
                    f"{s.key}: next slot {s.next_slot_at or '-'}, paused until "
                    f"{s.paused_until or '-'}"
                    for s in senders
                ],
                confirm_label="Yes, restart from now",
            )
        senders, due_again = pacing.sender_restart(
            keys=list(queryset.values_list("key", flat=True)),
            by=request.user.get_username(),
            now=now,
        )
        if not senders:
            self.message_user(
                request,
                "None of the selected senders has a next slot or pause ahead of the clock: "
                "nothing to restart.",
                messages.WARNING,
            )
            return None
        self.message_user(
            request,
            f"{senders} sender(s) pace from now; {due_again} delivery(ies) waiting for a slot "
            "are due again.",
        )
        return None


class BreakerTransitionInline(ReadOnlyInline):
    model = BreakerTransition
    fields = ("at", "from_state", "to_state", "reason")
    readonly_fields = fields
    verbose_name_plural = "History"


@admin.register(ProviderBreaker)
class ProviderBreakerAdmin(admin.ModelAdmin):
    list_display = (
        "provider",
        "state_badge",
        "consecutive_failures",
        "threshold",
        "opened_at",
        "last_error",
    )
    list_filter = ("state",)
    readonly_fields = ("provider", "state", "consecutive_failures", "opened_at", "last_error")
    fields = readonly_fields + ("threshold", "cooloff_seconds")
    inlines = [BreakerTransitionInline]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # Deleting one took its history of trips with it; dispatch makes it again anyway.
        return False

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj):
        colour = {"closed": "sent", "open": "failed", "half_open": "unknown"}[obj.state]
        return badge(colour, obj.get_state_display())


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    list_display = ("address", "channel", "reason", "source", "created_by", "created_at")
    list_filter = ("channel", "reason")
    search_fields = ("address", "source")
    date_hierarchy = "created_at"
    fields = ("address", "channel", "reason", "source")

    def get_readonly_fields(self, request, obj=None):
        return self.fields if obj else ()

    # Deleting lifts the suppression: audited, with what it was (Admin → Audit entries).
    def delete_model(self, request, obj):
        unsuppress([obj], by=request.user.username, now=timezone.now())

    def delete_queryset(self, request, queryset):
        unsuppress(queryset, by=request.user.username, now=timezone.now())

    def save_model(self, request, obj, form, change):
        if change:
            return
        # An existing entry (and its first reason) stays as it is; the page then shows it.
        obj.pk = suppress(
            address=obj.address,
            channel=obj.channel,
            reason=obj.reason,
            source=obj.source or "added in the admin",
            by=request.user.username,
            now=timezone.now(),
        ).pk


@admin.register(UnmatchedProviderEvent)
class UnmatchedProviderEventAdmin(KeptRecordAdmin):
    """Tracking callbacks for message ids not (yet) known: matched once the id is recorded."""

    list_display = ("received_at", "provider", "provider_message_id", "kind", "matched_delivery")
    list_filter = ("provider", "kind", ("matched_delivery", admin.EmptyFieldListFilter))
    search_fields = ("provider_message_id",)
    date_hierarchy = "received_at"
    readonly_fields = [f.name for f in UnmatchedProviderEvent._meta.fields if f.name != "id"]

    def has_add_permission(self, request):
        return False


@admin.register(ProviderReport)
class ProviderReportAdmin(KeptRecordAdmin):
    """Tracking reports as the webhooks stored them, and what applying each one did."""

    list_display = ("received_at", "provider", "kind", "provider_message_id", "outcome")
    list_filter = ("provider", "kind", "outcome", ("processed_at", admin.EmptyFieldListFilter))
    search_fields = ("provider_message_id", "provider_event_id")
    date_hierarchy = "received_at"
    readonly_fields = [
        f.name for f in ProviderReport._meta.fields if f.name not in ("id", "claim_token")
    ]
    exclude = ("claim_token",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# Batch notification screens (runs, proposals, customers) live in their own module.
from notifications import batch_admin  # noqa: E402, F401
