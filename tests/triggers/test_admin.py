import pytest
import time_machine
from django.urls import reverse

from notifications.models import Delivery, Workflow
from notifications.trigger_models import TriggerEvent, TriggerSetup
from notifications.triggers import evaluator_for
from tests.cadence.factories import PersonaFactory, StakeholderFactory
from tests.triggers.helpers import at, kiosk, project, template, trigger_workflow

pytestmark = pytest.mark.django_db


def _form(persona, alert, **extra):
    data = {
        "name": "Kiosk health",
        "description": "",
        "is_active": "on",
        "risk_level": "1",
        "trigger_setup-TOTAL_FORMS": "1",
        "trigger_setup-INITIAL_FORMS": "0",
        "trigger_setup-MIN_NUM_FORMS": "1",
        "trigger_setup-MAX_NUM_FORMS": "1",
        "trigger_setup-0-audience_personas": [persona.pk],
        "trigger_setup-0-include_project_stakeholders": "on",
        "trigger_setup-0-channel": "email",
        "trigger_setup-0-fallback_channel": "sms",
        "trigger_setup-0-message_type": "alert",
        "trigger_setup-0-group_contexts": "on",
        "trigger_events-TOTAL_FORMS": "1",
        "trigger_events-INITIAL_FORMS": "0",
        "trigger_events-MIN_NUM_FORMS": "1",
        "trigger_events-MAX_NUM_FORMS": "1000",
        "trigger_events-0-event": "kiosk_health_status",
        "trigger_events-0-template": alert.pk,
        "trigger_events-0-watched_issues": "[]",
        "trigger_events-0-issue_cooldown_hours": '{"OFFLINE": 0.25}',
    }
    return {**data, **extra}


def test_a_trigger_workflow_is_created_in_the_admin_with_its_setup_and_events(admin_client):
    persona = PersonaFactory(name="Manager")
    alert = template("Alert")
    response = admin_client.post(
        reverse("admin:notifications_triggerworkflow_add"), _form(persona, alert), follow=True
    )
    assert response.status_code == 200
    workflow = Workflow.objects.get(name="Kiosk health")
    assert workflow.type == "trigger"
    setup = TriggerSetup.objects.get(workflow=workflow)
    assert (setup.channel, setup.fallback_channel, setup.group_contexts) == ("email", "sms", True)
    assert list(setup.audience_personas.all()) == [persona]
    event = TriggerEvent.objects.get(workflow=workflow)
    assert (event.event, event.issue_cooldown_hours) == ("kiosk_health_status", {"OFFLINE": 0.25})
    # Grouping is on but there is no grouped template: the admin says what that means.
    assert "Grouping is on but there is no grouped template" in (response.content.decode())


def _inline_errors(response) -> dict:
    return {
        name: list(messages)
        for inline in response.context["inline_admin_formsets"]
        for form_errors in inline.formset.errors
        for name, messages in form_errors.items()
    }


def test_a_template_whose_variables_the_event_does_not_give_is_refused(admin_client):
    """A production-run template (partner_name, run_count) picked for a kiosk event would go
    out with those words empty in every message."""
    persona = PersonaFactory(name="Manager")
    foreign = template(
        "Digest",
        body="{{ partner_name }}: {{ run_count }}",
        variables=["partner_name", "run_count"],
    )
    response = admin_client.post(
        reverse("admin:notifications_triggerworkflow_add"),
        _form(
            persona,
            foreign,
            **{
                "trigger_events-0-resolved_template": foreign.pk,
                "trigger_events-0-watched_issues": '["FIRE"]',
                "trigger_setup-0-grouped_template": template("Grouped alert").pk,
            },
        ),
    )
    assert response.status_code == 200
    errors = _inline_errors(response)
    available = ", ".join(evaluator_for("kiosk_health_status").template_variables)
    expected = (
        "The template Digest uses partner_name, run_count, which kiosk_health_status does not "
        "give (they would be empty in every message). Available: " + available + "."
    )
    assert errors["template"] == [expected]
    assert errors["resolved_template"] == [expected]
    assert errors["watched_issues"][0].startswith("Unknown issue FIRE: the issues are")  # at once
    # A grouped message gives count, summaries and items, not one context's summary.
    assert errors["grouped_template"] == [
        "The template Grouped alert uses summary, which a grouped message does not give (it "
        "would be empty in every message). Available: count, summaries, items, context_keys, "
        "stakeholder_name."
    ]
    assert not Workflow.objects.filter(name="Kiosk health").exists()


