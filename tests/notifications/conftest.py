import pytest
from django.contrib.auth.models import User


@pytest.fixture
def mike(db):
    """Seed 001's single admin, who launches and approves batches."""
    return User.objects.create_superuser("mike", "mike@example.com", "pw")
