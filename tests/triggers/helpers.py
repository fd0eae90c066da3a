"""Building blocks of the trigger tests: a kiosk world, trigger workflows, and the doors the
system uses (the beat task, the dispatcher on a clock that stands still)."""

from datetime import UTC, datetime, timedelta

from django.utils import timezone

from kiosks.heartbeats import HeartbeatReport, heartbeat_record
from kiosks.models import Kiosk, Project
from notifications import dispatch
from notifications.dispatch import ManualClock
from notifications.models import Delivery
from notifications.tasks import evaluate_triggers_task
from notifications.trigger_models import TriggerEvent, TriggerSetup, TriggerWorkflow
from tests.notifications.factories import MessageTemplateFactory

DAY = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday


def at(hour: int, minute: int = 0, day: int = 0, second: int = 0) -> datetime:
    return DAY + timedelta(days=day, hours=hour, minutes=minute, seconds=second)


def minute(moment: datetime | None) -> datetime | None:
    """Sends of one dispatch round are paced at least a microsecond apart, and the minute
    sweep runs within the minute; the walkthroughs read in whole minutes."""
    return moment.replace(second=0, microsecond=0) if moment else moment


def tick() -> dict:
    """What beat runs every five minutes, at the (moved) current time."""
    return evaluate_triggers_task()


def dispatch_now() -> dispatch.DispatchReport:
    now = timezone.now()
    return dispatch.dispatch_due(now=now, clock=ManualClock(now))


def template(name: str, **fields):
    defaults = dict(
        name=name,
        channel="email",
        message_type="alert",
        subject="{{ summary }}",
        body="Hello {{ stakeholder_name }}: {{ summary }}",
        variables=["summary", "stakeholder_name"],
    )
    return MessageTemplateFactory(**{**defaults, **fields})


def trigger_workflow(
    *,
    name: str = "Kiosk Health Alert",
    events=("kiosk_health_status",),
    personas=(),
    stakeholders=(),
    event_options=None,
    **setup,
) -> TriggerWorkflow:
    workflow = TriggerWorkflow.objects.create(name=name)
    trigger_setup = TriggerSetup.objects.create(
        workflow=workflow, **{"include_project_stakeholders": False, **setup}
    )
    trigger_setup.audience_personas.set(personas)
    trigger_setup.audience_stakeholders.set(stakeholders)
    for event in events:
        TriggerEvent.objects.create(
            workflow=workflow,
            event=event,
            template=template(f"{name}: {event}"),
            **(event_options or {}).get(event, {}),
        )
    return workflow


def project(pk: int, name: str = "") -> Project:
    return Project.objects.create(pk=pk, name=name or f"Project {pk}")


def kiosk(pk: int, project: Project, **state) -> Kiosk:
    now = timezone.now()
    fields = {
        "battery_level": 90,
        "last_heartbeat_at": now,
        "created_at": now - timedelta(days=30),
        **state,
    }
    return Kiosk.objects.create(pk=pk, project=project, name=f"Kiosk #{pk}", **fields)


def reports(kiosk: Kiosk, *, charging=True, screen_state=True, battery_level=90, online=True):
    """The kiosk sends a heartbeat now with this state."""
    heartbeat_record(
        kiosk=kiosk,
        report=HeartbeatReport(
            charging=charging,
            screen_state=screen_state,
            battery_level=battery_level,
            connection_status=online,
        ),
        now=timezone.now(),
    )


def deliveries_of(person, **filters):
    return Delivery.objects.filter(recipient_key=person.recipient_key, **filters).order_by(
        "send_at", "id"
    )
