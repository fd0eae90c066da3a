"""What stops or slows a send: pacing, the provider breaker, kill switches, suppression,
and the fallback channel. The clock is moved, never slept."""

from datetime import UTC, datetime, timedelta

import pytest
import responses

from notifications import dispatch, pacing
from notifications.dispatch import ManualClock
from notifications.killswitches import killswitch_set
from notifications.models import (
    AuditEntry,
    BreakerTransition,
    Delivery,
    KillSwitch,
    KillSwitchChange,
    ProviderBreaker,
    RecordedMessage,
    Sender,
    Suppression,
)
from tests.notifications.factories import DeliveryFactory, WorkflowRunFactory

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
TWILIO_URL = "https://api.twilio.com/2010-04-01/Accounts/AC123/Messages.json"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def recording_email(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"


@pytest.fixture
def twilio(settings):
    settings.SMS_BACKEND = "notifications.channels.sms.TwilioSMSChannel"
    settings.TWILIO_ACCOUNT_SID = "AC123"
    settings.TWILIO_AUTH_TOKEN = "token"
    settings.TWILIO_FROM_NUMBER = "+15005550006"
    settings.TWILIO_MESSAGING_SERVICE_SID = ""
    settings.DISPATCH_RETRY_JITTER = 0
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def _sms(n, **fields):
    return [
        DeliveryFactory(
            channel="sms", address=f"+1415555{i:04d}", send_at=NOW, max_attempts=10, **fields
        )
        for i in range(n)
    ]


def run_until_idle(start, *, step=timedelta(milliseconds=250), rounds=10_000):
    """Call the dispatcher as beat and the hints would, moving the clock between calls."""
    now = start
    for _ in range(rounds):
        clock = ManualClock(now)
        dispatch.dispatch_due(now=now, clock=clock)
        if not Delivery.objects.filter(status="scheduled").exists():
            return clock.now()
        now = max(clock.now(), now) + step
    raise AssertionError("deliveries still scheduled")


def _max_in_any_window(times, width=timedelta(seconds=1)):
    times = sorted(times)
    best, left = 0, 0
    for right, moment in enumerate(times):
        while moment - times[left] >= width:
            left += 1
        best = max(best, right - left + 1)
    return best


@pytest.mark.parametrize("rate, burst", [(1.0, 12), (3.0, 40), (80.0, 400)])
def test_pacing_never_exceeds_the_rate_in_any_one_second_window(settings, rate, burst):
    settings.SENDER_DEFAULT_RATES = {"email": rate, "sms": rate, "whatsapp": rate}
    DeliveryFactory.create_batch(burst, send_at=NOW)
    run_until_idle(NOW)
    times = list(Delivery.objects.filter(status="sent").values_list("sent_at", flat=True))
    assert len(times) == burst
    assert _max_in_any_window(times) <= rate
    span = (max(times) - min(times)).total_seconds()
    used = (burst - 1) / span
    assert used >= 0.95 * rate
    assert Sender.objects.get().rate_per_second == rate


def test_a_paced_delivery_says_why_it_waits(settings):
    settings.SENDER_DEFAULT_RATES = {"email": 1.0, "sms": 1.0, "whatsapp": 1.0}
    deliveries = DeliveryFactory.create_batch(3, send_at=NOW)
    clock = ManualClock(NOW)
    report = dispatch.dispatch_due(now=NOW, clock=clock)
    # The second slot is within the 1 s horizon: the dispatcher waits for it (clock moved).
    assert (report.sent, report.deferred) == (2, 1)
    third = Delivery.objects.get(id=deliveries[2].id)
    assert third.status == "scheduled"
    assert (
        third.status_reason
        == "paced: email:Herald <herald@localhost> sends at most 1/s; its slot is 10:00:02"
    )
    assert third.send_at == third.paced_until == NOW + timedelta(seconds=2)


def test_nothing_is_handed_over_that_would_expire_in_the_queue(settings):
    settings.SENDER_DEFAULT_RATES = {"email": 1.0, "sms": 1.0, "whatsapp": 1.0}
    DeliveryFactory.create_batch(
        3, send_at=NOW, expires_at=NOW + timedelta(seconds=1, milliseconds=500)
    )
    run_until_idle(NOW)
    assert Delivery.objects.filter(status="sent").count() == 2
    late = Delivery.objects.get(status="expired")
    assert late.status_reason.startswith("would expire in the queue")
    assert RecordedMessage.objects.count() == 2


def test_sms_carries_a_validity_period_so_twilio_never_delivers_late(twilio):
    twilio.add(responses.POST, TWILIO_URL, json={"sid": "SM1"}, status=201)
    DeliveryFactory(
        channel="sms", address="+14155550100", send_at=NOW, expires_at=NOW + timedelta(hours=2)
    )
    DeliveryFactory(channel="sms", address="+14155550101", send_at=NOW)
    dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))
    bodies = sorted(call.request.body for call in twilio.calls)
    assert "ValidityPeriod=7200" in bodies[0] or "ValidityPeriod=7200" in bodies[1]
    assert any("ValidityPeriod=36000" in body for body in bodies)  # the 10 h provider cap


