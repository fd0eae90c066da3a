from datetime import UTC, datetime, timedelta

import factory

from production_runs.models import (
    Design,
    Partner,
    ProductionRun,
    ProgressUpdate,
    RunStatus,
    TemplateStatus,
    TemplateVariantStatus,
    WhatsAppPlatform,
)
from production_runs.whatsapp_templates import SPECS, languages_for_platform

# Monday 23 November 2026, 10:00 in Asia/Kolkata: the schedule's first tick of the week.
NOW = datetime(2026, 11, 23, 4, 30, tzinfo=UTC)
HOUR, DAY = timedelta(hours=1), timedelta(days=1)

PLATFORM_IDS = {
    "IN": ("104000000000091", "109000000000091", "+91"),
    "AU": ("104000000000061", "109000000000061", "+61"),
}


class PlatformFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = WhatsAppPlatform
        django_get_or_create = ("label",)

    label = "IN"
    waba_id = factory.LazyAttribute(lambda o: PLATFORM_IDS.get(o.label, (f"w-{o.label}",))[0])
    phone_number_id = factory.LazyAttribute(
        lambda o: PLATFORM_IDS.get(o.label, ("", f"p-{o.label}"))[1]
    )
    country_codes = factory.LazyAttribute(lambda o: PLATFORM_IDS.get(o.label, ("", "", "+1"))[2])


class PartnerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Partner

    name = factory.Sequence(lambda n: f"Partner {n}")
    whatsapp_number = factory.Sequence(lambda n: f"+91987654{n % 10000:04d}")
    platform = factory.SubFactory(PlatformFactory)


class AUPartnerFactory(PartnerFactory):
    whatsapp_number = factory.Sequence(lambda n: f"+61412345{n % 1000:03d}")
    platform = factory.SubFactory(PlatformFactory, label="AU")


class DesignFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Design

    name = factory.Sequence(lambda n: f"Design {n}")
    image_url = factory.LazyAttribute(lambda o: f"https://cdn.example.com/{o.name}.jpg")


class RunFactory(factory.django.DjangoModelFactory):
    """A run sent to its partner two days ago (assignment pending) unless told otherwise."""

    class Meta:
        model = ProductionRun

    partner = factory.SubFactory(PartnerFactory)
    design = factory.SubFactory(DesignFactory)
    status = RunStatus.SENT_TO_PARTNER
    quantity = 250
    created_at = NOW - 2 * DAY
    updated_at = factory.LazyAttribute(lambda o: o.created_at)


class ProgressUpdateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ProgressUpdate

    run = factory.SubFactory(RunFactory)
    produced_quantity = 10
    at = NOW


def pending_run(age: timedelta = 2 * DAY, **fields) -> ProductionRun:
    return RunFactory(created_at=NOW - age, **fields)


def not_started_run(age: timedelta = 2 * DAY, **fields) -> ProductionRun:
    return RunFactory(created_at=NOW - age - DAY, accepted_at=NOW - age, **fields)


def idle_run(age: timedelta = 4 * DAY, **fields) -> ProductionRun:
    return RunFactory(
        status=RunStatus.IN_PROGRESS,
        created_at=NOW - age - 2 * DAY,
        accepted_at=NOW - age - DAY,
        started_at=NOW - age,
        **fields,
    )


def approve_all(*platforms: WhatsAppPlatform, status: str = TemplateStatus.APPROVED) -> None:
    for platform in platforms:
        for spec in SPECS.values():
            for language in languages_for_platform(platform):
                if language in spec.bodies:
                    TemplateVariantStatus.objects.update_or_create(
                        platform=platform,
                        template_name=spec.name,
                        language=language,
                        defaults={"status": status},
                    )
