"""Herald's commands: numeric options refuse values that make no sense, and --help
describes every option with its default."""

import argparse
from datetime import UTC, datetime, timedelta
from io import StringIO
from unittest import mock

import pytest
from django.core.management import CommandError, call_command, get_commands, load_command_class
from django.core.management.base import BaseCommand

from notifications.models import Delivery, Event, Sender
from production_runs.models import ReminderState
from tests.notifications.factories import DeliveryFactory
from tests.production_runs.factories import pending_run

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
HERALD_APPS = {"cadence", "notifications", "kiosks", "production_runs", "config"}


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize("limit", ["0", "-1"])
def test_dispatch_due_refuses_a_limit_below_one_and_changes_nothing(limit, settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    DeliveryFactory(send_at=NOW - timedelta(minutes=1))
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="--limit must be at least 1"):
        call_command(
            "dispatch_due", "--at", NOW.isoformat(), "--limit", limit, stdout=out, stderr=err
        )
    assert out.getvalue() == "" and err.getvalue() == ""
    assert Delivery.objects.get().status == "scheduled"
    assert not Sender.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("size", ["0", "-5"])
def test_discover_reminders_refuses_a_chunk_size_below_one_and_changes_nothing(size):
    pending_run()
    with pytest.raises(CommandError, match="--chunk-size must be at least 1"):
        run("discover_reminders", "--at", NOW.isoformat(), "--chunk-size", size)
    assert not Event.objects.exists() and not ReminderState.objects.exists()


@pytest.mark.parametrize("timeout", ["0", "-1"])
def test_ping_worker_refuses_a_timeout_that_is_not_positive(timeout):
    with (
        mock.patch("config.management.commands.ping_worker.ping") as ping,
        pytest.raises(CommandError, match="--timeout must be more than 0 seconds"),
    ):
        run("ping_worker", "--timeout", timeout)
    ping.delay.assert_not_called()


def herald_commands() -> list[str]:
    return sorted(name for name, app in get_commands().items() if app in HERALD_APPS)


def options(name: str):
    """(parser, the options the command adds) — not Django's own --verbosity etc."""
    parser = load_command_class(get_commands()[name], name).create_parser("manage.py", name)
    django_own = {action.dest for action in BaseCommand().create_parser("manage.py", "x")._actions}
    return parser, [a for a in parser._actions if a.dest not in django_own]


def expanded_help(parser, action) -> str:
    return parser._get_formatter()._expand_help(action)


def test_the_herald_commands_are_found():
    assert {"dispatch_due", "discover_reminders", "ping_worker", "run_verify_checks"} <= set(
        herald_commands()
    )


@pytest.mark.parametrize("name", herald_commands())
def test_every_option_has_a_help_string_showing_its_default(name):
    parser, actions = options(name)
    for action in actions:
        assert action.help, f"{name} {action.option_strings} has no help"
        if action.default not in (None, False, argparse.SUPPRESS):
            shown = f"{action.default:g}" if isinstance(action.default, float) else action.default
            assert f"(default: {shown})" in expanded_help(parser, action), (name, action.dest)


def _help(name: str, option: str) -> str:
    parser, actions = options(name)
    action = next(a for a in actions if option in a.option_strings)
    return " ".join(expanded_help(parser, action).split())


def test_the_defaults_the_reviewer_missed_are_shown():
    assert "(default: dry-run)" in _help("manage_whatsapp_templates", "--mode")
    assert "(default: 500)" in _help("discover_reminders", "--chunk-size")
    assert "(default: 20)" in _help("ping_worker", "--timeout")
    assert "(default: 1000)" in _help("dispatch_due", "--round-size")
    assert _help("run_verify_checks", "--json")


def test_dispatch_due_at_says_it_really_sends_and_stamps_pace_cursors():
    text = _help("dispatch_due", "--at")
    assert "really sends" in text
    assert "pace cursors" in text and "future" in text
    assert "hold" in text and "later real sends" in text


def test_evaluate_triggers_at_says_it_really_fires_and_stamps_cooldowns():
    text = _help("evaluate_triggers", "--at")
    assert "really fires" in text
    assert "cooldowns" in text and "future" in text
    assert "later real fires" in text


@pytest.mark.parametrize(
    "name", [n for n in herald_commands() if any("--at" in a.option_strings for a in options(n)[1])]
)
def test_every_at_option_says_how_a_time_without_an_offset_is_read(name, settings):
    assert _help(name, "--at").startswith("ISO 8601 time ")
    assert "without an offset it is read as UTC (settings.TIME_ZONE)" in _help(name, "--at")
    settings.TIME_ZONE = "Asia/Kolkata"
    assert "read as Asia/Kolkata (settings.TIME_ZONE)" in _help(name, "--at")
    assert options(name)[0].parse_args(["--at", "2026-11-23T10:00"]).at == datetime(
        2026, 11, 23, 4, 30, tzinfo=UTC
    )


def test_the_commands_with_an_at_option_are_found():
    names = {n for n in herald_commands() if any("--at" in a.option_strings for a in options(n)[1])}
    assert names == {
        "discover_reminders",
        "dispatch_due",
        "evaluate_triggers",
        "run_verify_checks",
        "seed_demo",
    }


@pytest.mark.parametrize(
    "name", [n for n in herald_commands() if any("--at" in a.option_strings for a in options(n)[1])]
)
@pytest.mark.parametrize("at", ["0001-01-01T00:00+00:00", "9999-12-31T23:59:59+00:00"])
def test_every_at_option_refuses_a_year_the_checks_cannot_reach(name, at):
    year = at[:4].lstrip("0")
    with pytest.raises(CommandError, match=f"--at must fall in the years 1900–2999, not {year}"):
        run(name, "--at", at)