def test_a_429_with_retry_after_pauses_the_sender(settings):
    settings.WHATSAPP_BACKEND = "notifications.channels.whatsapp.CloudAPIWhatsAppChannel"
    settings.WHATSAPP_PHONE_NUMBER_ID = "1055"
    settings.WHATSAPP_ACCESS_TOKEN = "token"
    url = f"{settings.WHATSAPP_GRAPH_URL}/1055/messages"
    DeliveryFactory.create_batch(
        2, channel="whatsapp", address="+919812345678", send_at=NOW, payload={"template": "t"}
    )
    with responses.RequestsMock() as mock:
        mock.add(
            responses.POST,
            url,
            json={"error": {"code": 130429, "message": "rate"}},
            status=429,
            headers={"Retry-After": "30"},
        )
        report = dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))
        assert len(mock.calls) == 1  # the second waits out the pause; it is not sent into it
    assert (report.retried, report.deferred) == (1, 1)
    sender = Sender.objects.get(key="whatsapp:1055")
    assert sender.paused_until == NOW + timedelta(seconds=30)


def _fail_all(twilio):
    twilio.add(
        responses.POST,
        TWILIO_URL,
        json={"code": 20503, "message": "down", "status": 503},
        status=503,
    )


def test_the_breaker_opens_after_exactly_five_consecutive_transient_failures(twilio):
    _fail_all(twilio)
    _sms(8)
    report = dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))
    assert len(twilio.calls) == 5
    assert (report.retried, report.deferred) == (5, 3)
    breaker = ProviderBreaker.objects.get(provider="sms:twilio")
    assert (breaker.state, breaker.consecutive_failures) == ("open", 5)
    assert BreakerTransition.objects.get().to_state == "open"

    # While open (cool-off 60 s) nothing reaches the provider, even the retries now due.
    later = NOW + timedelta(seconds=30)
    dispatch.dispatch_due(now=later, clock=ManualClock(later))
    assert len(twilio.calls) == 5
    assert Delivery.objects.filter(status="scheduled").count() == 8


def test_four_failures_then_a_success_keep_the_breaker_closed(twilio):
    for _ in range(4):
        twilio.add(
            responses.POST,
            TWILIO_URL,
            json={"code": 20503, "message": "down", "status": 503},
            status=503,
        )
    twilio.add(responses.POST, TWILIO_URL, json={"sid": "SM9"}, status=201)
    _sms(5)
    dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))
    breaker = ProviderBreaker.objects.get(provider="sms:twilio")
    assert (breaker.state, breaker.consecutive_failures) == ("closed", 0)


def test_after_the_cool_off_one_trial_call_closes_the_breaker(twilio):
    _fail_all(twilio)
    _sms(6)
    dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))
    twilio.replace(responses.POST, TWILIO_URL, json={"sid": "SM1"}, status=201)
    after = NOW + timedelta(seconds=61)
    report = dispatch.dispatch_due(now=after, clock=ManualClock(after))
    assert report.sent == 1  # the trial, alone
    assert ProviderBreaker.objects.get(provider="sms:twilio").state == "closed"
    report = dispatch.dispatch_due(now=after, clock=ManualClock(after))
    assert report.sent == 5
    states = list(BreakerTransition.objects.order_by("at", "id").values_list("to_state", flat=True))
    assert states == ["open", "half_open", "closed"]


def test_a_failed_trial_reopens_the_breaker(twilio):
    _fail_all(twilio)
    _sms(6)
    dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))
    after = NOW + timedelta(seconds=61)
    dispatch.dispatch_due(now=after, clock=ManualClock(after))
    assert len(twilio.calls) == 6
    breaker = ProviderBreaker.objects.get(provider="sms:twilio")
    assert (breaker.state, breaker.opened_at) == ("open", after)


