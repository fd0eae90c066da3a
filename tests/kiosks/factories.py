from datetime import timedelta

import factory
from django.utils import timezone

from kiosks.models import Kiosk, MoraleResponse, Project


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Project {n}")


class KioskFactory(factory.django.DjangoModelFactory):
    """A healthy kiosk that has just sent a heartbeat."""

    class Meta:
        model = Kiosk

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"K-{n}")
    battery_level = 90
    last_heartbeat_at = factory.LazyFunction(timezone.now)
    created_at = factory.LazyAttribute(
        lambda o: (o.last_heartbeat_at or timezone.now()) - timedelta(days=30)
    )


class MoraleResponseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MoraleResponse

    project = factory.SubFactory(ProjectFactory)
    score = 4
    submitted_at = factory.LazyFunction(timezone.now)
