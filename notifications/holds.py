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
    # kill_switch, halted, cancel_when_due, suppressed, breaker, paced, scheduled, due,
    # in_flight
    kind: str
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
    # delivery id -> what the address checks of dispatch would decide about it when due
    # (a stakeholder made inactive, deleted or re-addressed since it was queued), for the
    # deliveries `read_addresses` was given; any other delivery's is read on its own.
    addresses: dict | None = None

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

    def read_addresses(self, deliveries, *, now: datetime) -> None:
        """Read what the address checks say about these deliveries (the waiting ones):
        one query for the stakeholders among them."""
        from notifications.dispatch import address_decisions

        waiting = [d for d in deliveries if d.status == Delivery.Status.SCHEDULED]
        self.addresses = {d.id: None for d in waiting} | address_decisions(waiting, now)

    def address_decision(self, delivery: Delivery, *, now: datetime):
        if self.addresses is not None and delivery.id in self.addresses:
            return self.addresses[delivery.id]
        from notifications.dispatch import address_decisions

        return address_decisions([delivery], now).get(delivery.id)

    def suppression(self, delivery: Delivery):
        key = (delivery.address, delivery.channel)
        if self.suppressions is not None and key in self.suppressions:
            return self.suppressions[key]
        return tracking.is_suppressed(delivery.address, delivery.channel)


def explain(
    delivery: Delivery, *, now: datetime, context: HoldContext | None = None
) -> Hold | None:
    """The hold on a delivery that is still to be sent (None once it is decided)."""
    if delivery.status == Delivery.Status.SENDING:
        return Hold("in_flight", "being handed to the provider", delivery.claimed_at)
    if delivery.status != Delivery.Status.SCHEDULED:
        return None
    context = context or HoldContext.load()
    # What dispatch will find when it comes due, decided then (its stakeholder made
    # inactive, deleted or re-addressed since it was queued): said now, since it makes the
    # reason it was queued with stale.
    then = context.address_decision(delivery, now=now)
    after = f"; then it {_when_due(then, delivery)}" if then else ""
    switch = switch_for(delivery, context.switches)
    if switch:
        return Hold(
            "kill_switch",
            f"frozen by kill switch {switch.name}"
            + (f": {switch.reason}" if switch.reason else "")
            + after,
            None,
        )
    if delivery.workflow_run_id in context.halted_runs:
        return Hold("halted", f"its run was halted: resume or cancel it{after}", None)
    if then is not None and then.action == "cancel":
        return Hold("cancel_when_due", _when_due(then, delivery), max(delivery.send_at, now))
    hold = _waiting(delivery, now=now, context=context, readdressed=then is not None)
    if then is None:
        return hold
    return Hold(hold.kind, f"{hold.reason}; {_when_due(then, delivery)}", hold.expected_at)


def _when_due(decision, delivery: Delivery) -> str:
    """An address check's decision as what will happen when the delivery comes due."""
    _, _, why = decision.reason.partition(": ")
    if decision.action == "cancel":
        return f"will be cancelled when due ({why})"
    if decision.action == "fallback":
        return (
            f"will go by {delivery.fallback_channel} to {delivery.fallback_address} when "
            f"due ({why})"
        )
    return f"will go to the corrected address when due ({why})"


def _waiting(delivery: Delivery, *, now: datetime, context: HoldContext, readdressed: bool):
    """The hold on a scheduled delivery that is neither frozen nor halted (`readdressed`:
    it will go to another address, whose suppression dispatch checks then)."""
    from notifications.dispatch import provider_of

    suppression = None if readdressed else context.suppression(delivery)
    if suppression and delivery.fallback_channel and delivery.fallback_address:
        # Dispatch sends it by its fallback instead (_skip_suppressed), whatever holds its
        # own channel; the copy's address is checked when the copy is claimed.
        return Hold(
            "suppressed",
            f"its address is suppressed ({suppression.get_reason_display()}): will go by "
            f"{delivery.fallback_channel} to {delivery.fallback_address} when due",
            max(delivery.send_at, now),
        )
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
