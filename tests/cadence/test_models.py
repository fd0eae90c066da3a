import pytest
from django.core.exceptions import ValidationError

from cadence.models import Persona, Stakeholder
from cadence.policy import DEFAULT_RULES, Rules
from tests.cadence.factories import PersonaFactory, StakeholderFactory

pytestmark = pytest.mark.django_db


def test_a_new_persona_has_the_seeds_defaults():
    assert Persona.objects.create(name="Anyone").rules() == DEFAULT_RULES


def test_a_stakeholder_inherits_blank_fields_and_overrides_filled_ones():
    manager = PersonaFactory(
        name="Manager", cooldown_hours=2, max_per_day=5, max_per_week=20, max_alert_per_day=3
    )
    alice = StakeholderFactory(persona=manager, max_per_day=1, max_alert_per_day=1)
    assert alice.rules() == Rules(
        cooldown_hours=2,
        max_per_day=1,
        max_per_week=20,
        max_per_month=0,
        type_limits={"report": 2, "alert": 1, "story_so_far": 1, "custom": 2},
    )
    assert alice.overrides() == {"max_per_day": 1, "max_alert_per_day": 1}


def test_a_stakeholder_without_persona_gets_the_defaults_and_their_overrides():
    person = StakeholderFactory(persona=None, cooldown_hours=0)
    assert person.rules() == Rules(**{**DEFAULT_RULES.__dict__, "cooldown_hours": 0})


def test_an_override_of_zero_means_unlimited_not_inherit():
    person = StakeholderFactory(persona=PersonaFactory(max_per_week=2), max_per_week=0)
    assert person.rules().max_per_week == 0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"phone": "0415 555"}, "phone"),
        ({"preferred_channel": "sms", "phone": ""}, "phone"),
        ({"fallback_channel": "email"}, "fallback_channel"),
        ({"cooldown_hours": -1}, "cooldown_hours"),
    ],
)
def test_stakeholder_validation_names_the_field(fields, field):
    person = Stakeholder(name="X", email="x@example.org", **fields)
    with pytest.raises(ValidationError) as caught:
        person.full_clean()
    assert field in caught.value.message_dict
