"""The admin as a whole (issue 8): every list opens with the demo world loaded and offers the
filters or search staff reach for; records are read-only; every field explains itself;
risky actions ask first and say what will happen and to how many."""

import os
from datetime import timedelta
from io import StringIO

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.utils import flatten_fieldsets
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from config.schedules import SCHEDULES, setup_schedules
from notifications.models import (
    AuditEntry,
    BatchAttachment,
    Delivery,
    DeliveryEvent,
    Event,
    KillSwitch,
    Workflow,
    WorkflowRun,
)
from notifications.staged_files import sweep_staged
from production_runs.activation import DISCOVER_TASK
from production_runs.models import ScheduleChange
from tests.notifications.factories import CustomerFactory, DeliveryFactory, WorkflowRunFactory

pytestmark = pytest.mark.django_db

APPS = ("notifications", "cadence", "kiosks", "production_runs")
# Lists without filters or search: the reminder settings are a single row.
NOTHING_TO_FILTER = {"production_runs.ReminderSettings"}


def herald_admins():
    return [
        (model, model_admin)
        for model, model_admin in admin.site._registry.items()
        if model._meta.app_label in APPS
    ]


def test_every_admin_page_opens_with_the_demo_world(admin_client):
    call_command("seed_demo", stdout=StringIO(), stderr=StringIO())
    broken = []
    for model, model_admin in herald_admins():
        info = (model._meta.app_label, model._meta.model_name)
        changelist = reverse("admin:{}_{}_changelist".format(*info))
        urls = [changelist]
        if model_admin.search_fields:
            urls.append(f"{changelist}?q=a")
            urls.append(f"{changelist}?q=12")
        obj = model._default_manager.first()
        if obj is not None:
            urls.append(reverse("admin:{}_{}_change".format(*info), args=[obj.pk]))
        for url in urls:
            status = admin_client.get(url).status_code
            if status not in (200, 302):
                broken.append((url, status))
    assert not broken


def test_every_list_has_filters_or_search():
    bare = [
        model._meta.label
        for model, model_admin in herald_admins()
        if not (model_admin.list_filter or model_admin.search_fields)
        and model._meta.label not in NOTHING_TO_FILTER
    ]
    assert not bare


@pytest.mark.parametrize(
    "label",
    [
        "notifications.DeliveryEvent",
        "notifications.Event",
        "notifications.AuditEntry",
        "notifications.EventHandling",
        "notifications.RecordedMessage",
        "notifications.ReflexionEntry",
        "notifications.VerifyCheck",
        "notifications.ProviderReport",
        "notifications.UnmatchedProviderEvent",
        "kiosks.Heartbeat",
        "kiosks.MoraleResponse",
        "production_runs.ScheduleChange",
        "production_runs.TemplateVariantStatus",
    ],
)
def test_logs_events_and_audits_are_read_only(label, rf, admin_user):
    model = apps.get_model(label)
    model_admin = admin.site._registry[model]
    request = rf.get("/")
    request.user = admin_user
    assert not model_admin.has_add_permission(request)
    editable = set(model_admin.get_fields(request)) - set(model_admin.get_readonly_fields(request))
    assert not editable or not model_admin.has_change_permission(request)


def test_a_sent_delivery_and_the_kiosk_state_are_read_only(rf, admin_user):
    request = rf.get("/")
    request.user = admin_user
    deliveries = admin.site._registry[Delivery]
    shown = flatten_fieldsets(deliveries.get_fieldsets(request))
    assert set(shown) <= set(deliveries.get_readonly_fields(request))
    from kiosks.models import Kiosk

    kiosks = admin.site._registry[Kiosk]
    assert {"charging", "battery_level", "last_heartbeat_at"} <= set(
        kiosks.get_readonly_fields(request)
    )


def test_every_field_of_herald_explains_itself_in_a_help_text():
    missing = [
        f"{model._meta.label}.{field.name}"
        for app in APPS
        for model in apps.get_app_config(app).get_models()
        for field in model._meta.get_fields()
        if getattr(field, "concrete", False) and not field.auto_created and not field.help_text
    ]
    assert not missing


