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
