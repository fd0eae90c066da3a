import pytest

from production_runs import demo
from production_runs.discoverer import discover_reminders
from production_runs.models import (
    Partner,
    ProductionRun,
    ProgressUpdate,
    TemplateVariantStatus,
    WhatsAppPlatform,
)
from tests.production_runs.factories import NOW

pytestmark = pytest.mark.django_db


def test_the_demo_world_spans_platforms_languages_and_every_bucket():
    assert demo.seed(NOW) > 0
    assert set(WhatsAppPlatform.objects.values_list("label", flat=True)) == {"IN", "AU"}
    assert Partner.objects.count() == 40
    assert set(Partner.objects.values_list("language", flat=True)) == {"", "en", "hi"}
    assert ProductionRun.objects.count() == 150
    assert ProgressUpdate.objects.exists()
    assert TemplateVariantStatus.objects.filter(status="PENDING").exists()

    summary = discover_reminders(now=NOW, dry_run=True)
    assert all(count > 0 for count in summary["counts"].values())
    assert summary["skipped_no_partner"] > 0 and summary["skipped_not_overdue"] > 0


def test_seeding_twice_adds_nothing():
    demo.seed(NOW)
    assert demo.seed(NOW) == 0
    assert ProductionRun.objects.count() == 150
