from datetime import UTC, datetime, timedelta

import pytest

from notifications.models import Delivery, DeliveryEvent, Suppression, UnmatchedProviderEvent
from notifications.tracking import (
    apply_provider_event,
    is_suppressed,
    match_pending,
    match_unmatched,
    match_unmatched_many,
    suppress,
    suppressions_for,
)
from tests.notifications.factories import DeliveryFactory

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


def _sent(**fields):
    defaults = {"status": "sent", "provider": "anymail", "provider_message_id": "msg-1"}
    return DeliveryFactory(**{**defaults, "sent_at": NOW, **fields})


def _report(kind, *, event_id=None, message_id="msg-1", provider="anymail", at=NOW, data=None):
    return apply_provider_event(
        provider=provider,
        provider_message_id=message_id,
        kind=kind,
        provider_event_id=event_id if event_id is not None else f"{message_id}:{kind}",
        at=at,
        data=data or {},
        now=NOW,
    )


def _status(delivery):
    delivery.refresh_from_db()
    return delivery.status


def test_a_report_is_recorded_and_moves_the_status_forward():
    delivery = _sent()
    assert _report("delivered", at=NOW + timedelta(seconds=5)) == "recorded"
    assert _status(delivery) == "delivered"
    event = delivery.events.get()
    assert (event.kind, event.at, event.provider_event_id) == (
        "delivered",
        NOW + timedelta(seconds=5),
        "msg-1:delivered",
    )


def test_a_late_delivered_after_opened_keeps_opened():
    delivery = _sent()
    _report("opened")
    _report("delivered")
    assert _status(delivery) == "opened"
    assert sorted(delivery.events.values_list("kind", flat=True)) == ["delivered", "opened"]


def test_delivered_arriving_before_sent_ends_at_delivered():
    delivery = _sent(status="unknown", sent_at=None)
    _report("delivered", at=NOW)
    _report("sent", at=NOW - timedelta(seconds=2))
    assert _status(delivery) == "delivered"
    assert delivery.sent_at == NOW  # an unknown delivery the provider did have: now it is known


def test_the_same_provider_event_twice_is_recorded_once():
    delivery = _sent()
    assert _report("clicked", event_id="evt-9") == "recorded"
    assert _report("clicked", event_id="evt-9") == "duplicate"
    assert delivery.events.count() == 1
    assert _status(delivery) == "clicked"


def test_a_deferral_after_delivery_changes_nothing():
    delivery = _sent(status="delivered")
    assert _report("deferred") == "recorded"
    assert _status(delivery) == "delivered"


@pytest.mark.parametrize("kind", ["bounced", "failed"])
def test_a_failure_after_an_open_does_not_hide_the_open(kind):
    delivery = _sent(status="opened")
    _report(kind)
    assert _status(delivery) == "opened"


def test_a_failure_report_marks_a_sent_delivery_failed_with_the_reason():
    delivery = _sent(provider="twilio")
    _report("failed", provider="twilio", data={"reason": "Twilio undelivered (error 30003)"})
    delivery.refresh_from_db()
    assert (delivery.status, delivery.status_reason, delivery.last_error) == (
        "failed",
        "Twilio undelivered (error 30003)",
        "Twilio undelivered (error 30003)",
    )
    assert not Suppression.objects.exists()  # an unreachable handset is not an opt-out


def test_a_complaint_wins_over_an_open():
    delivery = _sent(status="opened")
    _report("complained")
    assert _status(delivery) == "complained"
    assert Suppression.objects.get().reason == "complaint"


def test_a_hard_bounce_suppresses_the_address_lower_cased():
    delivery = _sent(address="Jane.Doe@Example.COM")
    _report("bounced", event_id="901542550")
    assert _status(delivery) == "bounced"
    suppression = Suppression.objects.get()
    assert (suppression.address, suppression.channel, suppression.reason) == (
        "jane.doe@example.com",
        "email",
        "bounce",
    )
    assert "anymail bounced event 901542550" in suppression.source
    assert is_suppressed("JANE.DOE@example.com", "email") == suppression