def test_an_unknown_issue_in_the_per_issue_cooldowns_is_refused(admin_client):
    persona = PersonaFactory(name="Manager")
    response = admin_client.post(
        reverse("admin:notifications_triggerworkflow_add"),
        _form(
            persona, template("Alert"), **{"trigger_events-0-issue_cooldown_hours": '{"FIRE": 1}'}
        ),
    )
    assert response.status_code == 200
    errors = next(
        form_errors
        for inline in response.context["inline_admin_formsets"]
        for form_errors in inline.formset.errors
        if form_errors
    )
    issues = ", ".join(evaluator_for("kiosk_health_status").issues)
    assert errors["issue_cooldown_hours"] == [f"Unknown issue FIRE: the issues are {issues}."]
    assert not Workflow.objects.filter(name="Kiosk health").exists()


def test_trigger_workflow_list_and_evaluate_now_action(admin_client):
    persona = PersonaFactory(name="Manager", cooldown_hours=0, max_per_week=0)
    StakeholderFactory(persona=persona)
    workflow = trigger_workflow(personas=[persona], fallback_channel="sms")
    with time_machine.travel(at(10), tick=False):
        kiosk(1, project(45), charging=False)
        url = reverse("admin:notifications_triggerworkflow_changelist")
        page = admin_client.get(url).content.decode()
        assert "kiosk_health_status" in page and "Manager" in page and "never" in page
        chosen = {"action": "evaluate_now", "_selected_action": [workflow.pk]}
        asked = admin_client.post(url, chosen).content.decode()
        assert "Evaluate all trigger workflows now" in asked and "Yes, evaluate now" in asked
        assert "every active trigger workflow (1)" in asked and workflow.name in asked
        assert not Delivery.objects.exists()  # nothing happens before the confirmation
        response = admin_client.post(url, {**chosen, "post": "yes"}, follow=True)
    assert (
        "1 context(s) found; over 1 active workflow(s), each counted per workflow: 1 fired, "
        "0 held by a cooldown, 0 not watched, 0 without anyone to tell. Deliveries: 1 now, "
        "0 queued by cadence, 0 expired" in response.content.decode()
    )
    assert Delivery.objects.count() == 1


def test_evaluate_now_needs_no_selected_workflow(admin_client):
    """It runs every active workflow whatever is selected; Django said 'Items must be
    selected' when none was."""
    persona = PersonaFactory(name="Manager", cooldown_hours=0, max_per_week=0)
    StakeholderFactory(persona=persona)
    trigger_workflow(personas=[persona])
    with time_machine.travel(at(10), tick=False):
        kiosk(1, project(45), charging=False)
        url = reverse("admin:notifications_triggerworkflow_changelist")
        asked = admin_client.post(url, {"action": "evaluate_now"}).content.decode()
        assert "Items must be selected" not in asked
        assert "every active trigger workflow (1)" in asked
        response = admin_client.post(url, {"action": "evaluate_now", "post": "yes"}, follow=True)
    assert "1 fired, 0 held by a cooldown" in response.content.decode()
    assert Delivery.objects.count() == 1


def test_the_delivery_list_says_which_cadence_rule_queued_a_delivery(admin_client):
    persona = PersonaFactory(name="Manager", cooldown_hours=2, max_per_week=0)
    StakeholderFactory(persona=persona)
    trigger_workflow(personas=[persona])
    with time_machine.travel(at(10), tick=False) as clock:
        site = project(45)
        first = kiosk(1, site, charging=False)
        from notifications.triggers import evaluate_triggers

        evaluate_triggers(now=at(10))
        clock.move_to(at(10, 5))
        first.last_heartbeat_at = at(10, 5)
        first.save()
        kiosk(2, site, charging=False)
        evaluate_triggers(now=at(10, 5))
        page = admin_client.get(reverse("admin:notifications_delivery_changelist")).content.decode()
    # the persona's daily limit of one, not the 2-hour cooldown, decides when it may go
    assert "cadence: daily limit (1/1 today) — queued until 2026-11-24 00:00 UTC" in page


