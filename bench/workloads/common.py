"""Data and doors the workloads share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.contrib.auth import get_user_model

# A fixed Monday noon: calendar rules (days, weeks, months) see the same dates every run.
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

SUBJECT = "{{ company_name }}: your {{ school_year }} contract {{ bid }}"
BODY = (
    "Dear {{ customer_name }},\n\n"
    "Your account {{ account_ref }} for {{ region }} is ready for the {{ school_year }} "
    "school year under bid {{ bid }}.\n"
    "{% if region %}Your regional office ({{ region }}) will be in touch this week.{% endif %}\n\n"
    "Kind regards,\nThe operations team"
)


@dataclass
class Context:
    """What the runner hands each workload."""

    scale: float = 1.0  # < 1 only for a quick smoke run (`--quick`)
    vendor: str = "sqlite"
    celery: bool = False  # real Celery workers on Redis are available (bench-postgres)

    def size(self, n: int, minimum: int = 10) -> int:
        return max(minimum, int(n * self.scale))


def staff_user():
    user, _ = get_user_model().objects.get_or_create(
        username="bench", defaults={"is_staff": True, "is_superuser": True}
    )
    return user


def customers(count: int) -> None:
    from notifications.models import Customer

    Customer.objects.bulk_create(
        [
            Customer(
                company_name=f"School {i:05d}",
                email=f"office{i:05d}@school{i % 97}.example.org",
                account_ref=f"NYC-{i:05d}",
                bid="B5875",
                region="NYC DOE",
                school_year="2026-27",
            )
            for i in range(count)
        ],
        batch_size=2000,
    )
