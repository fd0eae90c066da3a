import factory

from cadence.models import Persona, Stakeholder


class PersonaFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Persona
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"persona {n}")


class StakeholderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Stakeholder

    name = factory.Sequence(lambda n: f"Stakeholder {n}")
    email = factory.LazyAttribute(lambda o: f"{o.name.split()[0].lower()}@sites.example.org")
    phone = factory.Sequence(lambda n: f"+1415555{n % 10000:04d}")
    persona = factory.SubFactory(PersonaFactory)
    time_zone = "UTC"


# Time zones the cadence tests draw from: whole and half hours, both hemispheres, a
# 30-minute DST shift (Lord Howe) and DST changes at midnight (Santiago: no regular periods
# on those days).
ZONES = [
    "UTC",
    "Asia/Kolkata",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "America/Santiago",
]
