"""Every periodic task Herald runs, in one place. `setup_schedules` upserts them by name:
a schedule that already exists is left as staff edited it in the admin."""

from dataclasses import dataclass

from celery import current_app
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

# Marks a schedule created before its task existed; enabled by a later run once it does.
WAITING_FOR_TASK = "waiting for its task to be installed"


@dataclass(frozen=True)
class Schedule:
    name: str
    task: str
    description: str
    every_seconds: int | None = None
    crontab: dict | None = None
    enabled: bool = True


SCHEDULES = [
    # Seed 003: the trigger evaluator checks kiosks every five minutes.
    Schedule(
        name="Evaluate triggers every 5 minutes",
        task="herald.evaluate_triggers",
        description="Runs every active trigger workflow: Layer 1 cooldowns, then deliveries.",
        every_seconds=300,
    ),
    # Seed 002: weekdays at 10:00 in India. The crontab carries its own time zone, so the
    # seed's pitfall (a container on UTC firing at 10:00 UTC) cannot happen. It starts
    # disabled: the admin enables it once every WhatsApp template variant is approved.
    Schedule(
        name="Discover production-run reminders (10:00 Asia/Kolkata, Mon-Fri)",
        task="herald.discover_reminders",
        description="Finds stalled production runs and emits one reminder event per run.",
        crontab={
            "minute": "0",
            "hour": "10",
            "day_of_week": "1-5",
            "day_of_month": "*",
            "month_of_year": "*",
            "timezone": "Asia/Kolkata",
        },
        enabled=False,
    ),
    # Invariant 1: the database is the outbox; this sweep finds due and stuck rows even
    # when a "look now" message was lost.
    Schedule(
        name="Dispatch due deliveries every minute",
        task="herald.dispatch_due",
        description="Claims due deliveries, sends them, retries transient failures.",
        every_seconds=60,
    ),
    # Event subscribers run after commit; this sweep retries failed handlings and picks up
    # any whose "look now" message was lost.
    Schedule(
        name="Handle pending events every minute",
        task="herald.handle_events",
        description="Runs event subscribers that are due or being retried.",
        every_seconds=60,
    ),
    # Files chosen on a batch launch whose confirmation page was left: gone after a day.
    Schedule(
        name="Sweep abandoned launch attachments hourly",
        task="herald.sweep_staged_attachments",
        description="Deletes files staged for a batch launch that was never confirmed, a day "
        "after they were chosen.",
        every_seconds=3600,
    ),
    # Seed 001: the verify cron wakes at :08 and :38 every hour.
    Schedule(
        name="Run verify checks at :08 and :38",
        task="herald.run_verify_checks",
        description="Runs pending verify checks whose window has passed.",
        crontab={
            "minute": "8,38",
            "hour": "*",
            "day_of_week": "*",
            "day_of_month": "*",
            "month_of_year": "*",
            "timezone": "UTC",
        },
    ),
]

# Only for the demo world: `seed_demo` creates it (never `setup_schedules`'s command), and
# staff can disable it in Admin → Periodic tasks like any other.
DEMO_SCHEDULES = [
    # Every 3 minutes: within the 5 minutes after which a kiosk counts as offline.
    Schedule(
        name="Demo: the demo kiosks report every 3 minutes",
        task="herald.demo_kiosk_heartbeats",
        description="Demo data only: the demo's kiosks (not the ones it made quiet, nor any "
        "other kiosk) send a heartbeat with their current state, so they do not all go "
        "offline minutes after make run.",
        every_seconds=180,
    ),
]


def _schedule_kwargs(spec: Schedule) -> dict:
    if spec.every_seconds is not None:
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=spec.every_seconds, period=IntervalSchedule.SECONDS
        )
        return {"interval": interval}
    crontab, _ = CrontabSchedule.objects.get_or_create(**spec.crontab)
    return {"crontab": crontab}


@transaction.atomic
def setup_schedules(*, registered_tasks=None, schedules=None) -> dict[str, str]:
    """Create the missing periodic tasks (of SCHEDULES, or the `schedules` given). Returns
    {name: created|unchanged|enabled|waiting}.

    A task whose code is not installed yet is created disabled and marked; a later run
    enables it once the task is registered (unless it is meant to start disabled).
    """
    if registered_tasks is None:
        current_app.loader.import_default_modules()  # autodiscovery is lazy outside a worker
        registered_tasks = current_app.tasks
    registered = set(registered_tasks)
    outcome = {}
    for spec in SCHEDULES if schedules is None else schedules:
        installed = spec.task in registered
        existing = PeriodicTask.objects.filter(name=spec.name).first()
        if existing is None:
            PeriodicTask.objects.create(
                name=spec.name,
                task=spec.task,
                description=spec.description if installed else WAITING_FOR_TASK,
                enabled=spec.enabled and installed,
                **_schedule_kwargs(spec),
            )
            outcome[spec.name] = "created" if installed else "waiting"
        elif existing.description == WAITING_FOR_TASK and installed:
            existing.description = spec.description
            existing.enabled = spec.enabled
            existing.save(update_fields=["description", "enabled"])
            outcome[spec.name] = "enabled" if spec.enabled else "installed"
        else:
            outcome[spec.name] = (
                "waiting" if existing.description == WAITING_FOR_TASK else "unchanged"
            )
    return outcome
