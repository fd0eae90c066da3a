"""discover_reminders --dry-run says what it would do, not what it did."""

import json
from io import StringIO

import pytest
from django.core.management import call_command

from notifications.models import Event
from tests.production_runs.factories import NOW, idle_run, pending_run

pytestmark = pytest.mark.django_db


def discover(*args) -> str:
    out = StringIO()
    call_command(
        "discover_reminders", "--at", NOW.isoformat(), *args, stdout=out, stderr=StringIO()
    )
    return out.getvalue()


def test_dry_run_text_says_would_be_reminded_and_would_emit():
    pending_run()
    idle_run()
    out = discover("--dry-run")
    assert "DRY RUN, nothing emitted" in out
    assert "would be reminded" in out and "would emit" in out
    assert "dispatched" not in out and "events emitted" not in out
    # Counts a dry run does not work out are not shown as zeros (it says "already reminded
    # today" for the runs a real run would count as already emitted).
    assert "already emitted today" not in out and "newly flagged" not in out
    assert "failed" not in out
    lines = {line[:34].strip(): line[34:].strip() for line in out.splitlines()[1:]}
    assert lines["would be reminded"] == "2" and lines["events it would emit"] == "2"
    assert not Event.objects.exists()


def test_a_real_run_still_says_dispatched_and_emitted():
    pending_run()
    out = discover()
    assert "dispatched" in out and "events emitted" in out and "would" not in out
    assert Event.objects.count() == 1


def test_dry_run_json_keys_are_unchanged():
    pending_run()
    summary = json.loads(discover("--dry-run", "--json"))
    assert summary["dispatched"] == 1 and summary["events"] == 1
    assert "would_be_reminded" not in summary
