import uuid

import pytest
from django.db import connection

from notifications.models import Delivery
from tests.notifications.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


def finds_the_rows_whose_field_is_one_of_the_values_as_in_does():
    rows = [DeliveryFactory(address=f"d{i}@example.com") for i in range(5)]
    token = uuid.UUID(int=7)
    Delivery.objects.filter(id__in=[rows[1].id, rows[3].id]).update(claim_token=token)
    cases = [
        ("id", [rows[0].id, rows[2].id, rows[2].id, 10**9]),  # a repeat, one nobody has
        ("address", ["d1@example.com", "D4@example.com", "d4@example.com", "it's; --"]),
        ("claim_token", [token, uuid.UUID(int=8)]),
    ]
    for name, values in cases:
        given = Delivery.objects.filter(**{f"{name}__any_of": values}).order_by("id")
        expected = Delivery.objects.filter(**{f"{name}__in": values}).order_by("id")
        assert list(given) == list(expected) and given.exists(), name
    assert list(Delivery.objects.filter(id__any_of=[])) == []  # nothing, as __in=[]
    assert list(Delivery.objects.filter(id__any_of=[None])) == []
    # None equals nothing, so it excludes nothing (a NULL in the list would make NOT IN
    # unknown for every row)
    for name, values in (("claim_token", [token, None]), ("id", [rows[0].id, None])):
        given = Delivery.objects.exclude(**{f"{name}__any_of": values}).order_by("id")
        expected = Delivery.objects.exclude(**{f"{name}__in": values}).order_by("id")
        assert list(given) == list(expected) and len(expected) in (3, 4), name
    assert list(Delivery.objects.exclude(id__any_of=[rows[0].id]).order_by("id")) == rows[1:]
    # an update through it
    assert Delivery.objects.filter(id__any_of=[rows[4].id]).update(subject="Changed") == 1
    assert Delivery.objects.get(id=rows[4].id).subject == "Changed"


def sends_the_values_as_one_parameter():
    DeliveryFactory(address="a@example.com")
    sent = []

    def spy(execute, sql, params, many, context):
        sent.append((sql, params))
        return execute(sql, params, many, context)

    for count in (3, 1500):
        values = ["a@example.com"] + [f"x{i}@example.com" for i in range(count - 1)]
        sent.clear()
        with connection.execute_wrapper(spy):
            found = list(Delivery.objects.filter(address__any_of=values).values_list("address"))
        assert found == [("a@example.com",)]
        [(sql, params)] = sent
        assert len(params) == 1 and sql.count("%s") == 1  # whatever the count
    assert ("ANY(" if connection.vendor == "postgresql" else "json_each(") in sql


test_finds_the_rows_whose_field_is_one_of_the_values_as_in_does = (
    finds_the_rows_whose_field_is_one_of_the_values_as_in_does
)
test_sends_the_values_as_one_parameter = sends_the_values_as_one_parameter


@pytest.mark.postgres
def test_on_postgresql_the_values_go_as_one_array():
    assert connection.vendor == "postgresql"
    finds_the_rows_whose_field_is_one_of_the_values_as_in_does()
    Delivery.objects.all().delete()
    sends_the_values_as_one_parameter()


def test_model_instances_and_subqueries_are_refused_with_a_clear_error():
    delivery = DeliveryFactory()
    for values in ([delivery], Delivery.objects.values("id")):
        with pytest.raises(TypeError, match="use __in"):
            list(Delivery.objects.filter(id__any_of=values))