def test_a_soft_bounce_does_not_suppress():
    delivery = _sent()
    _report("bounced", data={"suppress": ""})
    assert _status(delivery) == "bounced"
    assert not Suppression.objects.exists()


def test_an_unsubscribe_report_suppresses_but_keeps_the_status():
    delivery = _sent(status="delivered")
    _report("unsubscribed")
    assert _status(delivery) == "delivered"
    assert Suppression.objects.get().reason == "unsubscribe"
    assert delivery.events.get().kind == "unsubscribed"


def test_a_report_for_an_unknown_message_is_kept_then_matched_later():
    assert _report("delivered", message_id="early-1") == "unmatched"
    assert _report("delivered", message_id="early-1") == "unmatched_duplicate"
    assert _report("opened", message_id="early-1", at=NOW + timedelta(minutes=1)) == "unmatched"
    assert not DeliveryEvent.objects.exists()
    assert UnmatchedProviderEvent.objects.count() == 2

    delivery = _sent(provider_message_id="early-1")
    assert match_unmatched(delivery, now=NOW) == 2
    assert _status(delivery) == "opened"
    assert sorted(delivery.events.values_list("kind", flat=True)) == ["delivered", "opened"]
    assert set(UnmatchedProviderEvent.objects.values_list("matched_delivery", flat=True)) == {
        delivery.id
    }
    assert match_unmatched(delivery, now=NOW) == 0
    assert delivery.events.count() == 2


def test_reports_that_arrived_before_a_batch_was_written_are_applied_to_their_deliveries(
    django_assert_num_queries,
):
    sent = [_sent(provider_message_id=f"m-{i}") for i in range(3)]
    # a report kept two hours ago for an id that is not Herald's (nor ever will be)
    assert (
        apply_provider_event(
            provider="anymail",
            provider_message_id="stray",
            kind="delivered",
            provider_event_id="stray:delivered",
            at=NOW - timedelta(hours=2),
            data={},
            now=NOW - timedelta(hours=2),
        )
        == "unmatched"
    )
    with django_assert_num_queries(1):  # none waiting lately: one look, the ids are not sent
        assert match_unmatched_many(sent, now=NOW) == 0
    Delivery.objects.update(provider_message_id="")  # as if the write had not happened yet
    assert _report("delivered", message_id="m-1") == "unmatched"
    assert _report("bounced", message_id="elsewhere") == "unmatched"
    for delivery in sent:  # the batch's write
        delivery.save(update_fields=["provider_message_id"])
    assert match_unmatched_many(sent, now=NOW) == 1
    assert [_status(d) for d in sent] == ["sent", "delivered", "sent"]
    assert UnmatchedProviderEvent.objects.get(provider_message_id="m-1").matched_delivery == sent[1]
    assert (
        UnmatchedProviderEvent.objects.get(provider_message_id="elsewhere").matched_delivery is None
    )


def test_an_early_report_for_a_provider_id_that_is_not_text_is_applied_at_the_write():
    delivery = _sent(provider_message_id="")
    assert _report("delivered", message_id="4711") == "unmatched"
    Delivery.objects.filter(id=delivery.id).update(provider_message_id="4711")
    delivery.provider_message_id = 4711  # as the provider gave it (Twilio-like numbers)
    assert match_unmatched_many([delivery], now=NOW) == 1
    assert _status(delivery) == "delivered"


def test_an_unmatched_bounce_suppresses_once_matched():
    _report("bounced", message_id="early-2")
    assert not Suppression.objects.exists()
    delivery = _sent(provider_message_id="early-2")
    match_unmatched(delivery, now=NOW)
    assert _status(delivery) == "bounced"
    assert Suppression.objects.get().address == delivery.address


def test_a_delivery_without_a_provider_id_matches_nothing():
    _report("delivered", message_id="early-3")
    delivery = DeliveryFactory()
    assert match_unmatched(delivery, now=NOW) == 0


def test_an_unknown_kind_is_a_programming_error():
    _sent()
    with pytest.raises(ValueError):
        _report("teleported")


