"""Characters Python calls digits but int() refuses ("²", "1⁰"), and ids that are not
numbers, get the clear answer a wrong number gets, not a server error."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from notifications.cohort import canonical_filter
from notifications.models import WorkflowRun
from tests.notifications.factories import CustomerFactory, WorkflowRunFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("run_id", ["²", "1⁰"])
def test_the_resume_endpoint_answers_400_to_a_superscript_run_number(admin_client, run_id):
    response = admin_client.post(f"/admin/batch/resume?run_id={run_id}")
    assert response.status_code == 400
    assert response.json() == {"error": "run_id must be a run number"}


def test_a_run_page_that_is_not_a_number_says_there_is_no_such_run(admin_client):
    WorkflowRunFactory()
    response = admin_client.get("/admin/notifications/workflowrun/abc/change/", follow=True)
    assert response.redirect_chain[-1][0] == reverse("admin:index")
    assert "with ID “abc” doesn’t exist" in response.content.decode()


def test_a_superscript_id_in_a_filter_is_kept_as_typed():
    assert canonical_filter("id=²,7") == (("id", "7,²"),)


def test_the_launch_confirmation_refuses_a_superscript_id_in_the_filter(admin_client):
    CustomerFactory()
    response = admin_client.post(
        reverse("admin:batch_new"),
        {
            "customer_cohort_filter": "id=²",
            "subject": "s",
            "body_template": "b",
            "_launch": "1",
            "post": "yes",
        },
    )
    assert response.status_code == 200
    assert "Enter a whole number" in response.content.decode()
    assert not WorkflowRun.objects.exists()


def test_the_template_command_names_a_platform_it_cannot_find():
    with pytest.raises(CommandError, match="no WhatsApp platform with id or label '²'"):
        call_command("manage_whatsapp_templates", "--platform-ids", "²", stdout=StringIO())
