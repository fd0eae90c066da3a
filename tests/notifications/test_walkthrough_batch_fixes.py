"""What a walk through seed 001 on `make run` found: a review page that could not decide,
a {% filter %} body refused for a variable nobody wrote, cohort filters read differently
from how they were typed, a repeated launch blamed on its attachment, and words for the
gate and the recipient cap."""

import html
import re

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from notifications.batch import compile_message
from notifications.batch_admin import BatchForm
from notifications.cohort import cohort
from notifications.models import BatchAttachment, ProposedAction, WorkflowRun
from notifications.templating import TemplateProblem, check_source
from tests.notifications.factories import CustomerFactory

pytestmark = pytest.mark.django_db
FORM = {
    "customer_cohort_filter": "bid=B5875",
    "subject": "Holiday schedule for {{ customer_name }}",
    "body_template": "Dear {{ customer_name }},\nwe close on 24 December.",
}
CHANGELIST = "admin:notifications_proposedaction_changelist"


@pytest.fixture(autouse=True)
def recording_email(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def _launch(admin_client) -> WorkflowRun:
    admin_client.post(reverse("admin:batch_new"), {**FORM, "_launch": "1", "post": "yes"})
    return WorkflowRun.objects.get()


def _decision_form(page: str) -> tuple[str, dict]:
    """Where the change page's Approve button posts, and what with."""
    (button,) = re.findall(r'<button[^>]*id="approve-proposal"[^>]*>', page)
    action = html.unescape(re.search(r'formaction="([^"]*)"', button)[1])
    (selected,) = re.findall(r'<input type="hidden" name="_selected_action" value="(\d+)">', page)
    return action, {"_selected_action": selected}


# 1. The change page of a proposed action decides it


def test_a_pending_proposals_page_offers_approve_and_reject_and_no_save(admin_client):
    CustomerFactory()
    envelope = _launch(admin_client).proposed_actions.get()
    page = admin_client.get(
        reverse("admin:notifications_proposedaction_change", args=[envelope.id])
    ).content.decode()
    assert 'id="approve-proposal"' in page and 'value="approve_selected"' in page
    assert 'id="reject-proposal"' in page and 'value="reject_selected"' in page
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    action, data = _decision_form(page)
    assert action == reverse(CHANGELIST)
    assert data == {"_selected_action": str(envelope.id)}


def test_the_change_pages_approve_goes_through_the_lists_confirmation_then_approves(
    admin_client,
):
    CustomerFactory()
    run = _launch(admin_client)
    envelope = run.proposed_actions.get()
    action, data = _decision_form(
        admin_client.get(
            reverse("admin:notifications_proposedaction_change", args=[envelope.id])
        ).content.decode()
    )
    confirm = admin_client.post(action, {**data, "action": "approve_selected"})
    text = confirm.content.decode()
    assert "Approve 1 proposed action(s)" in text
    assert "1 batch gate(s) open" in text
    envelope.refresh_from_db()
    assert envelope.status == "pending"
    done = admin_client.post(action, {**data, "action": "approve_selected", "post": "yes"})
    assert done.status_code == 302
    envelope.refresh_from_db()
    assert envelope.status == "approved"
    (review,) = run.proposed_actions.filter(action_type="hitl_review")

    review_page = reverse("admin:notifications_proposedaction_change", args=[review.id])
    action, data = _decision_form(admin_client.get(review_page).content.decode())
    reject = admin_client.post(action, {**data, "action": "reject_selected"})
    assert "Reject 1 proposed action(s)" in reject.content.decode()
    admin_client.post(action, {**data, "action": "reject_selected", "post": "yes"})
    review.refresh_from_db()
    assert review.status == "rejected"


def test_a_decided_proposals_page_has_no_buttons_and_a_post_changes_nothing(admin_client):
    CustomerFactory()
    envelope = _launch(admin_client).proposed_actions.get()
    url = reverse("admin:notifications_proposedaction_change", args=[envelope.id])
    admin_client.post(
        reverse(CHANGELIST),
        {"action": "reject_selected", "_selected_action": [envelope.id], "post": "yes"},
    )
    page = admin_client.get(url).content.decode()
    assert "approve-proposal" not in page and "reject-proposal" not in page
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    saved = admin_client.post(url, {"_save": "Save"}, follow=True)
    assert "was changed successfully" not in saved.content.decode()
    assert _messages(saved) == [
        "Nothing on this page is edited: approve or reject it with its buttons."
    ]
    envelope.refresh_from_db()
    assert envelope.status == "rejected"


# 2. Variables of {% filter %} and other binding tags


def test_a_filter_tag_body_is_accepted_without_its_internal_var():
    compiled = compile_message("Hi", "{% filter upper %}{{ customer_name }}{% endfilter %}")
    assert compiled.render_text({"customer_name": "Brooklyn Tech"})[1] == "BROOKLYN TECH"


def test_tags_that_bind_names_report_only_the_variables_the_author_wrote():
    declared = {"customer_name"}
    for source in [
        "{% filter upper|cut:' ' %}{{ customer_name }}{% endfilter %}",
        "{% with name=customer_name %}{{ name }}{% endwith %}",
        "{% for word in customer_name %}{{ word }}{{ forloop.counter }}{% endfor %}",
        "{% firstof customer_name 'friend' as name %}{{ name }}",
        "{% cycle 'odd' 'even' as parity %}{{ parity }}",
        "{% now 'Y' as year %}{{ year }}",
    ]:
        check_source("body", source, declared)


@pytest.mark.parametrize(
    ("source", "unknown"),
    [
        ("{% filter default:nickname %}{{ customer_name }}{% endfilter %}", "nickname"),
        ("{% firstof customer_name nickname %}", "nickname"),
        ("{% cycle customer_name nickname %}", "nickname"),
        ("{% with name=nickname %}{{ name }}{% endwith %}", "nickname"),
        ("{% with name=customer_name %}{% endwith %}{{ name }}", "name"),
        ("{% for word in customer_name %}{% endfor %}{{ word }}", "word"),
        ("{% filter upper %}{{ var }}{% endfilter %}", "var"),
    ],
)
def test_unknown_variables_inside_binding_tags_are_still_refused(source, unknown):
    with pytest.raises(TemplateProblem) as problem:
        check_source("body", source, {"customer_name"})
    assert str(problem.value).startswith(f"Unknown variable in body: {unknown}. ")


def test_the_batch_form_previews_a_filter_tag_body(admin_client):
    CustomerFactory(company_name="Brooklyn Tech")
    body = "{% filter upper %}{{ customer_name }}{% endfilter %}"
    page = admin_client.post(
        reverse("admin:batch_new"), {**FORM, "body_template": body, "_preview": "1"}
    )
    assert page.context["form"].errors == {}
    assert "Unknown variable" not in page.content.decode()
    assert page.context["preview"].samples[0][1].body == "BROOKLYN TECH"


# 3. The cohort filter as typed


def test_a_plus_in_a_filter_value_is_a_plus():
    plus = CustomerFactory(email="ops+fail@example.org")
    CustomerFactory(email="ops fail@example.org")
    assert list(cohort("email_domain=+fail@example.org")) == [plus]


def test_percent_26_writes_a_literal_ampersand():
    sons = CustomerFactory(company_name="Smith & Sons")
    CustomerFactory(company_name="Smith")
    assert list(cohort("company=Smith %26 Sons&bid=B5875")) == [sons]


def test_a_semicolon_between_conditions_is_refused_naming_the_ampersand():
    CustomerFactory(region="NYC DOE")
    with pytest.raises(ValidationError) as caught:
        cohort("bid=B5875;region=NYC DOE")
    assert caught.value.message_dict["customer_cohort_filter"] == [
        "The filter part 'bid=B5875;region=NYC DOE' uses ';' between conditions: separate them "
        "with &, e.g. 'bid=B5875&region=NYC DOE' (%3B writes a literal ';')."
    ]


def test_a_semicolon_inside_a_value_is_still_a_value():
    semi = CustomerFactory(company_name="Acme; Brooklyn")
    assert list(cohort("company=Acme; Brooklyn")) == [semi]
    assert list(cohort("company=Acme%3B region=x")) == []  # literal, not a separator


def test_the_batch_form_refuses_a_semicolon_on_its_field_and_launches_nothing(admin_client):
    CustomerFactory(region="NYC DOE")
    page = admin_client.post(
        reverse("admin:batch_new"),
        {**FORM, "customer_cohort_filter": "bid=B5875;region=NYC DOE", "_launch": "1"},
    )
    (error,) = page.context["form"].errors["customer_cohort_filter"]
    assert "uses ';' between conditions: separate them with &" in error
    assert not WorkflowRun.objects.exists()


def test_the_filter_help_says_ampersand_separates_and_percent_26_writes_one():
    help_text = BatchForm().fields["customer_cohort_filter"].help_text
    assert "separated by &" in help_text
    assert "%26 for a literal &" in help_text


# 4. A launch confirmation posted again


def test_a_repeated_launch_confirmation_with_an_attachment_says_it_was_launched(
    admin_client, settings, tmp_path
):
    settings.MEDIA_ROOT = str(tmp_path)
    CustomerFactory()
    upload = SimpleUploadedFile("calendar.pdf", b"%PDF-1.4", content_type="application/pdf")
    confirmation = admin_client.post(
        reverse("admin:batch_new"), {**FORM, "_launch": "1", "attachments": upload}
    )
    posted = {**FORM, "_launch": "1", "post": "yes"}
    posted["staged_attachment"] = [
        v for k, v in confirmation.context["hidden"] if k == "staged_attachment"
    ]
    admin_client.post(reverse("admin:batch_new"), posted, follow=True)  # its message read
    run = WorkflowRun.objects.get()

    again = admin_client.post(reverse("admin:batch_new"), posted, follow=True)
    change = reverse("admin:notifications_workflowrun_change", args=[run.id])
    assert again.redirect_chain == [(change, 302)]
    assert _messages(again) == [
        f'This batch was already launched: <a href="{change}">run {run.id}</a>, awaiting '
        "approval (HITL gate), has the same filter, subject and body. It was not launched "
        "again."
    ]
    assert "no longer kept" not in again.content.decode()
    assert WorkflowRun.objects.count() == 1
    assert BatchAttachment.objects.count() == 1


def test_a_launch_confirmation_posted_again_after_its_run_ended_launches_nothing(admin_client):
    """A walkthrough went back to a confirmation whose run had finished and posted it again:
    a second run was staged for the same people, its old "send anyway" tick taken for the
    new 48-hour warning. A new confirmation of the same batch still launches."""
    from django.utils import timezone

    from notifications import batch

    CustomerFactory()
    confirmation = admin_client.post(reverse("admin:batch_new"), {**FORM, "_launch": "1"})
    posted = {**dict(confirmation.context["hidden"]), "post": "yes"}
    assert len(posted["launch_token"]) == 32
    admin_client.post(reverse("admin:batch_new"), posted, follow=True)
    run = WorkflowRun.objects.get()
    batch.run_cancel(run=run, user=run_user(), now=timezone.now())

    again = admin_client.post(reverse("admin:batch_new"), posted, follow=True)
    change = reverse("admin:notifications_workflowrun_change", args=[run.id])
    assert again.redirect_chain == [(change, 302)]
    assert _messages(again)[0].startswith(
        f'This confirmation was used already: it launched <a href="{change}">run {run.id}</a>, '
    )
    assert WorkflowRun.objects.count() == 1

    fresh = admin_client.post(reverse("admin:batch_new"), {**FORM, "_launch": "1"})
    new_token = dict(fresh.context["hidden"])["launch_token"]
    assert new_token != posted["launch_token"]
    admin_client.post(reverse("admin:batch_new"), {**posted, "launch_token": new_token})
    assert WorkflowRun.objects.count() == 2


def test_batch_launch_refuses_a_token_that_launched_a_run_before():
    from django.contrib.auth.models import User
    from django.utils import timezone

    from notifications import batch

    CustomerFactory()
    mike = User.objects.create_superuser("mike", "m@example.com", "pw")
    texts = {
        "cohort_filter": FORM["customer_cohort_filter"],
        "subject": FORM["subject"],
        "body_template": FORM["body_template"],
    }
    first = batch.batch_launch(user=mike, launch_token="t" * 32, now=timezone.now(), **texts)
    batch.run_cancel(run=first, user=mike, now=timezone.now())
    with pytest.raises(batch.AlreadyLaunched) as refused:
        batch.batch_launch(user=mike, launch_token="t" * 32, now=timezone.now(), **texts)
    assert refused.value.run == first
    assert WorkflowRun.objects.count() == 1


def run_user():
    from django.contrib.auth.models import User

    return User.objects.get(username="admin")


# 5. Words: the gate is not a review; the cap's upper limit


def test_cancelling_a_run_with_only_its_gate_pending_calls_it_a_gate(admin_client):
    CustomerFactory()
    run = _launch(admin_client)
    page = admin_client.get(reverse("admin:batch_cancel", args=[run.id])).content.decode()
    assert "0 scheduled deliveries are cancelled and 1 pending gate(s) rejected." in page
    assert "review" not in html.unescape(page).split("confirm-summary")[1].split("</p>")[0]
    done = admin_client.post(
        reverse("admin:notifications_workflowrun_changelist"),
        {"action": "cancel_runs", "_selected_action": [run.id], "post": "yes"},
        follow=True,
    )
    assert _messages(done) == [
        "1 run(s) cancelled; 0 deliveries will not go; 1 pending gate(s) rejected."
    ]
    assert run.proposed_actions.get().status == ProposedAction.Status.REJECTED


def test_the_max_recipients_help_states_its_upper_limit(settings):
    settings.BATCH_MAX_RECIPIENTS_CEILING = 2500
    help_text = BatchForm().fields["max_recipients"].help_text
    assert "from 1 to 2,500" in help_text
    assert "cap is 50" in help_text