def test_the_delivery_of_the_reporting_provider_wins_a_message_id_clash():
    other = _sent(provider="whatsapp_cloud", provider_message_id="same")
    mine = _sent(provider="twilio", provider_message_id="same")
    _report("delivered", provider="twilio", message_id="same")
    assert (_status(mine), _status(other)) == ("delivered", "sent")


def test_suppress_keeps_the_first_entry():
    first = suppress(
        address="A@example.com", channel="email", reason="bounce", source="x", by="t", now=NOW
    )
    again = suppress(
        address="a@example.com", channel="email", reason="manual", source="y", by="t", now=NOW
    )
    assert again.pk == first.pk and again.reason == "bounce"
    assert is_suppressed("a@example.com", "sms") is None


def test_suppressions_for_screens_a_batch_in_one_query(django_assert_num_queries):
    for address in ["a@example.com", "b@example.com"]:
        suppress(address=address, channel="email", reason="bounce", source="", by="t", now=NOW)
    suppress(address="c@example.com", channel="sms", reason="manual", source="", by="t", now=NOW)
    with django_assert_num_queries(1):
        found = suppressions_for(["A@example.com", "c@example.com", "d@example.com"], "email")
    assert list(found) == ["A@example.com"]
    assert found["A@example.com"].address == "a@example.com"


def test_cancelled_deliveries_are_not_revived_by_reports():
    delivery = _sent(status=Delivery.Status.CANCELLED)
    _report("delivered")
    assert _status(delivery) == "cancelled"


def test_the_sweep_matches_reports_that_missed_the_send():
    _report("delivered", message_id="late-1")
    _report("sent", message_id="nobody")
    delivery = _sent(provider_message_id="late-1")
    assert match_pending(now=NOW) == 1
    assert _status(delivery) == "delivered"
    assert match_pending(now=NOW) == 0
    assert UnmatchedProviderEvent.objects.filter(matched_delivery__isnull=True).count() == 1


def _stored(kind, message_id, **fields):
    from notifications.models import ProviderReport

    return ProviderReport.objects.create(
        provider="anymail",
        provider_message_id=message_id,
        kind=kind,
        provider_event_id=f"{message_id}:{kind}",
        at=NOW,
        **fields,
    )


def test_a_report_that_raises_is_put_back_and_the_others_of_its_claim_are_applied():
    """One report raising stopped the sweep: the rest of its claim kept their claim token
    unprocessed, and no later sweep took them again (their deliveries never moved)."""
    from notifications.tracking import REPORT_MAX_ATTEMPTS, apply_pending_reports

    first, second = _sent(provider_message_id="m-1"), _sent(provider_message_id="m-2")
    _stored("delivered", "m-1")
    poison = _stored("teleported", "m-1")  # a kind no delivery event has: it raises
    _stored("delivered", "m-2")

    assert apply_pending_reports(now=NOW) == 2
    assert (_status(first), _status(second)) == ("delivered", "delivered")
    poison.refresh_from_db()
    assert (poison.attempts, poison.claim_token, poison.processed_at) == (1, None, None)

    for _ in range(REPORT_MAX_ATTEMPTS - 1):
        assert apply_pending_reports(now=NOW) == 0
    poison.refresh_from_db()
    assert (poison.attempts, poison.outcome, poison.processed_at) == (5, "failed", NOW)


def test_a_claim_its_worker_never_finished_is_taken_again_after_15_minutes():
    import uuid

    from notifications.tracking import apply_pending_reports

    delivery = _sent(provider_message_id="m-1")
    stranded = _stored(
        "delivered", "m-1", claim_token=uuid.uuid4(), claimed_at=NOW - timedelta(minutes=10)
    )
    assert apply_pending_reports(now=NOW) == 0  # its worker may still be at it
    assert apply_pending_reports(now=NOW + timedelta(minutes=6)) == 1
    stranded.refresh_from_db()
    assert (stranded.outcome, _status(delivery)) == ("recorded", "delivered")
