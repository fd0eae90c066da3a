"""The send-time re-check dispatch runs on stakeholder deliveries (seed 003's safety check),
driven through notifications.dispatch.dispatch_due."""

from datetime import timedelta

import pytest

from notifications import dispatch, tracking
from notifications.dispatch import ManualClock
from notifications.models import Delivery, RecordedMessage
from tests.cadence.factories import PersonaFactory, StakeholderFactory
from tests.notifications.factories import DeliveryFactory
from tests.triggers.helpers import at

pytestmark = pytest.mark.django_db

T = at(10, 30)


@pytest.fixture(autouse=True)
def recording_backends(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    settings.SMS_BACKEND = "notifications.channels.recording.SMSChannel"


def dispatch_due(now=T):
    return dispatch.dispatch_due(now=now, clock=ManualClock(now))


@pytest.fixture
def alice():
    persona = PersonaFactory(
        name="Strict", cooldown_hours=0, max_per_day=1, max_per_week=0, max_alert_per_day=0
    )
    return StakeholderFactory(name="Alice", persona=persona, fallback_channel="sms")


def to(person, *, status="scheduled", send_at=T, channel="email", **fields):
    address = person.email if channel == "email" else person.phone
    return DeliveryFactory(
        recipient_key=person.recipient_key,
        channel=channel,
        address=address,
        message_type="alert",
        status=status,
        send_at=send_at,
        sent_at=send_at if status == "sent" else None,
        **fields,
    )


def test_a_delivery_the_cadence_allows_is_sent(alice):
    delivery = to(alice)
    assert dispatch_due().sent == 1
    delivery.refresh_from_db()
    assert delivery.status == "sent"


def test_without_a_fallback_it_is_deferred_to_when_the_cadence_allows(alice):
    to(alice, status="sent", send_at=at(9))
    held = to(alice)
    report = dispatch_due()
    held.refresh_from_db()
    assert (report.sent, report.deferred) == (0, 1)
    assert (held.status, held.send_at) == ("scheduled", at(0, day=1))
    assert held.status_reason == (
        "cadence: daily limit on email (1/1 today) — deferred until 2026-11-24 00:00 UTC"
    )
    # And it goes then.
    assert dispatch_due(now=at(0, day=1)).sent == 1


def test_a_second_held_delivery_names_the_day_its_own_limit_is_full(alice):
    """The first held one takes tomorrow's only slot: the second waits a day more, and its
    reason says which day is full rather than repeating "today"."""
    to(alice, status="sent", send_at=at(9))
    first, second = to(alice), to(alice)
    assert dispatch_due().deferred == 2
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status_reason == (
        "cadence: daily limit on email (1/1 today) — deferred until 2026-11-24 00:00 UTC"
    )
    assert (second.send_at, second.status_reason) == (
        at(0, day=2),
        "cadence: daily limit on email (1/1 on 2026-11-24) — deferred until 2026-11-25 00:00 UTC",
    )


def test_it_goes_by_the_fallback_channel_when_that_cadence_allows(alice):
    to(alice, status="sent", send_at=at(9))
    held = to(alice, fallback_channel="sms", fallback_address=alice.phone)
    report = dispatch_due()
    held.refresh_from_db()
    assert held.status == "skipped"
    fallback = held.fallbacks.get()
    assert (fallback.channel, fallback.status) == ("sms", "sent")
    assert report.sent == 1
    assert RecordedMessage.objects.get().channel == "sms"


def test_an_alert_to_a_bounced_email_goes_by_the_fallback_channel(alice):
    """Alice's email hard-bounced: her alerts were skipped as suppressed and she was never
    told, though she has a phone and SMS as her fallback."""
    from notifications.models import Suppression

    Suppression.objects.create(address=alice.email, channel="email", reason="bounce")
    alert = to(alice, fallback_channel="sms", fallback_address=alice.phone)
    report = dispatch_due()
    alert.refresh_from_db()
    assert alert.status == "skipped"
    assert alert.status_reason == "suppressed: Hard bounce: sent by sms instead"
    fallback = alert.fallbacks.get()
    assert (fallback.channel, fallback.address, fallback.status) == ("sms", alice.phone, "sent")
    assert report.sent == 1
    assert RecordedMessage.objects.get().channel == "sms"


def test_a_bounced_email_without_a_fallback_is_skipped_as_before(alice):
    from notifications.models import Suppression

    Suppression.objects.create(address=alice.email, channel="email", reason="bounce")
    alert = to(alice)
    assert dispatch_due().skipped == 1
    alert.refresh_from_db()
    assert (alert.status, alert.status_reason) == ("skipped", "suppressed: Hard bounce")
    assert not alert.fallbacks.exists() and not RecordedMessage.objects.exists()


def test_a_fallback_counts_against_the_originals_message_type(alice):
    """The engine's fallback copy does not carry the message type; the cadence still counts
    it as the alert it is."""
    alice.persona.max_per_day = 0
    alice.persona.max_alert_per_day = 1
    alice.persona.save()
    to(alice, status="sent", send_at=at(9))
    original = to(alice, fallback_channel="sms", fallback_address=alice.phone)
    dispatch_due()
    fallback = Delivery.objects.get(fallback_of=original)
    assert fallback.message_type == "custom"  # engine gap: not copied
    assert fallback.status == "sent"
    # A second alert by SMS today would break the alert limit on SMS: held, not sent.
    later = to(alice, channel="sms", send_at=T + timedelta(minutes=5))
    dispatch_due(now=T + timedelta(minutes=5))
    later.refresh_from_db()
    assert later.status == "scheduled"
    assert later.status_reason.startswith("cadence: type daily limit on sms (1/1 alert today)")


def test_an_expiring_delivery_that_cadence_would_hold_past_its_expiry_is_cancelled(alice):
    to(alice, status="sent", send_at=at(9))
    held = to(alice, expires_at=T + timedelta(hours=4))
    report = dispatch_due()
    held.refresh_from_db()
    assert (held.status, report.cancelled) == ("cancelled", 1)
    assert held.status_reason.startswith(
        "expired: cadence: daily limit on email (1/1 today) until 2026-11-24 00:00 UTC"
    )


def test_two_due_at_once_do_not_both_go(alice):
    first, second = to(alice), to(alice, send_at=T - timedelta(minutes=1))
    report = dispatch_due()
    first.refresh_from_db()
    second.refresh_from_db()
    assert report.sent == 1
    assert sorted([first.status, second.status]) == ["scheduled", "sent"]


def test_override_is_enforced_at_send_time_too():
    persona = PersonaFactory(name="Loose", cooldown_hours=0, max_per_day=5, max_per_week=0)
    bob = StakeholderFactory(persona=persona, cooldown_hours=3)
    to(bob, status="sent", send_at=at(9))
    held = to(bob)
    dispatch_due()
    held.refresh_from_db()
    assert (held.status, held.send_at) == ("scheduled", at(12))


def test_deliveries_to_customers_are_not_cadence_limited():
    DeliveryFactory.create_batch(3, recipient_key="customer:1", send_at=T)
    assert dispatch_due().sent == 3


def test_a_cooldown_stored_before_the_bound_counts_as_a_year_and_others_still_go(alice):
    from cadence.models import Stakeholder

    zed = StakeholderFactory(name="Zed", persona=alice.persona)
    Stakeholder.objects.filter(pk=zed.pk).update(cooldown_hours=1e9)  # saved before the bound
    to(zed, status="sent", send_at=at(9))
    held, alices = to(zed), to(alice)
    report = dispatch_due()
    held.refresh_from_db()
    alices.refresh_from_db()
    assert (report.sent, alices.status) == (1, "sent")
    assert held.status == "scheduled"
    assert held.status_reason.startswith("cadence: cooldown on email (8760 h after")


def test_a_row_whose_checks_raise_holds_only_itself_and_fails_after_its_attempts(monkeypatch):
    relaxed = PersonaFactory(cooldown_hours=0, max_per_day=0, max_per_week=0, max_alert_per_day=0)
    people = [StakeholderFactory(persona=relaxed) for _ in range(4)]
    poison, *good = [to(person) for person in people]

    def broken(claimed, now):
        if any(d.id == poison.id for d in claimed):
            raise OverflowError("date value out of range")
        return {}

    monkeypatch.setattr(dispatch, "_send_time_checks", [*dispatch._send_time_checks, broken])
    report = dispatch_due()
    assert (report.sent, report.deferred) == (3, 1)
    for delivery in good:
        delivery.refresh_from_db()
        assert delivery.status == "sent"
    poison.refresh_from_db()
    assert (poison.status, poison.send_at, poison.attempts) == (
        "scheduled",
        T + timedelta(minutes=5),
        1,
    )
    assert poison.status_reason == (
        "attempt 1/3: Herald's checks before sending failed (OverflowError: date value out "
        "of range); held until 10:35:00 UTC, see the worker log"
    )
    later = T + timedelta(minutes=5)
    assert dispatch_due(now=later).deferred == 1
    report = dispatch_due(now=later + timedelta(minutes=5))
    poison.refresh_from_db()
    assert (report.failed, poison.status, poison.attempts) == (1, "failed", 3)
    assert poison.status_reason.startswith("gave up after 3 attempts: Herald's checks")
    assert RecordedMessage.objects.count() == 3  # the poison row was never handed over


def test_a_fallback_that_fails_leaves_the_row_held_not_due_again_at_once(alice, monkeypatch):
    to(alice, status="sent", send_at=at(9))  # the daily cap of 1 on email is used
    held = to(alice, fallback_channel="sms", fallback_address=alice.phone)

    def broken(original, *, now, reason):
        raise RuntimeError("fallback table unavailable")

    monkeypatch.setattr(dispatch, "fallback_create", broken)
    report = dispatch_due()
    held.refresh_from_db()
    assert (report.sent, report.deferred) == (0, 1)
    assert (held.status, held.send_at) == ("scheduled", T + timedelta(minutes=5))
    assert "RuntimeError: fallback table unavailable" in held.status_reason
    assert not Delivery.objects.filter(fallback_of=held).exists()


def _dispatch_in_thread(barrier, now, reports):
    from django.db import connections

    try:
        barrier.wait()
        reports.append(dispatch.dispatch_due(now=now, limit=PEOPLE, clock=ManualClock(now)))
    finally:
        connections.close_all()


PEOPLE = 30


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_workers_judging_one_persons_two_messages_at_once_send_one():
    """Each of 30 people (one email a day) has two due emails; two workers claim at once,
    one takes every first email and the other every second. Each worker's send-time
    check counted the other's claimed (sending) email against the person, so both held
    theirs: nobody was told. The checks of one person now take turns: one email each."""
    import threading

    persona = PersonaFactory(
        name="Strict", cooldown_hours=0, max_per_day=1, max_per_week=0, max_alert_per_day=0
    )
    people = [StakeholderFactory(persona=persona) for _ in range(PEOPLE)]
    for person in people:
        to(person, send_at=T - timedelta(minutes=2))
    for person in people:
        to(person, send_at=T - timedelta(minutes=1))
    barrier, reports = threading.Barrier(2), []
    workers = [
        threading.Thread(target=_dispatch_in_thread, args=(barrier, T, reports)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(reports) == 2
    for person in people:
        mine = Delivery.objects.filter(recipient_key=person.recipient_key)
        assert sorted(mine.values_list("status", flat=True)) == ["scheduled", "sent"], person
        held = mine.get(status="scheduled")
        assert held.send_at == at(0, day=1)
    assert sum(r.sent for r in reports) == PEOPLE


def test_a_queued_delivery_to_a_stakeholder_marked_inactive_since_is_cancelled(alice):
    """Inactive stakeholders are never contacted: one queued before they were marked
    inactive is cancelled when it comes due, saying why, on no channel."""
    held = to(alice, fallback_channel="sms", fallback_address=alice.phone)
    alice.is_active = False
    alice.save()
    report = dispatch_due()
    held.refresh_from_db()
    assert (report.sent, report.cancelled) == (0, 1)
    assert (held.status, held.status_reason) == (
        "cancelled",
        "inactive: Alice was marked inactive before it could be sent",
    )
    assert not held.fallbacks.exists()
    assert not RecordedMessage.objects.exists()


def test_a_queued_delivery_to_a_stakeholder_deleted_since_is_cancelled(alice):
    """Deleted in the admin while an alert waited for her cadence: it went out all the same
    (the check found no one to limit)."""
    held = to(alice, fallback_channel="sms", fallback_address=alice.phone)
    alice_id = alice.pk
    alice.delete()
    report = dispatch_due()
    held.refresh_from_db()
    assert (report.sent, report.cancelled) == (0, 1)
    assert (held.status, held.status_reason) == (
        "cancelled",
        f"deleted: stakeholder {alice_id} was deleted before it could be sent",
    )
    assert not held.fallbacks.exists()
    assert not RecordedMessage.objects.exists()


def test_a_customer_email_claimed_with_a_stakeholder_s_is_not_taken_for_a_deleted_one(alice):
    """One claim, one stakeholder's alert and one customer's email: the check of deleted
    stakeholders looks at stakeholder deliveries only."""
    to(alice)
    customer = DeliveryFactory(recipient_key="customer:7", send_at=T)
    assert dispatch_due().sent == 2
    customer.refresh_from_db()
    assert customer.status == "sent"


def test_a_queued_delivery_goes_to_the_email_a_stakeholder_has_now(alice):
    """Her email is corrected while an alert waits for her cadence: it goes to the new
    address (put back for the next round, which checks that address's suppressions), and
    its timeline says why."""
    held = to(alice, fallback_channel="sms", fallback_address=alice.phone)
    old = alice.email
    alice.email = "alice.new@sites.example.org"
    alice.save()
    report = dispatch_due()
    held.refresh_from_db()
    assert (report.sent, report.deferred) == (0, 1)
    assert (held.status, held.address, held.fallback_address) == (
        "scheduled",
        "alice.new@sites.example.org",
        alice.phone,
    )
    assert held.status_reason == (
        f"readdressed: Alice's address changed after it was queued "
        f"(email {old} → alice.new@sites.example.org)"
    )
    assert held.events.filter(kind="readdressed").count() == 1
    assert dispatch_due().sent == 1
    assert list(RecordedMessage.objects.values_list("channel", "to")) == [
        ("email", "alice.new@sites.example.org")
    ]


def test_a_queued_delivery_whose_email_was_removed_goes_by_its_fallback(alice):
    held = to(alice, fallback_channel="sms", fallback_address=alice.phone)
    alice.email = ""
    alice.preferred_channel = "sms"
    alice.fallback_channel = ""
    alice.save()
    dispatch_due()
    held.refresh_from_db()
    assert held.status == "skipped"
    assert held.status_reason.startswith(
        "no address: Alice has no email address now (it was alice@sites.example.org)"
    )
    assert list(RecordedMessage.objects.values_list("channel", "to")) == [("sms", alice.phone)]


def test_a_queued_sms_to_a_phone_removed_since_is_cancelled_saying_so(alice):
    held = to(alice, channel="sms")
    old = alice.phone
    alice.phone = ""
    alice.fallback_channel = ""
    alice.save()
    assert dispatch_due().cancelled == 1
    held.refresh_from_db()
    assert (held.status, held.status_reason) == (
        "cancelled",
        f"no address: Alice has no sms address now (it was {old})",
    )
    assert not RecordedMessage.objects.exists()


def test_a_queued_delivery_to_a_bounced_email_goes_to_the_corrected_one(alice):
    """The usual reason to correct an address is that the old one bounced: the alert waiting
    for the old address goes to the new one rather than being skipped as suppressed."""
    held = to(alice)
    tracking.suppress(
        address=alice.email, channel="email", reason="bounce", source="test", by="test", now=T
    )
    alice.email = "alice.new@sites.example.org"
    alice.save()
    dispatch_due()
    held.refresh_from_db()
    assert (held.status, held.address) == ("scheduled", "alice.new@sites.example.org")
    assert dispatch_due().sent == 1
    assert list(RecordedMessage.objects.values_list("to", flat=True)) == [
        "alice.new@sites.example.org"
    ]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_waiting_on_a_cadence_change_judges_by_the_new_cadence(alice):
    """Staff loosen Alice's persona (its re-plan locks her) while a worker's send-time check
    waits on that lock: the check read her persona with her, as it was when its query
    began, and held a message the new cadence lets go (after the re-plan had run, so
    nothing brought it forward again). The persona is read once she is locked."""
    import threading
    import time

    from django.db import connection, connections, transaction

    from cadence.models import Stakeholder

    to(alice, status="sent", send_at=at(9))
    due = to(alice)
    reports = []

    def worker():
        try:
            reports.append(dispatch_due())
        finally:
            connections.close_all()

    with transaction.atomic():
        Stakeholder.objects.select_for_update().get(pk=alice.pk)
        alice.persona.max_per_day = 0  # no daily limit
        alice.persona.save()
        thread = threading.Thread(target=worker)
        thread.start()
        with connection.cursor() as cursor:
            for _ in range(500):  # until the worker waits on Alice's row lock
                cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.01)
            else:
                pytest.fail("the worker never waited on the lock")
    thread.join(timeout=30)
    due.refresh_from_db()
    assert [r.sent for r in reports] == [1]
    assert due.status == "sent", due.status_reason


def _open_email_breaker(now=T):
    from notifications import breakers

    key = breakers.breaker_key("email", dispatch.provider_of("email"))
    for _ in range(breakers.get_breaker(key).threshold):
        breakers.record_failure(key, now=now - timedelta(seconds=5), error="503 from provider")
    assert breakers.get_breaker(key).state == "open"


def test_while_the_email_breaker_is_open_an_inactive_stakeholder_gets_no_sms_copy(alice):
    """The breaker reroutes due emails that name a fallback to SMS: one to a stakeholder
    marked inactive since was marked "sent by sms instead" though its copy was then
    cancelled at its own claim. It is cancelled itself, saying why, with no copy."""
    _open_email_breaker()
    held = to(alice, fallback_channel="sms", fallback_address=alice.phone)
    alice.is_active = False
    alice.save()
    report = dispatch_due()
    held.refresh_from_db()
    assert (held.status, held.status_reason) == (
        "cancelled",
        "inactive: Alice was marked inactive before it could be sent",
    )
    assert held.events.filter(kind="cancelled").count() == 1
    assert not held.fallbacks.exists()
    assert (report.sent, report.cancelled, report.deferred) == (0, 1, 0)
    assert not RecordedMessage.objects.exists()


def test_while_the_email_breaker_is_open_a_deleted_stakeholder_gets_no_sms_copy(alice):
    _open_email_breaker()
    held = to(alice, fallback_channel="sms", fallback_address=alice.phone)
    alice_id = alice.pk
    alice.delete()
    dispatch_due()
    held.refresh_from_db()
    assert (held.status, held.status_reason) == (
        "cancelled",
        f"deleted: stakeholder {alice_id} was deleted before it could be sent",
    )
    assert not held.fallbacks.exists()
    assert not RecordedMessage.objects.exists()


def test_while_the_email_breaker_is_open_the_sms_copy_goes_to_the_corrected_phone(alice):
    """Her phone was corrected while the alert waited: the copy is made for the new number
    (it was made for the old one, and went only after a readdress round of its own), and the
    original's timeline says it was readdressed."""
    _open_email_breaker()
    held = to(alice, fallback_channel="sms", fallback_address=alice.phone)
    old = alice.phone
    alice.phone = "+14155552671"
    alice.save()
    report = dispatch_due()
    held.refresh_from_db()
    assert (held.status, held.fallback_address) == ("skipped", "+14155552671")
    assert held.events.filter(kind="readdressed").get().reason == (
        f"readdressed: Alice's address changed after it was queued "
        f"(fallback sms {old} → +14155552671)"
    )
    copy = held.fallbacks.get()
    assert (copy.address, copy.status) == ("+14155552671", "sent"), copy.last_error
    assert report.sent == 1
    assert list(RecordedMessage.objects.values_list("channel", "to")) == [("sms", "+14155552671")]


def test_while_the_email_breaker_is_open_a_removed_fallback_leaves_it_waiting(alice):
    """Her phone was removed: there is no fallback left, so the alert waits for the email
    breaker like any without one, at its corrected (fallback-less) address."""
    _open_email_breaker()
    held = to(alice, fallback_channel="sms", fallback_address=alice.phone)
    alice.phone = ""
    alice.fallback_channel = ""
    alice.save()
    report = dispatch_due()
    held.refresh_from_db()
    assert (held.status, held.fallback_channel, held.fallback_address) == ("scheduled", "", "")
    assert not held.fallbacks.exists()
    assert report.breaker_held == 1
    assert not RecordedMessage.objects.exists()
