import json
import multiprocessing
import threading
from datetime import UTC, datetime, timedelta

import pytest
import responses
from anymail.backends.base_requests import AnymailRequestsBackend
from celery.exceptions import SoftTimeLimitExceeded
from django.core.management import call_command
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from notifications import dispatch
from notifications.dispatch import ManualClock, retry_delay
from notifications.models import Delivery, DeliveryEvent, Event, RecordedMessage, WorkflowRun
from tests.notifications.factories import DeliveryFactory, WorkflowRunFactory

HALTED = WorkflowRun.HALTED

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def dispatch_due(*, now, **kwargs):
    """Dispatch on a clock that stands still unless pacing waits (then it is moved)."""
    return dispatch.dispatch_due(now=now, clock=ManualClock(now), **kwargs)


TWILIO_URL = "https://api.twilio.com/2010-04-01/Accounts/AC123/Messages.json"


@pytest.fixture(autouse=True)
def recording_email(settings):
    """Development's email backend: every message becomes a RecordedMessage row."""
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"


@pytest.fixture
def twilio(settings):
    settings.SMS_BACKEND = "notifications.channels.sms.TwilioSMSChannel"
    settings.TWILIO_ACCOUNT_SID = "AC123"
    settings.TWILIO_AUTH_TOKEN = "token"
    settings.TWILIO_FROM_NUMBER = "+15005550006"
    settings.TWILIO_MESSAGING_SERVICE_SID = ""
    with responses.RequestsMock() as mock:
        yield mock


def _sms(**fields):
    return DeliveryFactory(channel="sms", address="+14155550100", send_at=NOW, **fields)


def _twilio_error(status, code):
    return {"code": code, "message": f"error {code}", "more_info": "", "status": status}


@pytest.mark.django_db
def test_a_due_delivery_is_sent_once_and_recorded():
    delivery = DeliveryFactory(send_at=NOW)
    report = dispatch_due(now=NOW)
    assert report.sent == 1
    delivery.refresh_from_db()
    assert delivery.status == "sent"
    assert delivery.sent_at == NOW
    assert delivery.provider_message_id
    assert RecordedMessage.objects.get().to == delivery.address
    assert list(delivery.events.values_list("kind", flat=True)) == ["sent"]
    assert dispatch_due(now=NOW + timedelta(minutes=1)).sent == 0
    assert RecordedMessage.objects.count() == 1


@pytest.mark.django_db
def test_a_delivery_scheduled_for_later_waits():
    DeliveryFactory(send_at=NOW + timedelta(hours=3))
    assert dispatch_due(now=NOW).sent == 0
    assert dispatch_due(now=NOW + timedelta(hours=3)).sent == 1


@pytest.mark.django_db
def test_expired_deliveries_are_not_sent_and_say_why():
    delivery = DeliveryFactory(
        send_at=NOW - timedelta(hours=11), expires_at=NOW - timedelta(hours=1)
    )
    report = dispatch_due(now=NOW)
    assert (report.sent, report.expired) == (0, 1)
    delivery.refresh_from_db()
    assert delivery.status == "expired"
    assert delivery.status_reason == "expired before it could be sent"
    assert not RecordedMessage.objects.exists()


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's query plan")
@pytest.mark.django_db
def test_the_expiry_sweep_reads_only_rows_that_can_expire():
    """Every round sweeps for expired rows: it finds them in delivery_expiring, which holds
    no row without an expiry, instead of reading every scheduled row (SQLite, no
    statistics)."""
    DeliveryFactory.create_batch(3, send_at=NOW)
    soon = DeliveryFactory(send_at=NOW, expires_at=NOW + timedelta(hours=1))
    gone = DeliveryFactory(send_at=NOW, expires_at=NOW - timedelta(minutes=1))
    with CaptureQueriesContext(connection) as queries:
        assert dispatch.expire_overdue(now=NOW) == 1
    sweep = queries.captured_queries[0]["sql"]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sweep}")
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    assert "delivery_expiring" in plan, plan
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA index_list(notifications_delivery)")
        partial = {row[1]: row[4] for row in cursor.fetchall()}  # name → partial (0/1)
    assert partial["delivery_expiring"] == 1  # the three without expiry are not in it
    assert Delivery.objects.get(id=gone.id).status == "expired"
    assert Delivery.objects.get(id=soon.id).status == "scheduled"