def test_an_open_breaker_sends_deliveries_with_a_fallback_by_the_fallback_channel(twilio):
    # The recording backend (this module's) names itself, as the SMS recording channel does.
    assert dispatch.provider_of("email") == "recording"
    ProviderBreaker.objects.create(provider="email:recording", state="open", opened_at=NOW)
    email = DeliveryFactory(send_at=NOW, fallback_channel="sms", fallback_address="+14155550199")
    plain = DeliveryFactory(send_at=NOW)
    twilio.add(responses.POST, TWILIO_URL, json={"sid": "SMF"}, status=201)
    dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))
    email.refresh_from_db()
    plain.refresh_from_db()
    assert email.status == "skipped"
    assert "sent by sms instead" in email.status_reason
    fallback = email.fallbacks.get()
    assert (fallback.channel, fallback.address) == ("sms", "+14155550199")
    dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))
    fallback.refresh_from_db()
    assert fallback.status == "sent"
    assert plain.status == "scheduled"
    assert not RecordedMessage.objects.filter(channel="email").exists()


def test_a_kill_switch_freezes_matching_deliveries_and_releases_them_with_nothing_lost():
    switch = KillSwitch.objects.create(name="stop email", scope="channel", channel="email")
    emails = DeliveryFactory.create_batch(3, send_at=NOW)
    sms = DeliveryFactory(channel="sms", address="+14155550100", send_at=NOW)
    killswitch_set(switch=switch, on=True, by="ops", reason="wrong template", now=NOW)
    report = dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))
    assert (report.sent, report.frozen) == (1, 3)
    sms.refresh_from_db()
    assert sms.status == "sent"
    assert Delivery.objects.filter(id__in=[e.id for e in emails], status="scheduled").count() == 3

    later = NOW + timedelta(hours=1)
    killswitch_set(switch=switch, on=False, by="ops", reason="fixed", now=later)
    assert dispatch.dispatch_due(now=later, clock=ManualClock(later)).sent == 3
    audit = list(KillSwitchChange.objects.order_by("at").values_list("turned_on", "by", "reason"))
    assert audit == [(True, "ops", "wrong template"), (False, "ops", "fixed")]


def test_high_risk_ops_freezes_only_workflows_of_risk_three_or_more():
    KillSwitch.objects.create(name="high_risk_ops", scope="high_risk_ops", is_on=True)
    risky = DeliveryFactory(send_at=NOW, workflow_run=WorkflowRunFactory(workflow__risk_level=4))
    calm = DeliveryFactory(send_at=NOW, workflow_run=WorkflowRunFactory(workflow__risk_level=1))
    dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))
    risky.refresh_from_db()
    calm.refresh_from_db()
    assert (risky.status, calm.status) == ("scheduled", "sent")


