"""Why a delivery has not been sent yet, and when it is expected to go: the answer staff
look for on the delivery pages. Reads the same rules dispatch applies."""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from notifications import breakers, tracking
from notifications.killswitches import active_switches, switch_for
from notifications.models import Delivery, ProviderBreaker, Sender


@dataclass(frozen=True)
class Hold:
    kind: str  # kill_switch, halted, suppressed, breaker, paced, scheduled, due, in_flight
    reason: str
    expected_at: datetime | None  # None: not until a person acts


@dataclass
class HoldContext:
    """What `explain` needs, read once for a whole page of deliveries."""

    switches: list
    breakers: dict[str, ProviderBreaker]
    paused: dict[str, datetime]
    halted_runs: frozenset[int] = frozenset()
    # (address, channel) -> its suppression or None, for the deliveries `read_suppressions`
    # was given; any other delivery's is read on its own.
    suppressions: dict | None = None

    @classmethod
    def load(cls) -> "HoldContext":
        from notifications.dispatch import halted_run_ids

        return cls(
            halted_runs=frozenset(halted_run_ids()),
            switches=active_switches(),
            breakers={b.provider: b for b in ProviderBreaker.objects.exclude(state="closed")},
            paused={
                s.key: s.paused_until for s in Sender.objects.filter(paused_until__isnull=False)
            },
        )

    def read_suppressions(self, deliveries) -> None:
        """Read the suppressions of these deliveries' addresses: one query per channel."""
        by_channel = defaultdict(set)
        for delivery in deliveries:
            if delivery.status == Delivery.Status.SCHEDULED:
                by_channel[delivery.channel].add(delivery.address)
        self.suppressions = {}
        for channel, addresses in by_channel.items():
            found = tracking.suppressions_for(list(addresses), channel)
            for address in addresses:
                self.suppressions[(address, channel)] = found.get(address)

    def suppression(self, delivery: Delivery):
        key = (delivery.address, delivery.channel)
        if self.suppressions is not None and key in self.suppressions:
            return self.suppressions[key]
        return tracking.is_suppressed(delivery.address, delivery.channel)


def explain(
    delivery: Delivery, *, now: datetime, context: HoldContext | None = None
) -> Hold | None:
    """The hold on a delivery that is still to be sent (None once it is decided)."""
    from notifications.dispatch import provider_of

    if delivery.status == Delivery.Status.SENDING:
        return Hold("in_flight", "being handed to the provider", delivery.claimed_at)
    if delivery.status != Delivery.Status.SCHEDULED:
        return None
    context = context or HoldContext.load()
    switch = switch_for(delivery, context.switches)
    if switch:
        return Hold(
            "kill_switch",
            f"frozen by kill switch {switch.name}"
            + (f": {switch.reason}" if switch.reason else ""),
            None,
        )
    if delivery.workflow_run_id in context.halted_runs:
        return Hold("halted", "its run was halted: resume or cancel it", None)
    suppression = context.suppression(delivery)
    if suppression:
        return Hold("suppressed", f"will be skipped: {suppression.get_reason_display()}", None)
    breaker = context.breakers.get(
        breakers.breaker_key(delivery.channel, provider_of(delivery.channel))
    )
    if breaker and breaker.state == ProviderBreaker.State.OPEN:
        trial = breakers.trial_at(breaker, now=now)
        fallback = (
            f"; goes by {delivery.fallback_channel} instead" if delivery.fallback_channel else ""
        )
        return Hold(
            "breaker",
            f"provider {breaker.provider} breaker open; trial call at {trial:%H:%M:%S}{fallback}",
            max(trial, delivery.send_at),
        )
    paused_until = context.paused.get(delivery.sender)
    if paused_until and paused_until > now:
        return Hold("paced", f"provider asked {delivery.sender} to wait", paused_until)
    if delivery.send_at > now:
        return Hold("scheduled", delivery.status_reason or "scheduled for later", delivery.send_at)
    return Hold("due", "due now: the next dispatch round sends it", now)