@pytest.mark.django_db
def test_a_row_left_sending_becomes_unknown_and_is_not_resent(settings):
    settings.DISPATCH_SENDING_TIMEOUT_SECONDS = 600
    delivery = DeliveryFactory(
        status="sending", claimed_at=NOW - timedelta(minutes=11), attempts=1, send_at=NOW
    )
    fresh = DeliveryFactory(status="sending", claimed_at=NOW - timedelta(minutes=5), send_at=NOW)
    report = dispatch_due(now=NOW)
    assert (report.unknown, report.sent) == (1, 0)
    delivery.refresh_from_db()
    fresh.refresh_from_db()
    assert delivery.status == "unknown"
    assert "check the provider" in delivery.status_reason
    assert fresh.status == "sending"
    assert not RecordedMessage.objects.exists()
    assert dispatch_due(now=NOW + timedelta(hours=1)).sent == 0


@pytest.mark.django_db
def test_default_retry_policy_attempt_times(twilio, settings):
    """Seed 001: 3 attempts, exponential backoff from 2 s, at most 30 s. Jitter off here."""
    settings.DISPATCH_RETRY_JITTER = 0
    twilio.add(responses.POST, TWILIO_URL, json=_twilio_error(503, 20503), status=503)
    delivery = _sms()
    attempt_times = []
    now = NOW
    for _ in range(3):
        attempt_times.append(now)
        dispatch_due(now=now)
        delivery.refresh_from_db()
        now = delivery.send_at
    assert attempt_times == [NOW, NOW + timedelta(seconds=2), NOW + timedelta(seconds=6)]
    assert delivery.status == "failed"
    assert delivery.attempts == 3
    assert len(twilio.calls) == 3
    assert "gave up after 3 attempts" in delivery.status_reason
    assert [e.kind for e in delivery.events.all()] == ["retry", "retry", "failed"]
    event = Event.objects.get(name="delivery.failed")
    assert event.payload["delivery_id"] == delivery.id
    assert dispatch_due(now=now + timedelta(minutes=5)).sent == 0
    assert len(twilio.calls) == 3


def test_backoff_doubles_up_to_the_cap_and_jitter_stays_within_its_fraction():
    plain = [retry_delay(attempt=n, base=2, cap=30, key="k", jitter=0) for n in range(1, 7)]
    assert plain == [2, 4, 8, 16, 30, 30]
    jittered = [retry_delay(attempt=n, base=2, cap=30, key="k", jitter=0.1) for n in range(1, 5)]
    for base, delay in zip(plain, jittered, strict=False):
        assert base <= delay <= base * 1.1
    other = [retry_delay(attempt=n, base=2, cap=30, key="other", jitter=0.1) for n in range(1, 5)]
    assert other != jittered  # two deliveries of one burst do not retry in lockstep


@pytest.mark.django_db
def test_a_permanent_error_is_not_retried(twilio):
    twilio.add(responses.POST, TWILIO_URL, json=_twilio_error(400, 21211), status=400)
    delivery = _sms()
    report = dispatch_due(now=NOW)
    assert (report.failed, report.retried) == (1, 0)
    delivery.refresh_from_db()
    assert delivery.status == "failed"
    assert delivery.status_reason.startswith("permanent error")
    assert dispatch_due(now=NOW + timedelta(minutes=10)).failed == 0
    assert len(twilio.calls) == 1


@pytest.mark.django_db
def test_retry_after_from_the_provider_stretches_the_wait(twilio, settings):
    settings.DISPATCH_RETRY_JITTER = 0
    twilio.add(
        responses.POST,
        TWILIO_URL,
        json=_twilio_error(429, 20429),
        status=429,
        headers={"Retry-After": "20"},
    )
    delivery = _sms()
    dispatch_due(now=NOW)
    delivery.refresh_from_db()
    assert delivery.status == "scheduled"
    assert delivery.send_at >= NOW + timedelta(seconds=2)


