import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_it_runs_on_postgresql_with_every_migration_applied():
    assert connection.vendor == "postgresql"
    executor = MigrationExecutor(connection)
    assert executor.migration_plan(executor.loader.graph.leaf_nodes()) == []


def test_healthz_is_200_on_postgresql(client):
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