@pytest.mark.parametrize(
    ("risk", "error"),
    [
        ("3", "A trigger workflow sends on its own every five minutes, with no approval step"),
        ("0", "Ensure this value is greater than or equal to 1."),
        ("9", "Ensure this value is less than or equal to 5."),
    ],
)
def test_a_trigger_workflow_takes_risk_1_or_2_only(admin_client, risk, error):
    persona = PersonaFactory(name="Manager")
    response = admin_client.post(
        reverse("admin:notifications_triggerworkflow_add"),
        _form(persona, template("Alert"), risk_level=risk),
    )
    assert response.status_code == 200
    assert error in response.context["adminform"].form.errors["risk_level"][0]
    assert not Workflow.objects.filter(name="Kiosk health").exists()


def test_hours_over_a_year_are_refused_in_the_trigger_workflow_form(admin_client):
    persona = PersonaFactory(name="Manager")
    response = admin_client.post(
        reverse("admin:notifications_triggerworkflow_add"),
        _form(
            persona,
            template("Alert"),
            **{
                "trigger_setup-0-cooldown_hours": "1e9",
                "trigger_events-0-issue_cooldown_hours": '{"LOW_BATTERY": 1e9}',
            },
        ),
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "At most 8,760 hours (a year)" in page
    assert "with hours from 0 to 8,760 (a year)" in page
    assert not Workflow.objects.filter(name="Kiosk health").exists()


def test_rows_loaded_through_the_trigger_proxy_keep_their_stored_type():
    from notifications.trigger_models import TriggerWorkflow

    batch = Workflow.objects.create(name="batch", type="batch_notify", risk_level=4)
    loaded = TriggerWorkflow._base_manager.get(pk=batch.pk)
    assert loaded.type == "batch_notify"
    loaded.full_clean()  # a batch workflow of risk 4 is fine
    assert TriggerWorkflow(name="new").type == "trigger"


def test_a_setup_refuses_a_fallback_equal_to_its_channel():
    from django.core.exceptions import ValidationError

    workflow = trigger_workflow()
    setup = TriggerSetup.objects.get(workflow=workflow)
    setup.channel = setup.fallback_channel = "email"
    with pytest.raises(ValidationError) as refused:
        setup.full_clean()
    assert refused.value.message_dict == {
        "fallback_channel": ["The fallback must differ from the channel."]
    }


def test_whatsapp_is_refused_for_templates_without_a_whatsapp_template_name():
    """The setup names the events' templates WhatsApp could not send; an event's template
    is refused for a workflow that sends on WhatsApp."""
    from django.core.exceptions import ValidationError

    workflow = trigger_workflow(name="Kiosk Health Alert")
    setup = TriggerSetup.objects.get(workflow=workflow)
    setup.channel = "whatsapp"
    with pytest.raises(ValidationError) as refused:
        setup.full_clean()
    assert refused.value.message_dict["channel"] == [
        "WhatsApp sends approved templates only: Kiosk Health Alert: kiosk_health_status has "
        "no WhatsApp template name. Choose another channel, or give the template its WhatsApp "
        "template name."
    ]
    setup.save()
    event = TriggerEvent(
        workflow=workflow, event="kiosk_offline", template=template("offline (email)")
    )
    with pytest.raises(ValidationError) as refused:
        event.full_clean()
    assert list(refused.value.message_dict) == ["template"]
    event.template = template("offline (whatsapp)", whatsapp_template="kiosk_offline_v1")
    event.full_clean()


def test_an_expiry_of_zero_hours_is_refused_as_it_would_expire_every_message():
    """Elsewhere 0 means none (a cooldown of 0, a cap of 0): an expiry of 0 h would instead
    expire every message of the workflow the moment it is made, and nobody would be told."""
    from django.core.exceptions import ValidationError

    setup = TriggerSetup.objects.get(workflow=trigger_workflow())
    setup.expires_after_hours = 0
    with pytest.raises(ValidationError) as refused:
        setup.full_clean()
    assert refused.value.message_dict == {
        "expires_after_hours": [
            "More than 0 hours: a message that expires as it is made is never sent. Blank: "
            "messages never expire."
        ]
    }
    setup.expires_after_hours = 0.5
    setup.full_clean()
