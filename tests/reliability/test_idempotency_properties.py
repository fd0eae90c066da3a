"""Property-based: the idempotency key scheme gives one delivery per (run, recipient), however
often and in whatever order the same recipients are staged."""

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifications.models import Delivery
from notifications.outbox import Recipient, stage_deliveries
from tests.notifications.factories import NotificationFactory

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

stagings = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=3),  # run id
        st.lists(st.integers(min_value=1, max_value=20), max_size=15),  # customer ids
    ),
    min_size=1,
    max_size=6,
)


@pytest.mark.django_db
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stagings=stagings)
def test_one_delivery_per_run_and_customer_whatever_the_repeats(stagings):
    Delivery.objects.all().delete()
    notification = NotificationFactory()
    expected = set()
    for run_id, customers in stagings:
        recipients = [
            Recipient(f"customer:{c}", f"c{c}@example.org", {}, idempotency_key=f"{run_id}:{c}")
            for c in customers
        ]
        stage_deliveries(
            notification=notification, recipients=recipients, now=NOW, key_prefix=str(run_id)
        )
        expected |= {f"{run_id}:{c}" for c in customers}
    keys = list(Delivery.objects.values_list("idempotency_key", flat=True))
    assert sorted(keys) == sorted(expected)  # every (run, customer) once, nothing else


pairs = st.tuples(st.integers(min_value=1), st.integers(min_value=1))


@given(first=pairs, second=pairs)
def test_the_key_names_exactly_one_run_and_customer(first, second):
    """`<run>:<customer>` is injective: two keys are equal only for the same pair, so no
    customer of one run can block a customer of another (1:23 is not 12:3)."""
    key = "{}:{}".format
    assert (key(*first) == key(*second)) == (first == second)