@pytest.mark.django_db
def test_dispatch_due_command_prints_json_counts():
    DeliveryFactory(send_at=NOW - timedelta(minutes=1))
    DeliveryFactory(send_at=NOW - timedelta(hours=2), expires_at=NOW - timedelta(hours=1))
    DeliveryFactory(send_at=NOW + timedelta(days=1))
    from io import StringIO

    out = StringIO()
    call_command("dispatch_due", "--at", NOW.isoformat(), "--json", stdout=out)
    assert json.loads(out.getvalue()) == {
        "sent": 1,
        "failed": 0,
        "retried": 0,
        "expired": 1,
        "deferred": 0,
        "unknown": 0,
        "skipped": 0,
        "cancelled": 0,
        "frozen": 0,
        "breaker_held": 0,
    }


def test_dispatch_due_command_refuses_a_bad_time():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="ISO 8601"):
        call_command("dispatch_due", "--at", "tomorrow-ish")


def _race(count: int, workers: int, start) -> None:
    DeliveryFactory.create_batch(count, send_at=NOW)
    start(workers)
    assert Delivery.objects.filter(status="sent").count() == count
    keys = list(RecordedMessage.objects.values_list("to", flat=True))
    assert len(keys) == count == len(set(keys))
    assert DeliveryEvent.objects.filter(kind="sent").count() == count


