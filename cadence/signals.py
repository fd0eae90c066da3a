"""What the cadence app tells the engine when staff change who may be contacted how often.

`cadence_changed` is sent (by the admin) after a persona's cadence, a stakeholder's own
overrides, persona or time zone were saved, or a persona was deleted, with
`stakeholder_ids` (the people whose cadence it may have loosened), `now` and `why` (how the
change reads in a delivery's reason, e.g. "persona Manager's cadence was changed by admin").
The engine re-plans what it queued for them under the old cadence, and returns how many
deliveries it moved (this app imports nothing of Herald's: it only hears the count back).
"""

from django.dispatch import Signal

cadence_changed = Signal()


def tell_cadence_changed(sender, *, stakeholder_ids, now, why) -> int | None:
    """Send `cadence_changed`; how many queued deliveries were re-planned (None: nobody
    listens, the engine is not installed)."""
    answers = [
        answer
        for _, answer in cadence_changed.send(
            sender=sender, stakeholder_ids=list(stakeholder_ids), now=now, why=why
        )
        if isinstance(answer, int)
    ]
    return sum(answers) if answers else None