@pytest.mark.postgres
def test_on_postgresql_a_claim_across_a_kill_switchs_join_locks_only_the_deliveries():
    """A workflow or high-risk switch joins each delivery to its run (an outer join):
    PostgreSQL refuses FOR UPDATE on the nullable side, so the claim locks OF the delivery."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    assert connection.vendor == "postgresql"
    with CaptureQueriesContext(connection) as queries:
        test_high_risk_ops_freezes_only_workflows_of_risk_three_or_more()
    claims = [q["sql"] for q in queries if "SKIP LOCKED" in q["sql"]]
    assert claims and all('FOR UPDATE OF "notifications_delivery" SKIP LOCKED' in q for q in claims)


def test_a_suppressed_address_is_skipped_with_the_reason():
    Suppression.objects.create(
        address="gone@example.com", channel="email", reason="bounce", source="anymail bounced"
    )
    delivery = DeliveryFactory(address="Gone@Example.com", send_at=NOW)
    report = dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))
    assert report.skipped == 1
    delivery.refresh_from_db()
    assert delivery.status == "skipped"
    assert delivery.status_reason == "suppressed: Hard bounce (anymail bounced)"
    assert not RecordedMessage.objects.exists()


def test_a_pace_left_ahead_by_a_later_at_is_restarted_and_the_held_go_at_the_rate(settings):
    """`dispatch_due --at` two hours ahead moves the sender's cursor there; the real sends
    that follow are held for slots two hours away. Restarting the sender's pace makes them
    due again: they go now, in their order, never over the rate."""
    settings.SENDER_DEFAULT_RATES = {"email": 3.0, "sms": 3.0, "whatsapp": 3.0}
    ahead = NOW + timedelta(hours=2)
    DeliveryFactory(send_at=NOW)
    dispatch.dispatch_due(now=ahead, clock=ManualClock(ahead))  # the --at run
    held = DeliveryFactory.create_batch(12, send_at=NOW)
    report = dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))
    assert (report.sent, report.deferred) == (0, 12)
    assert min(Delivery.objects.filter(status="scheduled").values_list("send_at", flat=True)) > (
        ahead
    )

    key = Sender.objects.get().key
    assert pacing.sender_restart(keys=[key], by="mike", now=NOW) == (1, 12)
    assert pacing.sender_restart(keys=[key], by="mike", now=NOW) == (0, 0)  # nothing ahead
    audit = AuditEntry.objects.get()
    assert (audit.by, audit.action, audit.target) == (
        "mike",
        "sender_pace_restart",
        f"sender:{key}",
    )
    assert audit.detail["deliveries_due_again"] == 12

    finished = run_until_idle(NOW)
    sent = list(Delivery.objects.filter(id__in=[d.id for d in held]).order_by("sent_at", "id"))
    assert [d.status for d in sent] == ["sent"] * 12
    assert [d.id for d in sent] == [d.id for d in held]  # in the order they were held
    assert _max_in_any_window([d.sent_at for d in sent]) <= 3
    assert finished < NOW + timedelta(seconds=6)  # now, not two hours on


def test_an_everything_switch_holds_every_due_delivery():
    """frozen_filter gave Q() for it: a filter of it matched every row, but dispatch
    excludes what is frozen, and excluding Q() excludes nothing: all were sent."""
    from config.dashboard import queued_reasons
    from notifications.dispatch import next_due_in
    from notifications.models import KillSwitch, RecordedMessage

    KillSwitch.objects.create(name="stop all", scope="everything", is_on=True, reason="incident")
    DeliveryFactory.create_batch(2, send_at=NOW)
    DeliveryFactory(channel="sms", address="+14155550100", send_at=NOW)

    report = dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))

    assert (report.sent, report.frozen) == (0, 3)
    assert not RecordedMessage.objects.exists()
    assert next_due_in(now=NOW) is None
    assert queued_reasons(NOW) == [("frozen by a kill switch", 3)]


def test_a_switch_turned_on_during_a_round_holds_what_is_not_yet_claimed(settings):
    """The switches were read once per dispatch round: one turned on while a worker drained
    a backlog held nothing until the round ended (10 of 10 sent, "frozen: 0")."""
    import json

    import responses

    from notifications.models import KillSwitch

    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "x"}
    settings.DISPATCH_BATCH_SIZE = settings.DISPATCH_MAX_BATCH_SIZE = 2
    DeliveryFactory.create_batch(10, send_at=NOW)
    sent_to = []

    def postmark(request):
        if not sent_to:  # staff turn the switch on while the first message goes out
            KillSwitch.objects.create(name="stop", scope="everything", is_on=True, reason="x")
        to = json.loads(request.body)["To"]
        sent_to.append(to)
        answer = {"To": to, "MessageID": f"m-{len(sent_to)}", "ErrorCode": 0, "Message": "OK"}
        return 200, {}, json.dumps(answer)

    with responses.RequestsMock() as mock:
        mock.add_callback(responses.POST, "https://api.postmarkapp.com/email", callback=postmark)
        report = dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))

    assert len(sent_to) == 2  # the claim under way when it was turned on, not one more
    assert (report.sent, report.frozen) == (2, 8)


def test_an_open_breaker_keeps_its_trial_for_a_call_to_try(twilio):
    """With nothing due on its channel, every round after the cool-off took the trial and
    wasted it ("half_open → half_open" each minute in its history)."""
    _fail_all(twilio)
    _sms(5)
    dispatch.dispatch_due(now=NOW, clock=ManualClock(NOW))
    assert ProviderBreaker.objects.get(provider="sms:twilio").state == "open"
    Delivery.objects.filter(status="scheduled").update(status="cancelled")

    for minutes in (2, 3, 4):
        later = NOW + timedelta(minutes=minutes)
        dispatch.dispatch_due(now=later, clock=ManualClock(later))
    assert ProviderBreaker.objects.get(provider="sms:twilio").state == "open"
    assert BreakerTransition.objects.count() == 1  # closed → open, nothing since

    twilio.replace(responses.POST, TWILIO_URL, json={"sid": "SM1"}, status=201)
    _sms(1)
    later = NOW + timedelta(minutes=5)
    assert dispatch.dispatch_due(now=later, clock=ManualClock(later)).sent == 1
    assert ProviderBreaker.objects.get(provider="sms:twilio").state == "closed"
