"""Bad input, wherever it is given, gets a clear error there and writes nothing."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import models as dj_models
from django_celery_beat.models import CrontabSchedule

from cadence.models import Stakeholder
from kiosks.models import Heartbeat
from notifications import batch
from notifications.models import (
    Customer,
    MessageTemplate,
    ProposedAction,
    Suppression,
    WorkflowRun,
)
from production_runs.whatsapp_templates import SpecProblem, TemplateSpec, validate_spec
from tests.notifications.factories import CustomerFactory

pytestmark = pytest.mark.django_db


def _all_counts():
    """Rows in every table the inputs below could have written to."""
    tables: list[type[dj_models.Model]] = [
        WorkflowRun, ProposedAction, MessageTemplate, Stakeholder, Customer, CrontabSchedule,
        Heartbeat,
    ]  # fmt: skip
    return {model.__name__: model.objects.count() for model in tables}


def launch(**changes):
    values = {
        "cohort_filter": "bid=B5875",
        "subject": "Hi",
        "body_template": "Hello {{ customer_name }}",
    }
    values.update(changes)
    return lambda: batch.batch_launch(
        user=get_user_model().objects.get(username="mike"), now=batch_now(), **values
    )


def batch_now():
    from django.utils import timezone

    return timezone.now()


def template(**changes):
    values = {"name": "t", "channel": "email", "subject": "s", "body": "b", "variables": ["name"]}
    values.update(changes)
    return lambda: MessageTemplate(**values).full_clean()


def stakeholder(phone):
    return lambda: Stakeholder(name="Ops", phone=phone, email="ops@example.com").full_clean()


def customer(phone):
    return lambda: Customer(company_name="X", account_ref="R-1", phone=phone).full_clean()


def crontab(**fields):
    values = {"minute": "0", "hour": "10", "day_of_week": "1-5", "timezone": "Asia/Kolkata"}
    values.update(fields)
    return lambda: CrontabSchedule(**values).full_clean()


def whatsapp_spec(body, examples):
    spec = TemplateSpec(
        name="production_run_idle_reminder",
        family="reminder",
        variables=("partner_name", "design_name", "run_id"),
        bodies={"en": body},
        examples={"en": examples},
    )
    return lambda: validate_spec(spec)


CASES = [
    (
        "unknown cohort field",
        launch(cohort_filter="colour=red"),
        ValidationError,
        "Unknown filter field colour",
    ),
    (
        "cohort value of the wrong type",
        launch(cohort_filter="id=abc"),
        ValidationError,
        "Enter a whole number",
    ),
    (
        "cohort field given twice",
        launch(cohort_filter="bid=B5875&bid=B6120"),
        ValidationError,
        "The filter field bid is given more than once",
    ),
    ("empty cohort filter", launch(cohort_filter=""), ValidationError, "Give a filter"),
    (
        "cohort filter too long (SQLite: LIKE or GLOB pattern too complex)",
        launch(cohort_filter="company=" + "x" * 50_001),
        ValidationError,
        "A filter is at most 2,000 characters; this one has 50,009.",
    ),
    (
        "an & inside a value, not written %26",
        launch(cohort_filter="company=Smith & Sons"),
        ValidationError,
        "(an & inside a value is written %26: company=Smith %26 Sons)",
    ),
    (
        "a subject that renders empty",
        launch(subject="{% for c in customer_name %}{% endfor %}"),
        batch.BatchBlocked,
        "The subject renders empty (for ",
    ),
    (
        "a body that renders empty",
        launch(body_template="{% comment %}all{% endcomment %}"),
        batch.BatchBlocked,
        "The body renders empty (for ",
    ),
    (
        "empty cohort",
        launch(cohort_filter="bid=NOBODY"),
        batch.BatchBlocked,
        "selects no reachable customer",
    ),
    ("negative max_recipients", launch(max_recipients=-5), ValidationError, "between 1 and"),
    ("huge max_recipients", launch(max_recipients=10**9), ValidationError, "between 1 and"),
    ("template syntax error", launch(body_template="{% if %}"), ValidationError, "syntax error"),
    (
        "unknown template variable",
        launch(body_template="Hi {{ nickname }}"),
        ValidationError,
        "nickname",
    ),
    (
        "message template syntax",
        template(body="{{ name|shout }}"),
        ValidationError,
        "Invalid filter",
    ),
    ("message template variable", template(body="{{ other }}"), ValidationError, "other"),
    (
        "SMS body over Twilio's limit",
        template(channel="sms", subject="", body="x" * 1601),
        ValidationError,
        "An SMS is at most 1,600 characters (Twilio's limit); this body has 1,601 before",
    ),
    (
        "sample context that is not an object",
        template(sample_context=[1]),
        ValidationError,
        "Give an object of sample values",
    ),
    (
        "phone without country code",
        stakeholder("4155550100"),
        ValidationError,
        "'4155550100': it needs + and the country code (e.g. +14155550100).",
    ),
    (
        "phone that does not exist",
        stakeholder("+1415555"),
        ValidationError,
        "'+1415555' is not a valid number for +1: check its digits",
    ),
    (
        "phone with an unknown country code",
        stakeholder("+999123456"),
        ValidationError,
        "'+999123456': it does not start with a known country code",
    ),
    (
        "phone not written in E.164",
        stakeholder("+1 415 555 0100"),
        ValidationError,
        "Write '+1 415 555 0100' in E.164 form: +14155550100.",
    ),
    ("customer phone with letters", customer("+1 call me"), ValidationError, "phone"),
    (
        "SMS suppression that is not a phone number",
        lambda: Suppression(address="not-a-phone", channel="sms", reason="manual").full_clean(),
        ValidationError,
        "'not-a-phone': it is not a phone number",
    ),
    (
        "email suppression that is not an email address",
        lambda: Suppression(address="ops@@example", channel="email", reason="manual").full_clean(),
        ValidationError,
        "Give an email address, e.g. ops@example.com.",
    ),
    ("cron minute out of range", crontab(minute="61"), ValidationError, "minute"),
    ("cron hour out of range", crontab(hour="25"), ValidationError, "hour"),
    ("cron weekday garbage", crontab(day_of_week="funday"), ValidationError, "day_of_week"),
    (
        "WhatsApp body with too few variables",
        whatsapp_spec("Hi {{1}}, run {{2}} waits.", ("a", "b", "c")),
        SpecProblem,
        "the variables need [1, 2, 3]",
    ),
    (
        "WhatsApp example of the wrong length",
        whatsapp_spec("Hi {{1}}, {{2}} run {{3}} waits.", ("a", "b")),
        SpecProblem,
        "the example has 2 values",
    ),
]


@pytest.mark.parametrize("label, attempt, error, says", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly_and_writes_nothing(label, attempt, error, says):
    get_user_model().objects.create_superuser("mike", "mike@example.com", "pw")
    CustomerFactory(company_name="مدرسة النور 🌟")  # Unicode/RTL/emoji data is not bad input
    before = _all_counts()
    with pytest.raises(error) as caught:
        attempt()
    message = json.dumps(
        getattr(caught.value, "message_dict", None) or str(caught.value), ensure_ascii=False
    )
    assert says in message
    assert _all_counts() == before


def test_a_malformed_heartbeat_names_the_field_and_writes_nothing(client):
    from kiosks.models import Kiosk, Project

    kiosk = Kiosk.objects.create(project=Project.objects.create(name="Hudson Yards"), name="K-1")
    response = client.post(
        f"/kiosks/{kiosk.id}/heartbeat",
        data=json.dumps({"charging": True, "screen_state": "on", "battery_level": 140}),
        content_type="application/json",
        HTTP_X_KIOSK_TOKEN=kiosk.token,
    )
    assert response.status_code == 400
    assert response.json()["field"] == "battery_level"
    assert not Heartbeat.objects.exists()