def _dispatch_in_thread(barrier):
    try:
        barrier.wait()
        dispatch_due(now=NOW)
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_racing_in_threads_send_each_delivery_once(settings):
    settings.DISPATCH_BATCH_SIZE = 7

    def start(workers):
        barrier = threading.Barrier(workers)
        threads = [
            threading.Thread(target=_dispatch_in_thread, args=(barrier,)) for _ in range(workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    _race(60, 2, start)


def _dispatch_in_process(barrier):
    connections.close_all()
    barrier.wait()
    dispatch_due(now=NOW)
    connections.close_all()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_four_dispatcher_processes_on_postgresql_send_each_delivery_once(settings):
    settings.DISPATCH_BATCH_SIZE = 5

    def start(workers):
        connections.close_all()
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(workers)
        procs = [ctx.Process(target=_dispatch_in_process, args=(barrier,)) for _ in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0

    _race(200, 4, start)


@pytest.mark.django_db
def test_an_unreadable_ok_from_the_provider_is_unknown_not_resent(settings):
    settings.WHATSAPP_BACKEND = "notifications.channels.whatsapp.CloudAPIWhatsAppChannel"
    settings.WHATSAPP_PHONE_NUMBER_ID = "1055"
    settings.WHATSAPP_ACCESS_TOKEN = "token"
    delivery = DeliveryFactory(
        channel="whatsapp", address="+919812345678", send_at=NOW, payload={"template": "t"}
    )
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{settings.WHATSAPP_GRAPH_URL}/1055/messages", body="<html>")
        report = dispatch_due(now=NOW)
        assert report.unknown == 1
        assert dispatch_due(now=NOW + timedelta(minutes=5)).sent == 0
        assert len(mock.calls) == 1
    delivery.refresh_from_db()
    assert delivery.status == "unknown"
    assert "check before resending" in delivery.status_reason


@pytest.mark.django_db
def test_a_time_limit_hit_while_the_provider_answers_is_unknown_and_the_rest_go_back(settings):
    """Celery raises its soft time limit inside whatever the worker is doing: here while
    Postmark has the second message and has not answered yet. That one may have gone: it
    is left unknown, never retried; the third was not handed over and waits for the next
    round, unsent; the first, accepted, is written; the task itself stops."""
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "x"}
    first, second, third = (DeliveryFactory(send_at=NOW) for _ in range(3))
    received = []

    def postmark(request):
        to = json.loads(request.body)["To"]
        received.append(to)
        if len(received) == 2:
            raise SoftTimeLimitExceeded()
        answer = {"To": to, "MessageID": f"pm-{len(received)}", "ErrorCode": 0, "Message": "OK"}
        return 200, {}, json.dumps(answer)

    with responses.RequestsMock() as mock:
        mock.add_callback(responses.POST, "https://api.postmarkapp.com/email", callback=postmark)
        with pytest.raises(SoftTimeLimitExceeded):
            dispatch_due(now=NOW)
        statuses = dict(Delivery.objects.values_list("id", "status"))
        assert statuses == {first.id: "sent", second.id: "unknown", third.id: "scheduled"}
        third.refresh_from_db()
        assert (third.attempts, third.claim_token) == (0, None)
        assert dispatch_due(now=NOW + timedelta(minutes=5)).sent == 1
    assert received == [first.address, second.address, third.address]  # nobody twice
    second.refresh_from_db()
    assert second.status == "unknown"
    assert "check the provider before resending" in second.status_reason


@pytest.mark.django_db
def test_deliveries_of_aborted_and_cancelled_runs_wait_while_the_others_are_sent():
    runs = {status: WorkflowRunFactory(status=status) for status in ("running", *HALTED)}
    waiting = {
        status: DeliveryFactory(send_at=NOW, workflow_run=run) for status, run in runs.items()
    }
    loose = DeliveryFactory(send_at=NOW, workflow_run=None)
    report = dispatch_due(now=NOW)
    assert report.sent == 2
    status = dict(Delivery.objects.values_list("id", "status"))
    assert status[loose.id] == status[waiting["running"].id] == "sent"
    assert status[waiting["aborted"].id] == status[waiting["cancelled"].id] == "scheduled"
    WorkflowRun.objects.filter(id=runs["aborted"].id).update(status="running")  # resumed
    assert dispatch_due(now=NOW).sent == 1
    assert Delivery.objects.get(id=waiting["aborted"].id).status == "sent"


@pytest.mark.django_db
def test_a_round_sends_its_emails_over_one_esp_session_and_closes_it(settings, monkeypatch):
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "x"}
    opened, closed = [], []
    create_session, close = AnymailRequestsBackend.create_session, AnymailRequestsBackend.close

    def spy_create(backend):
        opened.append(create_session(backend))
        return opened[-1]

    def spy_close(backend):
        closed.append(backend.session)
        close(backend)

    monkeypatch.setattr(AnymailRequestsBackend, "create_session", spy_create)
    monkeypatch.setattr(AnymailRequestsBackend, "close", spy_close)
    deliveries = [DeliveryFactory(send_at=NOW) for _ in range(3)]
    with responses.RequestsMock() as mock:
        for d in deliveries:
            answer = {"To": d.address, "MessageID": f"pm-{d.id}", "ErrorCode": 0, "Message": "OK"}
            mock.post("https://api.postmarkapp.com/email", json=answer)
        assert dispatch_due(now=NOW).sent == 3
    assert len(opened) == 1 and closed == opened  # one session, closed with the round
    sent = dict(Delivery.objects.values_list("id", "provider_message_id"))
    assert sent == {d.id: f"pm-{d.id}" for d in deliveries}


@pytest.mark.django_db
def test_a_claim_with_nothing_due_reads_once_and_opens_no_transaction():
    DeliveryFactory(send_at=NOW + timedelta(minutes=5))  # not due yet
    DeliveryFactory(send_at=NOW, channel="sms", address="+14155550123")  # another channel
    with CaptureQueriesContext(connections["default"]) as queries:
        assert dispatch.claim_due(now=NOW, limit=10, channel="email") == []
    assert len(queries) == 1 and queries[0]["sql"].startswith("SELECT"), queries.captured_queries
    claimed = dispatch.claim_due(now=NOW, limit=10, channel="sms")
    assert [d.channel for d in claimed] == ["sms"]


@pytest.mark.django_db
def test_a_drain_looks_before_the_first_claim_of_each_channel_only(settings):
    settings.DISPATCH_BATCH_SIZE = 2
    for _ in range(5):
        DeliveryFactory(send_at=NOW)
    with CaptureQueriesContext(connections["default"]) as queries:
        assert dispatch_due(now=NOW).sent == 5
    looks = [
        q["sql"]
        for q in queries
        if q["sql"].startswith('SELECT 1 AS "a" FROM "notifications_delivery"')
        and '"send_at" <=' in q["sql"]
    ]
    # email (claims of 2, 2 and 1: looked before the first), sms, whatsapp (nothing due)
    assert len(looks) == 3
    assert sum("\"channel\" = 'email'" in sql for sql in looks) == 1


def test_a_quick_claim_doubles_the_next_up_to_the_most_and_a_slow_one_goes_back(settings):
    settings.DISPATCH_BATCH_SIZE, settings.DISPATCH_MAX_BATCH_SIZE = 20, 100
    assert dispatch.next_claim_size(20, seconds=0.1) == 40
    assert dispatch.next_claim_size(80, seconds=0.1) == 100
    assert dispatch.next_claim_size(40, seconds=1.0) == 40  # about right: kept
    assert dispatch.next_claim_size(80, seconds=2.5) == 20  # a slow provider: back to base


@pytest.mark.django_db
def test_a_round_with_a_quick_provider_claims_more_each_time(settings):
    settings.DISPATCH_BATCH_SIZE, settings.DISPATCH_MAX_BATCH_SIZE = 2, 8
    for _ in range(20):
        DeliveryFactory(send_at=NOW)
    with CaptureQueriesContext(connections["default"]) as queries:
        report = dispatch_due(now=NOW)  # on a clock where no time passes
    claims = [
        q["sql"]
        for q in queries
        if q["sql"].startswith('UPDATE "notifications_delivery" SET "status" = \'sending\'')
    ]
    assert report.sent == 20
    assert len(claims) == 4  # 2, 4, 8 and the last 6
    assert Delivery.objects.filter(status="sent").count() == 20


@pytest.mark.django_db
def test_each_accepted_delivery_gets_one_sent_event_with_its_own_time_and_provider():
    first, second = DeliveryFactory(send_at=NOW), DeliveryFactory(send_at=NOW)
    later = NOW + timedelta(seconds=3)
    dispatch.record_sent(
        [
            dispatch.Handover(_claimed(first), "anymail", "id-1", NOW),
            dispatch.Handover(_claimed(second), "twilio", "id-2", later),
        ],
        now=later,
    )
    events = {e.delivery_id: e for e in DeliveryEvent.objects.filter(kind="sent")}
    assert (events[first.id].at, events[first.id].reason) == (NOW, "accepted by anymail")
    assert (events[second.id].at, events[second.id].reason) == (later, "accepted by twilio")
    assert events[first.id].data == {} and events[first.id].provider_event_id == ""
    assert DeliveryEvent.objects.count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize("count", [2, 30])
def test_accepted_deliveries_are_written_with_their_own_outcome_in_constant_queries(count):
    claimed = [_claimed(DeliveryFactory(send_at=NOW)) for _ in range(count)]
    untouched = DeliveryFactory(send_at=NOW)  # not handed over: must not be written
    handovers = [
        dispatch.Handover(d, "anymail", f"<{d.id}@herald>", NOW + timedelta(milliseconds=i))
        for i, d in enumerate(claimed)
    ]
    with CaptureQueriesContext(connections["default"]) as queries:
        dispatch.record_sent(handovers, now=NOW + timedelta(seconds=1))
    written = {d.id: d for d in Delivery.objects.filter(id__in=[d.id for d in claimed])}
    for i, delivery in enumerate(claimed):
        row = written[delivery.id]
        assert (row.status, row.provider, row.provider_message_id) == (
            "sent",
            "anymail",
            f"<{delivery.id}@herald>",
        )
        assert row.sent_at == NOW + timedelta(milliseconds=i)
        assert row.status_reason == "accepted by anymail"
        assert row.updated_at == NOW + timedelta(seconds=1)
    assert Delivery.objects.get(id=untouched.id).status == "scheduled"
    assert DeliveryEvent.objects.filter(kind="sent").count() == count
    # the write, the events, the provider's early reports; plus the transaction
    assert len([q for q in queries if "SAVEPOINT" not in q["sql"]]) <= 5, queries.captured_queries


def _sent_by_two_providers(count):
    claimed = [_claimed(DeliveryFactory(send_at=NOW)) for _ in range(count)]
    handovers = [
        dispatch.Handover(d, "twilio" if i % 2 else "anymail", f"m{d.id}", NOW)
        for i, d in enumerate(claimed)
    ]
    with CaptureQueriesContext(connections["default"]) as queries:
        dispatch.record_sent(handovers, now=NOW)
    return claimed, [q["sql"] for q in queries if 'UPDATE "notifications_delivery"' in q["sql"]]


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's own statement")
@pytest.mark.django_db
def test_on_sqlite_each_providers_outcomes_are_one_update_sent_for_each_row():
    claimed, updates = _sent_by_two_providers(10)
    assert [sql.split(":")[0] for sql in updates] == ["5 times", "5 times"]  # executemany
    rows = Delivery.objects.filter(id__in=[d.id for d in claimed]).order_by("id")
    assert [(r.status, r.provider, r.provider_message_id, r.sent_at) for r in rows] == [
        ("sent", "twilio" if i % 2 else "anymail", f"m{d.id}", NOW) for i, d in enumerate(claimed)
    ]
    assert DeliveryEvent.objects.filter(kind="sent").count() == 10


@pytest.mark.postgres
@pytest.mark.django_db
def test_on_postgresql_each_providers_outcomes_and_their_events_are_one_statement():
    assert connection.vendor == "postgresql"
    with CaptureQueriesContext(connections["default"]) as queries:
        claimed, updates = _sent_by_two_providers(30)
    assert len(updates) == 2
    assert all("json_to_recordset" in sql and "INSERT INTO" in sql for sql in updates)
    events_apart = [q["sql"] for q in queries if q["sql"].startswith("INSERT INTO")]
    assert [sql for sql in events_apart if "deliveryevent" in sql] == []
    rows = Delivery.objects.filter(id__in=[d.id for d in claimed]).order_by("id")
    assert [(r.status, r.provider, r.provider_message_id, r.sent_at) for r in rows] == [
        ("sent", "twilio" if i % 2 else "anymail", f"m{d.id}", NOW) for i, d in enumerate(claimed)
    ]
    assert DeliveryEvent.objects.filter(kind="sent").count() == 30


@pytest.mark.django_db
def test_with_a_slow_provider_accepted_deliveries_are_written_within_a_second(settings):
    """Sends paced two a second: before the handover at 1 s, the two before it are written
    (the oldest would have waited a second); then those at 1 and 1.5 s before the one at
    2 s, which is written at the end of the claim."""
    settings.SENDER_DEFAULT_RATES = {"email": 2.0, "sms": 2.0, "whatsapp": 2.0}
    settings.DISPATCH_WRITE_BATCH, settings.PACING_HORIZON_SECONDS = 1000, 10
    deliveries = [DeliveryFactory(send_at=NOW) for _ in range(5)]
    assert dispatch_due(now=NOW).sent == 5
    rows = Delivery.objects.filter(id__in=[d.id for d in deliveries]).order_by("sent_at", "id")
    assert [(r.sent_at - NOW, r.updated_at - NOW) for r in rows] == [
        (timedelta(seconds=0), timedelta(seconds=0.5)),
        (timedelta(seconds=0.5), timedelta(seconds=0.5)),
        (timedelta(seconds=1), timedelta(seconds=1.5)),
        (timedelta(seconds=1.5), timedelta(seconds=1.5)),
        (timedelta(seconds=2), timedelta(seconds=2)),
    ]


@pytest.mark.django_db
def test_a_provider_id_that_is_not_text_is_stored_as_text():
    delivery = _claimed(DeliveryFactory(send_at=NOW))
    dispatch.record_sent([dispatch.Handover(delivery, "twilio", 4711, NOW)], now=NOW)
    assert Delivery.objects.get(id=delivery.id).provider_message_id == "4711"


@pytest.mark.django_db
def test_a_delivery_changed_while_it_was_being_sent_still_records_that_the_provider_took_it():
    kept, changed = DeliveryFactory(send_at=NOW), DeliveryFactory(send_at=NOW)
    claimed = [_claimed(kept), _claimed(changed)]
    Delivery.objects.filter(id=changed.id).update(status="cancelled")  # staff, meanwhile
    dispatch.record_sent(
        [dispatch.Handover(d, "anymail", f"id-{d.id}", NOW) for d in claimed], now=NOW
    )
    assert Delivery.objects.get(id=kept.id).status == "sent"
    assert Delivery.objects.get(id=changed.id).status == "cancelled"  # not overwritten
    sent = DeliveryEvent.objects.filter(kind="sent")
    assert sorted(sent.values_list("delivery_id", flat=True)) == sorted([kept.id, changed.id])


def _claimed(delivery: Delivery) -> Delivery:
    Delivery.objects.filter(id=delivery.id).update(status="sending")
    delivery.refresh_from_db()
    return delivery


@pytest.mark.django_db
@pytest.mark.parametrize(
    "backend, provider",
    [
        ("notifications.channels.recording.EmailBackend", "recording"),
        ("anymail.backends.test.EmailBackend", "anymail"),
    ],
)
def test_an_email_names_the_provider_that_took_it(settings, backend, provider):
    """The development backend sends nothing: its deliveries do not claim an ESP took them."""
    settings.EMAIL_BACKEND = backend
    delivery = DeliveryFactory(send_at=NOW)
    dispatch_due(now=NOW)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider) == ("sent", provider)
    assert delivery.status_reason == f"accepted by {provider}"
    assert RecordedMessage.objects.exists() is (provider == "recording")


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's query plan")
@pytest.mark.django_db
def test_the_lookups_by_message_id_context_and_fallback_use_their_partial_indexes():
    """A batch's email (no message id yet, no context, no fallback) is in none of these
    three indexes, so its claim and outcome do not write them; the lookups that need them
    still find their rows through them (SQLite uses a partial index only when the query
    holds its condition)."""
    from notifications.tracking import _find_delivery
    from production_runs.dispatcher import recently_sent

    original = DeliveryFactory(provider_message_id="pm-1", context_key="kiosk_offline:1:2")
    fallback = DeliveryFactory(fallback_of=original)
    DeliveryFactory.create_batch(3)  # in none of the three
    lookups = {
        "delivery_provider_id": lambda: _find_delivery("anymail", "pm-1"),
        "delivery_context_time": lambda: recently_sent(
            "kiosk_offline:1:2", now=original.created_at, exclude_prefix="other"
        ),
        "delivery_fallback_of": lambda: list(original.fallbacks.all()),
    }
    found = {}
    for index, lookup in lookups.items():
        with CaptureQueriesContext(connection) as queries:
            found[index] = lookup()
        sql = next(
            q["sql"] for q in queries.captured_queries if "notifications_delivery" in q["sql"]
        )
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
            plan = " ".join(str(row[-1]) for row in cursor.fetchall())
        assert f"USING INDEX {index}" in plan, (index, plan)
    assert found == {
        "delivery_provider_id": original,
        "delivery_context_time": original,
        "delivery_fallback_of": [fallback],
    }
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA index_list(notifications_delivery)")
        partial = {row[1]: row[4] for row in cursor.fetchall()}
    assert [partial[name] for name in lookups] == [1, 1, 1]


