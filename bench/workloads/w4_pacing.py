"""Workload 4 — pacing fidelity: a 1,000-message burst through each of three SMS senders capped
at 1/s, 3/s and 80/s, all due at once, on a ManualClock (time is moved, never slept).

The loop is what production runs: `dispatch_due`, then the next run when the dispatch task
would hint it (`countdown=max(1 s, time to the next due delivery)`, at most the minute
sweep). Each message's handover time is its `sent_at`. Targets per sender: no sliding
one-second window holds more than the cap; at least 95 % of the cap is used over the burst.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from bench.db import wipe
from bench.harness import Workload, measure
from bench.workloads.common import NOW, Context

CAPS = {"+15005550001": 1.0, "+15005550003": 3.0, "+15005550080": 80.0}


def run(ctx: Context) -> Workload:
    from notifications.dispatch import ManualClock, dispatch_due, next_due_in
    from notifications.models import Delivery

    n = ctx.size(1_000, minimum=100)
    result = Workload(
        4, "Pacing fidelity", f"{n:,}-message burst per sender capped at 1/s, 3/s and 80/s"
    )
    wipe()
    _burst(n)
    clock = ManualClock(NOW)
    rounds = 0
    total = n * len(CAPS)
    with measure("Herald: dispatch_due on a ManualClock", total, "messages") as herald:
        while True:
            rounds += 1
            dispatch_due(now=clock.now(), clock=clock)
            wait = next_due_in(now=clock.now())
            if wait is None:
                break
            clock.sleep_until(clock.now() + timedelta(seconds=max(1.0, min(wait, 60.0))))
    result.herald = herald
    sent = defaultdict(list)
    for sender, at in Delivery.objects.filter(status="sent").values_list("sender", "sent_at"):
        sent[sender].append(at)
    assert sum(map(len, sent.values())) == total, {k: len(v) for k, v in sent.items()}
    span = (clock.now() - NOW).total_seconds()
    herald.note = f"{rounds} dispatch rounds over {span:,.0f} s of moved time"
    result.notes.append(herald.note + " (wall time is the bench's, not the burst's)")
    for number, cap in CAPS.items():
        times = sorted(sent[f"sms:{number}"])
        busiest = _busiest_second(times)
        used = len(times) / (cap * ((times[-1] - times[0]).total_seconds() + 1 / cap))
        result.check(
            f"{cap:g}/s busiest 1-s window",
            f"≤ {cap:g}",
            f"{busiest}",
            busiest <= cap,
        )
        result.check(f"{cap:g}/s share of the cap used", "≥ 95 %", f"{used:.1%}", used >= 0.95)
    return result


def _busiest_second(times) -> int:
    """The most messages in any half-open window [t, t + 1 s)."""
    busiest, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= timedelta(seconds=1):
            first += 1
        busiest = max(busiest, last - first + 1)
    return busiest


def _burst(n: int) -> None:
    from notifications.models import Delivery, MessageTemplate, Notification, Sender

    Sender.objects.bulk_create(
        [
            Sender(key=f"sms:{number}", channel="sms", rate_per_second=cap)
            for number, cap in CAPS.items()
        ]
    )
    template = MessageTemplate.objects.create(name="burst", channel="sms", body="Alert {{ n }}")
    notification = Notification.objects.create(template=template, origin="bench")
    Delivery.objects.bulk_create(
        [
            Delivery(
                notification=notification,
                recipient_key=f"customer:{i}",
                channel="sms",
                address=f"+1415555{i:04d}",
                body=f"Alert {i}",
                payload={"from": number},
                sender=f"sms:{number}",
                idempotency_key=f"burst:{number}:{i}",
                send_at=NOW,
                created_at=NOW,
            )
            for i in range(n)
            for number in CAPS  # interleaved: every claim holds all three senders
        ],
        batch_size=1000,
    )
