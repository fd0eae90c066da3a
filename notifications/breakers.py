"""Provider circuit breakers, shared by every worker through the database.

closed --N consecutive transient failures--> open --cool-off--> half-open (one trial call)
half-open --success--> closed;  half-open --failure--> open again.
While open, no call is made to the provider: its deliveries wait, or go to their fallback.
"""

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F

from notifications.models import BreakerTransition, ProviderBreaker

State = ProviderBreaker.State


def breaker_key(channel: str, provider: str) -> str:
    return f"{channel}:{provider}"


def get_breaker(key: str) -> ProviderBreaker:
    breaker, _ = ProviderBreaker.objects.get_or_create(
        provider=key,
        defaults={
            "threshold": settings.BREAKER_THRESHOLD,
            "cooloff_seconds": settings.BREAKER_COOLOFF_SECONDS,
        },
    )
    return breaker


def _move(breaker: ProviderBreaker, to_state: str, *, now: datetime, reason: str, **fields) -> bool:
    """Conditional update from the state we read; False if another worker moved it first."""
    with transaction.atomic():
        moved = ProviderBreaker.objects.filter(pk=breaker.pk, state=breaker.state).update(
            state=to_state, **fields
        )
        if moved:
            BreakerTransition.objects.create(
                breaker=breaker, at=now, from_state=breaker.state, to_state=to_state, reason=reason
            )
    return bool(moved)


def trial_at(breaker: ProviderBreaker, *, now: datetime) -> datetime:
    """When an open breaker's cool-off ends and the next dispatch round may make its one
    trial call."""
    return (breaker.opened_at or now) + timedelta(seconds=breaker.cooloff_seconds)


def gate(key: str, *, now: datetime, anything_due: Callable[[], bool] | None = None) -> str:
    """May this worker call the provider now? 'closed' (yes), 'trial' (yes, exactly one
    call, this worker holds the trial) or 'open' (no). `anything_due` says whether there is
    a call to try: without one, the trial is not taken (it was taken and wasted every
    cool-off, "half_open → half_open" in the history, while nothing was due)."""
    breaker = get_breaker(key)
    if breaker.state == State.CLOSED:
        return "closed"
    if now < trial_at(breaker, now=now):
        return "open"
    if anything_due is not None and not anything_due():
        return "open"
    # Cool-off over (or a trial that never reported back): one worker wins the trial.
    if _move(
        breaker,
        State.HALF_OPEN,
        now=now,
        reason="cool-off over: one trial call",
        trial_token=uuid.uuid4(),
        opened_at=now,
    ):
        return "trial"
    return "open"


def has_failures(key: str) -> bool:
    """A failure count or a state a success would have to clear."""
    return (
        ProviderBreaker.objects.filter(provider=key)
        .exclude(state=State.CLOSED, consecutive_failures=0)
        .exists()
    )


def record_success(key: str, *, now: datetime) -> None:
    breaker = get_breaker(key)
    if breaker.state != State.CLOSED:
        _move(breaker, State.CLOSED, now=now, reason="trial call succeeded", consecutive_failures=0)
    elif breaker.consecutive_failures:
        ProviderBreaker.objects.filter(pk=breaker.pk).update(consecutive_failures=0)


def record_failure(key: str, *, now: datetime, error: str) -> bool:
    """Count a transient failure; returns True when the breaker is (now) open."""
    breaker = get_breaker(key)
    ProviderBreaker.objects.filter(pk=breaker.pk).update(
        consecutive_failures=F("consecutive_failures") + 1, last_error=error[:2000]
    )
    breaker.refresh_from_db()
    if breaker.state == State.HALF_OPEN:
        _move(breaker, State.OPEN, now=now, reason=f"trial failed: {error}"[:300], opened_at=now)
        return True
    if breaker.state == State.CLOSED and breaker.consecutive_failures >= breaker.threshold:
        _move(
            breaker,
            State.OPEN,
            now=now,
            reason=f"{breaker.consecutive_failures} consecutive failures; last: {error}"[:300],
            opened_at=now,
        )
        return True
    return breaker.state == State.OPEN