def test_the_lists_staff_dig_through_have_a_date_hierarchy():
    for label in (
        "notifications.Delivery",
        "notifications.DeliveryEvent",
        "notifications.Event",
        "notifications.AuditEntry",
        "notifications.WorkflowRun",
        "notifications.ProposedAction",
        "kiosks.Heartbeat",
        "production_runs.ProductionRun",
        "production_runs.ScheduleChange",
    ):
        assert admin.site._registry[apps.get_model(label)].date_hierarchy, label


# --- risky actions ask first ---------------------------------------------------------------


FORM = {
    "customer_cohort_filter": "bid=B5875",
    "subject": "Holiday schedule for {{ customer_name }}",
    "body_template": "Dear {{ customer_name }},\nwe close on 24 December.",
}


def calendar_pdf():
    """A fresh upload of the same small PDF (an upload is read once)."""
    return SimpleUploadedFile("calendar.pdf", b"%PDF-1.4 demo", content_type="application/pdf")


def test_launch_confirms_and_keeps_the_attachment_chosen_before(admin_client, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    CustomerFactory.create_batch(2)
    upload = calendar_pdf()
    page = admin_client.post(
        reverse("admin:batch_new"), {**FORM, "_launch": "1", "attachments": upload}
    )
    text = page.content.decode()
    assert "Launching stages a batch run for 2 recipient(s)" in text
    assert "calendar.pdf" in text and not WorkflowRun.objects.exists()
    staged = page.context["hidden"]
    names = [value for name, value in staged if name == "staged_attachment"]
    assert len(names) == 1 and default_storage.exists(names[0])

    admin_client.post(
        reverse("admin:batch_new"), {**dict(staged), "staged_attachment": names, "post": "yes"}
    )

    run = WorkflowRun.objects.get()
    attachment = BatchAttachment.objects.get(workflow_run=run)
    assert attachment.name == "calendar.pdf" and attachment.mimetype == "application/pdf"
    assert attachment.file.read() == b"%PDF-1.4 demo"
    assert not default_storage.exists(names[0])  # the staged copy is gone


def test_an_attachment_chosen_before_a_preview_is_kept_for_the_launch(
    admin_client, settings, tmp_path
):
    """The preview reloads the page, whose file field comes back empty: the file chosen
    before it was lost and the launch said 'attachments: none'."""
    settings.MEDIA_ROOT = str(tmp_path)
    CustomerFactory.create_batch(2)
    upload = calendar_pdf()
    page = admin_client.post(
        reverse("admin:batch_new"), {**FORM, "_preview": "1", "attachments": upload}
    )
    text = page.content.decode()
    assert "Attached already (kept from your last submit): calendar.pdf." in text
    [(name, _)] = page.context["staged"]
    assert default_storage.exists(name)

    confirm = admin_client.post(
        reverse("admin:batch_new"), {**FORM, "_launch": "1", "staged_attachment": [name]}
    )
    assert ("attachments", "calendar.pdf") in confirm.context["details"]
    hidden = confirm.context["hidden"]
    admin_client.post(
        reverse("admin:batch_new"),
        {
            **dict(hidden),
            "staged_attachment": [v for k, v in hidden if k == "staged_attachment"],
            "post": "yes",
        },
    )
    attachment = BatchAttachment.objects.get(workflow_run=WorkflowRun.objects.get())
    assert (attachment.name, attachment.file.read()) == ("calendar.pdf", b"%PDF-1.4 demo")
    assert not default_storage.exists(name)


def test_files_of_a_launch_never_confirmed_are_swept_a_day_later(admin_client, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    CustomerFactory()
    chosen = {}
    for label in ("abandoned", "fresh"):
        upload = SimpleUploadedFile(f"{label}.pdf", b"%PDF-1.4", content_type="application/pdf")
        page = admin_client.post(
            reverse("admin:batch_new"), {**FORM, "_launch": "1", "attachments": upload}
        )
        [chosen[label]] = [v for k, v in page.context["hidden"] if k == "staged_attachment"]
    (tmp_path / "batch-staging" / "notes.txt").write_text("not a staged file")  # left alone
    now = timezone.now()
    day_ago = (now - timedelta(hours=25)).timestamp()
    os.utime(tmp_path / chosen["abandoned"], (day_ago, day_ago))

    assert sweep_staged(now=now) == 1
    assert not default_storage.exists(chosen["abandoned"])
    assert not (tmp_path / chosen["abandoned"]).parent.exists()  # its folder too
    assert default_storage.exists(chosen["fresh"])  # its page may still be open
    assert (tmp_path / "batch-staging" / "notes.txt").exists()
    assert sweep_staged(now=now) == 0
    assert not WorkflowRun.objects.exists()


@pytest.mark.parametrize(
    "name",
    ["../secret.txt", f"batch-staging/{'a' * 32}/..", f"batch-staging/{'b' * 32}/gone.pdf"],
)
def test_a_staged_attachment_that_is_not_kept_refuses_the_launch(
    admin_client, settings, tmp_path, name
):
    """A forged name, or a file swept after 24 hours: the launch does not go without it."""
    settings.MEDIA_ROOT = str(tmp_path)
    (tmp_path / "secret.txt").write_text("not yours")
    CustomerFactory()
    page = admin_client.post(
        reverse("admin:batch_new"),
        {**FORM, "_launch": "1", "post": "yes", "staged_attachment": name},
    ).content.decode()
    assert "A file chosen earlier is no longer kept (files wait 24 hours): choose it again." in page
    assert not BatchAttachment.objects.exists()
    assert not WorkflowRun.objects.exists()
    assert (tmp_path / "secret.txt").read_text() == "not yours"


def test_a_file_chosen_again_after_a_preview_is_attached_once(admin_client, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    CustomerFactory()

    upload = calendar_pdf
    page = admin_client.post(
        reverse("admin:batch_new"), {**FORM, "_preview": "1", "attachments": upload()}
    )
    [(name, _)] = page.context["staged"]
    again = admin_client.post(
        reverse("admin:batch_new"),
        {**FORM, "_preview": "1", "attachments": upload(), "staged_attachment": [name]},
    )
    assert again.context["staged"] == [(name, "calendar.pdf")]


def _aborted_run():
    run = WorkflowRunFactory(
        workflow=Workflow.objects.create(name="batch", type="batch_notify", risk_level=4),
        status="aborted",
        status_reason="circuit breaker: 5 consecutive failed sends",
    )
    DeliveryFactory.create_batch(2, workflow_run=run)
    DeliveryFactory(workflow_run=run, status="sent")
    return run


def test_resume_from_the_run_page_goes_through_a_confirmation(admin_client):
    run = _aborted_run()
    change = admin_client.get(
        reverse("admin:notifications_workflowrun_change", args=[run.id])
    ).content.decode()
    confirm_url = reverse("admin:batch_resume_confirm", args=[run.id])
    assert confirm_url in change
    page = admin_client.get(confirm_url).content.decode()
    assert f"Resuming run {run.id} sends its 2 unsent deliveries; the 1 recipient(s)" in page
    assert f'action="{reverse("batch_resume")}?run_id={run.id}"' in page
    run.refresh_from_db()
    assert run.status == "aborted"
    admin_client.post(f"{reverse('batch_resume')}?run_id={run.id}", {"post": "yes"})
    run.refresh_from_db()
    assert run.status == "running"


def test_cancel_from_the_run_page_goes_through_a_confirmation(admin_client):
    run = _aborted_run()
    url = reverse("admin:batch_cancel", args=[run.id])
    page = admin_client.get(url).content.decode()
    assert f"Cancelling run {run.id} stops it for good: 2 scheduled deliveries" in page
    admin_client.post(url)  # a post without the confirmation changes nothing
    run.refresh_from_db()
    assert run.status == "aborted"
    admin_client.post(url, {"post": "yes"})
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert Delivery.objects.filter(workflow_run=run, status="cancelled").count() == 2


def test_the_kill_switch_confirmation_counts_what_it_will_hold(admin_client):
    switch = KillSwitch.objects.create(name="high_risk_ops", scope="high_risk_ops")
    run = WorkflowRunFactory(
        workflow=Workflow.objects.create(name="risky", type="batch_notify", risk_level=4)
    )
    DeliveryFactory.create_batch(2, workflow_run=run, send_at=timezone.now() + timedelta(hours=1))
    DeliveryFactory()  # no workflow: not high-risk
    page = admin_client.post(
        reverse("admin:notifications_killswitch_changelist"),
        {"action": "turn_on", "_selected_action": [switch.pk]},
    ).content.decode()
    assert "2 scheduled deliveries are held right now" in page
    assert "every launch of a batch notification is blocked" in page


def test_the_reminder_schedule_is_disabled_only_after_a_confirmation(admin_client):
    setup_schedules(registered_tasks={spec.task for spec in SCHEDULES})
    PeriodicTask.objects.filter(task=DISCOVER_TASK).update(enabled=True)
    url = reverse("admin:production_runs_reminder_gate")
    page = admin_client.post(url, {"action": "disable", "reason": "partner holiday"})
    assert "Disabling the reminder schedule stops every scheduled" in page.content.decode()
    assert PeriodicTask.objects.get(task=DISCOVER_TASK).enabled
    admin_client.post(url, {"action": "disable", "reason": "partner holiday", "post": "yes"})
    assert not PeriodicTask.objects.get(task=DISCOVER_TASK).enabled
    assert ScheduleChange.objects.get().reason == "partner holiday"


def test_beat_task_activation_is_confirmed_and_the_reminders_go_by_their_gate(admin_client):
    setup_schedules(registered_tasks={spec.task for spec in SCHEDULES})
    PeriodicTask.objects.update(enabled=False)
    other = PeriodicTask.objects.exclude(task=DISCOVER_TASK).first()
    reminders = PeriodicTask.objects.get(task=DISCOVER_TASK)
    url = reverse("admin:django_celery_beat_periodictask_changelist")
    data = {"action": "enable_tasks", "_selected_action": [other.pk, reminders.pk]}

    page = admin_client.post(url, data, follow=True).content.decode()
    assert "Enable 1 periodic task(s)" in page and other.name in page
    assert "activation gate page" in page
    admin_client.post(url, {**data, "post": "yes"})

    assert PeriodicTask.objects.get(pk=other.pk).enabled
    assert not PeriodicTask.objects.get(pk=reminders.pk).enabled  # only through the gate
    form = admin_client.get(
        reverse("admin:django_celery_beat_periodictask_change", args=[reminders.pk])
    ).content.decode()
    assert 'name="enabled"' not in form


def test_retrying_failed_deliveries_says_how_many(admin_client):
    failed = DeliveryFactory.create_batch(3, status="failed", last_error="503")
    page = admin_client.post(
        reverse("admin:notifications_delivery_changelist"),
        {"action": "retry_failed", "_selected_action": [d.pk for d in failed]},
    ).content.decode()
    assert "Retrying schedules 3 failed deliveries again" in page
    assert "Yes, send 3 again" in page
    assert not Delivery.objects.filter(status="scheduled").exists()


def test_the_retry_confirmation_counts_only_what_it_will_send(admin_client):
    """It said "Yes, send 2 again" for two deliveries to a suppressed address, and named no
    customer marked inactive, while the retry then scheduled nothing."""
    from notifications.models import Suppression

    inactive = CustomerFactory(is_inactive=True)
    to_inactive = DeliveryFactory(
        status="failed", recipient_key=f"customer:{inactive.id}", address=inactive.email
    )
    suppressed = DeliveryFactory(status="failed", address="gone@school.example.org")
    Suppression.objects.create(address="gone@school.example.org", channel="email")
    sendable = DeliveryFactory(status="failed", last_error="503")
    page = admin_client.post(
        reverse("admin:notifications_delivery_changelist"),
        {
            "action": "retry_failed",
            "_selected_action": [to_inactive.pk, suppressed.pk, sendable.pk],
        },
    ).content.decode()
    assert "Yes, send 1 again" in page
    assert "Retrying schedules 1 failed deliveries again" in page
    assert "1 are to a customer marked inactive: they stay failed" in page
    assert "1 go to an address suppressed now: they stay failed" in page


def test_tracking_events_have_their_own_read_only_list(admin_client):
    delivery = DeliveryFactory(status="opened")
    DeliveryEvent.objects.create(delivery=delivery, kind="opened", provider_event_id="e1")
    page = admin_client.get(
        reverse("admin:notifications_deliveryevent_changelist"), {"kind__exact": "opened"}
    ).content.decode()
    assert delivery.address in page
    assert not AuditEntry.objects.exists() and not Event.objects.exists()


def test_the_dry_run_links_open_the_runs_it_counts(admin_client):
    from production_runs import demo

    demo.seed(timezone.now())
    page = admin_client.get(reverse("admin:production_runs_reminder_dry_run"))
    runs = reverse("admin:production_runs_productionrun_changelist")
    for key, _, count, link in page.context["rows"]:
        if not link:
            continue
        assert link.startswith(runs)
        listed = admin_client.get(link)
        assert listed.status_code == 200, key  # not a redirect to ?e=1
        assert listed.context["cl"].result_count == count, key


def test_the_sample_message_frame_holds_the_whole_email(admin_client):
    """The rendered HTML is marked safe; inside srcdoc="…" it must be escaped, or its first
    quote ends the attribute and the frame shows nothing."""
    CustomerFactory(company_name="Brooklyn Tech")
    page = admin_client.post(reverse("admin:batch_new"), {**FORM, "_preview": "1"}).content
    frame = page.decode().split('srcdoc="', 1)[1].split('"', 1)[0]
    assert frame.startswith("&lt;!doctype html&gt;") and "Brooklyn Tech" in frame
    assert "&lt;/html&gt;" in frame


def test_no_second_periodic_task_may_run_the_discoverer_around_its_gate(admin_client):
    setup_schedules(registered_tasks={spec.task for spec in SCHEDULES})
    crontab = PeriodicTask.objects.get(task=DISCOVER_TASK).crontab
    before = PeriodicTask.objects.count()
    response = admin_client.post(
        reverse("admin:django_celery_beat_periodictask_add"),
        {
            "name": "my reminders",
            "regtask": DISCOVER_TASK,
            "enabled": "on",
            "crontab": crontab.pk,
            "args": "[]",
            "kwargs": "{}",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.non_field_errors()
    assert "is the reminder schedule's task" in errors[0]
    assert PeriodicTask.objects.count() == before

    # Nor may another task be turned into it, or the schedule's own task into another.
    other = PeriodicTask.objects.exclude(task=DISCOVER_TASK).first()
    reminders = PeriodicTask.objects.get(task=DISCOVER_TASK)
    for task, to in ((other, DISCOVER_TASK), (reminders, other.task)):
        change = reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])
        form = {
            "name": task.name,
            "regtask": to,
            "crontab": task.crontab_id or "",
            "interval": task.interval_id or "",
            "args": "[]",
            "kwargs": "{}",
        }
        assert admin_client.post(change, form).status_code == 200
        task_before = task.task
        task.refresh_from_db()
        assert task.task == task_before


def test_the_discoverer_is_not_run_from_the_beat_task_list(admin_client):
    setup_schedules(registered_tasks={spec.task for spec in SCHEDULES})
    reminders = PeriodicTask.objects.get(task=DISCOVER_TASK)
    response = admin_client.post(
        reverse("admin:django_celery_beat_periodictask_changelist"),
        {"action": "run_tasks", "_selected_action": [reminders.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert "activation gate page" in page and "left as it is" in page
    assert "successfully run" not in page


def test_the_resume_page_says_when_a_kill_switch_keeps_the_run_frozen(admin_client):
    run = _aborted_run()
    confirm_url = reverse("admin:batch_resume_confirm", args=[run.id])
    assert "kill switch" not in admin_client.get(confirm_url).content.decode()
    KillSwitch.objects.create(name="stop email", scope="channel", channel="email", is_on=True)
    page = admin_client.get(confirm_url).content.decode()
    assert "But kill switch stop email is on: they stay frozen until it is turned off." in page


def test_a_search_longer_than_a_search_is_refused_clearly(admin_client):
    """SQLite answered a 60,000-character search with a 500 (LIKE pattern too complex)."""
    url = reverse("admin:notifications_delivery_changelist")
    assert admin_client.get(url, {"q": "x" * 1_000}).status_code == 200
    response = admin_client.get(url, {"q": "x" * 60_000})
    assert response.status_code == 400
    assert response.content.decode().startswith("The search is 60,000 characters long")


def test_selected_rows_that_are_not_numbers_are_refused_and_change_nothing(admin_client):
    delivery = DeliveryFactory(status="scheduled")
    response = admin_client.post(
        reverse("admin:notifications_delivery_changelist"),
        {"action": "cancel_scheduled", "_selected_action": [delivery.id, "abc"], "post": "yes"},
    )
    assert response.status_code == 400
    assert response.content.decode() == "The selected rows must be named by their numbers."
    delivery.refresh_from_db()
    assert delivery.status == "scheduled"