@pytest.mark.django_db
def test_a_claim_a_slow_provider_makes_last_long_is_not_taken_for_a_dead_worker(settings):
    """Five emails at 200 s each (time moved by the provider fake, never slept): by the
    fourth the claim was 600 s old and another worker's minute sweep marked the rest
    "unknown: worker stopped while sending", which this worker then sent all the same."""
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "x"}
    settings.DISPATCH_SENDING_TIMEOUT_SECONDS = 600
    DeliveryFactory.create_batch(5, send_at=NOW)
    clock = ManualClock(NOW)
    swept = []

    def slow_postmark(request):
        clock.current += timedelta(seconds=200)
        swept.append(dispatch.mark_stuck_unknown(now=clock.current))  # the other worker
        to = json.loads(request.body)["To"]
        answer = {"To": to, "MessageID": f"pm-{len(swept)}", "ErrorCode": 0, "Message": "OK"}
        return 200, {}, json.dumps(answer)

    with responses.RequestsMock() as mock:
        mock.add_callback(responses.POST, "https://api.postmarkapp.com/email", slow_postmark)
        report = dispatch.dispatch_due(now=NOW, clock=clock)
    assert swept == [0, 0, 0, 0, 0]
    assert report.sent == 5
    assert set(Delivery.objects.values_list("status", flat=True)) == {"sent"}
    assert not DeliveryEvent.objects.filter(kind="unknown").exists()
