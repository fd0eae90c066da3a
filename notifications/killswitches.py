"""Kill switches: while one is on, matching deliveries stay scheduled and are not claimed."""

from datetime import datetime

from django.db import transaction
from django.db.models import Q

from notifications.models import (
    HIGH_RISK_LEVEL,
    AuditEntry,
    Delivery,
    KillSwitch,
    KillSwitchChange,
)

HIGH_RISK_OPS = "high_risk_ops"


def active_switches() -> list[KillSwitch]:
    return list(KillSwitch.objects.filter(is_on=True).select_related("workflow"))


def frozen_filter(switches: list[KillSwitch]) -> Q | None:
    """A filter matching the deliveries the switches freeze (None: nothing frozen)."""
    frozen = Q(pk__in=[])
    for switch in switches:
        if switch.scope == KillSwitch.Scope.EVERYTHING:
            # Every row: an empty Q() would match all in a filter but exclude nothing, and
            # dispatch excludes what is frozen (an "everything" switch held nothing).
            return Q(pk__isnull=False)
        if switch.scope == KillSwitch.Scope.CHANNEL:
            frozen |= Q(channel=switch.channel)
        elif switch.scope == KillSwitch.Scope.WORKFLOW:
            frozen |= Q(workflow_run__workflow_id=switch.workflow_id)
        elif switch.scope == KillSwitch.Scope.HIGH_RISK:
            frozen |= Q(workflow_run__workflow__risk_level__gte=HIGH_RISK_LEVEL)
    return frozen if switches else None


def switch_for(delivery: Delivery, switches: list[KillSwitch]) -> KillSwitch | None:
    """The first switch that freezes this delivery, if any."""
    workflow = delivery.workflow_run.workflow if delivery.workflow_run_id else None
    Scope = KillSwitch.Scope
    for switch in switches:
        if switch.scope == Scope.EVERYTHING:
            return switch
        if switch.scope == Scope.CHANNEL and switch.channel == delivery.channel:
            return switch
        if workflow is None:
            continue
        if switch.scope == Scope.WORKFLOW and switch.workflow_id == workflow.id:
            return switch
        if switch.scope == Scope.HIGH_RISK and workflow.risk_level >= HIGH_RISK_LEVEL:
            return switch
    return None


def blocks_launches(switch: KillSwitch) -> bool:
    """A switch of the high-risk scope (high_risk_ops, whatever it is called) also blocks
    every launch of a batch notification while it is on."""
    return switch.scope == KillSwitch.Scope.HIGH_RISK


def launch_blockers() -> list[str]:
    """The names of the switches on now that block launches."""
    return list(
        KillSwitch.objects.filter(is_on=True, scope=KillSwitch.Scope.HIGH_RISK)
        .order_by("name")
        .values_list("name", flat=True)
    )


def killswitch_set(*, switch: KillSwitch, on: bool, by: str, reason: str, now: datetime) -> bool:
    """Turn a switch on or off, in its own history and the audit trail. Returns False if it
    already was."""
    with transaction.atomic():
        changed = KillSwitch.objects.filter(pk=switch.pk, is_on=not on).update(
            is_on=on, reason=reason, changed_by=by, changed_at=now
        )
        if changed:
            KillSwitchChange.objects.create(
                switch=switch, turned_on=on, by=by, reason=reason, at=now
            )
            AuditEntry.objects.create(
                at=now,
                by=by,
                action=f"killswitch_{'on' if on else 'off'}",
                target=f"killswitch:{switch.name}",
                detail={"reason": reason, "scope": switch.scope},
            )
    if changed and not on:
        from notifications.outbox import kick_dispatch_on_commit

        kick_dispatch_on_commit()
    return bool(changed)
