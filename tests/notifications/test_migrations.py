"""Data migrations, run forward from the migration before them."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)


def _migrate(target):
    executor = MigrationExecutor(connection)
    executor.migrate(target)
    executor.loader.build_graph()
    return executor.loader.project_state(target).apps


def test_templates_of_earlier_batch_launches_are_linked_to_their_runs():
    before = [("notifications", "0015_proposal_help")]
    apps = _migrate(before)
    Workflow = apps.get_model("notifications", "Workflow")
    WorkflowRun = apps.get_model("notifications", "WorkflowRun")
    MessageTemplate = apps.get_model("notifications", "MessageTemplate")
    workflow = Workflow.objects.create(name="batch_notify")
    made = MessageTemplate.objects.create(name="batch_notify run 1", channel="email", body="x")
    staff = MessageTemplate.objects.create(name="Staff's", channel="email", body="y")
    run = WorkflowRun.objects.create(workflow=workflow, inputs={"template_id": made.id})
    WorkflowRun.objects.create(workflow=workflow, inputs={"subject": "no template"})
    # One a trigger workflow picked when batch templates were still offered stays pickable.
    picked = MessageTemplate.objects.create(name="batch_notify run 3", channel="email", body="z")
    WorkflowRun.objects.create(workflow=workflow, inputs={"template_id": picked.id})
    trigger = Workflow.objects.create(name="Kiosk health", type="trigger")
    TriggerEvent = apps.get_model("notifications", "TriggerEvent")
    TriggerEvent.objects.create(workflow=trigger, event="kiosk_offline", template=picked)
    try:
        apps = _migrate([("notifications", "0016_template_batch_run")])
        MessageTemplate = apps.get_model("notifications", "MessageTemplate")
        assert MessageTemplate.objects.get(id=made.id).batch_run_id == run.id
        assert MessageTemplate.objects.get(id=staff.id).batch_run_id is None
        assert MessageTemplate.objects.get(id=picked.id).batch_run_id is None
    finally:
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def _delivery_indexes() -> dict[str, str]:
    """The delivery table's index definitions, by name."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s",
                ["notifications_delivery"],
            )
        else:
            cursor.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = %s",
                ["notifications_delivery"],
            )
        return {name: sql or "" for name, sql in cursor.fetchall()}


def test_the_partial_delivery_indexes_replace_the_whole_ones_and_go_back():
    leaf = MigrationExecutor(connection).loader.graph.leaf_nodes()
    try:
        _migrate([("notifications", "0019_customer_email_readdressed")])
        before = _delivery_indexes()
        assert "WHERE" not in before["delivery_provider_id"]
        assert "delivery_fallback_of" not in before
        assert any("fallback_of_id" in sql for sql in before.values())  # the foreign key's
        _migrate(leaf)
        after = _delivery_indexes()
        assert "WHERE" in after["delivery_provider_id"]
        assert "WHERE" in after["delivery_context_time"]
        assert "IS NOT NULL" in after["delivery_fallback_of"]
        assert not any(name.endswith("_partial") for name in after)  # renamed, none left over
        assert [name for name, sql in after.items() if "fallback_of_id" in sql] == [
            "delivery_fallback_of"
        ]
    finally:
        _migrate(leaf)


@pytest.mark.postgres
def test_on_postgresql_the_partial_delivery_indexes_are_built_without_locking_writes():
    from io import StringIO

    from django.core.management import call_command

    assert connection.vendor == "postgresql"
    out = StringIO()
    call_command("sqlmigrate", "notifications", "0020", stdout=out)
    sql = out.getvalue()
    assert sql.count("CREATE INDEX CONCURRENTLY") == 3
    # The two whole indexes, and the foreign key's own (not the key: re-adding it would
    # check every row under a lock that stops the table's writes).
    assert sql.count("DROP INDEX CONCURRENTLY") == 3
    assert "CONSTRAINT" not in sql
    assert "BEGIN;" not in sql  # CONCURRENTLY runs outside a transaction


def test_the_partial_delivery_indexes_change_no_table_but_its_indexes():
    """Not atomic (for PostgreSQL's CONCURRENTLY), so no statement may rebuild the table:
    stopped halfway, SQLite would be left without it."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("sqlmigrate", "notifications", "0020", stdout=out)
    statements = [
        line.split(" ", 2)[:2] for line in out.getvalue().splitlines() if line[:1].isalpha()
    ]
    assert statements
    assert {tuple(words) for words in statements} <= {
        ("CREATE", "INDEX"),
        ("DROP", "INDEX"),
        ("ALTER", "INDEX"),  # PostgreSQL's rename
    }
