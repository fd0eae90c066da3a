import json
from io import StringIO
from pathlib import Path

import pytest
import responses
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from notifications import events
from production_runs.apps import check_template_specs
from production_runs.models import TemplateVariantStatus
from production_runs.whatsapp_templates import (
    SPECS,
    SpecProblem,
    TemplateSpec,
    languages_for_platform,
    request_body,
    validate_spec,
)
from tests.production_runs.factories import PlatformFactory, approve_all

pytestmark = pytest.mark.django_db
GRAPH = "https://graph.facebook.com/v21.0"
# Seed 002's six "Path B" bodies, copied verbatim from the seed.
SEED_BODIES = json.loads(
    (Path(__file__).parent / "seed_002_template_bodies.json").read_text(encoding="utf-8")
)
REMINDERS = ",".join(sorted({body["name"] for body in SEED_BODIES}))


@pytest.fixture(autouse=True)
def graph_settings(settings):
    settings.WHATSAPP_GRAPH_URL = GRAPH
    settings.WHATSAPP_ACCESS_TOKEN = ""
    settings.WHATSAPP_PLATFORM_TOKENS = "IN=token-in;AU=token-au"
    settings.WHATSAPP_HEADER_IMAGE_HANDLE = ""


@pytest.fixture
def platforms():
    return PlatformFactory(label="IN"), PlatformFactory(label="AU")


@pytest.fixture
def graph():
    """Meta's Graph API faked at the HTTP layer; an unregistered call fails the test."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def templates_url(platform):
    return f"{GRAPH}/{platform.waba_id}/message_templates"


def run(*args) -> str:
    out = StringIO()
    call_command("manage_whatsapp_templates", *args, stdout=out)
    return out.getvalue()


def posted(graph) -> list[dict]:
    return [json.loads(c.request.body) for c in graph.calls if c.request.method == "POST"]


# --- the specs -----------------------------------------------------------------------------


def test_the_reminder_specs_build_exactly_the_seed_bodies():
    for body in SEED_BODIES:
        assert request_body(SPECS[body["name"]], body["language"]) == body


def test_every_spec_has_one_example_value_per_variable_in_every_language():
    for spec in SPECS.values():
        validate_spec(spec)
        assert spec.category == "UTILITY"
        for language in spec.languages:
            assert len(spec.examples[language]) == len(spec.variables)
    assert check_template_specs() == []


@pytest.mark.parametrize(
    ("body", "example", "problem"),
    [
        ("Hi {{1}}, run {{2}} is late.", ("Asha",), "the example has 1 values for 2"),
        ("Hi {{1}}, run {{3}} is late.", ("Asha", "42"), "the body uses [1, 3]"),
        ("{{1}}, run {{2}} is late.", ("Asha", "42"), "starts or ends with a variable"),
    ],
)
def test_a_spec_whose_placeholders_and_examples_disagree_is_refused(body, example, problem):
    spec = TemplateSpec(
        name="broken_v1",
        family="reminder",
        variables=("partner_name", "run_id"),
        bodies={"en": body},
        examples={"en": example},
    )
    with pytest.raises(SpecProblem, match=problem.replace("[", r"\[").replace("]", r"\]")):
        validate_spec(spec)


def test_the_design_template_has_an_image_header_and_the_portal_button(settings):
    settings.WHATSAPP_HEADER_IMAGE_HANDLE = "4::aW1hZ2U="
    body = request_body(SPECS["jyt_production_run_design_v1"], "en")
    header, text, buttons = body["components"]
    assert header == {
        "type": "HEADER",
        "format": "IMAGE",
        "example": {"header_handle": ["4::aW1hZ2U="]},
    }
    assert text["example"]["body_text"] == [["prun_01ABC", "Block Print Kurta"]]
    assert buttons["buttons"][0]["url"] == "https://herald.example.com/partners/wa-auth?token={{1}}"


# --- languages per platform ----------------------------------------------------------------


def test_a_platform_serving_india_gets_english_and_hindi_others_english(platforms):
    india, australia = platforms
    assert languages_for_platform(india) == ["en", "hi"]
    assert languages_for_platform(australia) == ["en"]


def test_whatsapp_platform_languages_overrides_by_label(settings, platforms):
    india, australia = platforms
    settings.WHATSAPP_PLATFORM_LANGUAGES = "AU=en,hi;IN=hi"
    assert languages_for_platform(australia) == ["en", "hi"]
    assert languages_for_platform(india) == ["hi"]


def test_a_malformed_platform_languages_setting_is_named(settings, platforms):
    settings.WHATSAPP_PLATFORM_LANGUAGES = "AU"
    with pytest.raises(ImproperlyConfigured, match="WHATSAPP_PLATFORM_LANGUAGES"):
        languages_for_platform(platforms[0])


# --- manage_whatsapp_templates --------------------------------------------------------------


def test_dry_run_prints_the_plan_and_makes_no_network_call(graph, platforms):
    out = run("--mode", "dry-run", "--templates", REMINDERS)
    assert len(graph.calls) == 0
    assert "mode dry-run: 9 template variant(s)" in out
    assert "9 create" in out  # six on the Indian WABA (en + hi), three on the Australian
    assert out.count("IN ") == 6 and out.count("AU ") == 3


def test_dry_run_reports_recorded_statuses(graph, platforms):
    india, _ = platforms
    TemplateVariantStatus.objects.create(
        platform=india,
        template_name="jyt_production_run_reminder_idle_v1",
        language="hi",
        status="APPROVED",
    )
    out = json.loads(run("--mode", "dry-run", "--templates", REMINDERS, "--json"))
    actions = {(i["platform"], i["template"], i["language"]): i["action"] for i in out["items"]}
    assert actions[("IN", "jyt_production_run_reminder_idle_v1", "hi")] == "exists"
    assert list(actions.values()).count("create") == 8
    assert len(graph.calls) == 0


def test_upsert_submits_only_the_missing_variants_with_the_seed_bodies(graph, platforms):
    india, australia = platforms
    graph.get(
        templates_url(india),
        json={
            "data": [
                {
                    "name": "jyt_production_run_reminder_pending_v1",
                    "language": "en",
                    "status": "APPROVED",
                    "id": "801",
                },
                {"name": "someone_elses_template", "language": "en", "status": "APPROVED"},
            ]
        },
    )
    graph.get(templates_url(australia), json={"data": []})
    graph.post(templates_url(india), json={"id": "900", "status": "PENDING", "category": "UTILITY"})
    graph.post(templates_url(australia), json={"id": "901", "status": "PENDING"})

    out = run("--mode", "upsert", "--templates", REMINDERS)

    def bodies_to(platform):
        return sorted(
            (
                json.loads(c.request.body)
                for c in graph.calls
                if c.request.method == "POST" and c.request.url == templates_url(platform)
            ),
            key=json.dumps,
        )

    missing_on_india = [
        b
        for b in SEED_BODIES
        if (b["name"], b["language"]) != ("jyt_production_run_reminder_pending_v1", "en")
    ]
    assert bodies_to(india) == sorted(missing_on_india, key=json.dumps)
    # No Hindi on a WABA without +91 (seed 002's languagesForPlatform).
    english = [b for b in SEED_BODIES if b["language"] == "en"]
    assert bodies_to(australia) == sorted(english, key=json.dumps)
    tokens = {c.request.url: c.request.headers["Authorization"] for c in graph.calls}
    assert tokens[templates_url(australia)] == "Bearer token-au"
    assert "8 created, 1 exists" in out  # five on the Indian WABA, three on the Australian

    statuses = dict(
        TemplateVariantStatus.objects.filter(platform=india)
        .values_list("template_name", "status")
        .filter(language="en")
    )
    assert statuses["jyt_production_run_reminder_pending_v1"] == "APPROVED"
    assert statuses["jyt_production_run_reminder_idle_v1"] == "PENDING"
    assert not TemplateVariantStatus.objects.filter(template_name="someone_elses_template").exists()


def test_upsert_with_everything_present_submits_nothing(graph, platforms):
    india, _ = platforms
    graph.get(
        templates_url(india),
        json={
            "data": [
                {"name": b["name"], "language": b["language"], "status": "APPROVED", "id": str(i)}
                for i, b in enumerate(SEED_BODIES)
            ]
        },
    )
    run("--mode", "upsert", "--templates", REMINDERS, "--platform-ids", "IN")
    assert posted(graph) == []
    assert TemplateVariantStatus.objects.filter(status="APPROVED").count() == 6


def test_upsert_follows_the_pages_of_existing_templates(graph, platforms):
    india, _ = platforms
    first = {
        "name": "jyt_production_run_reminder_pending_v1",
        "language": "en",
        "status": "APPROVED",
    }
    rest = [
        {"name": b["name"], "language": b["language"], "status": "PENDING"} for b in SEED_BODIES[1:]
    ]
    graph.get(
        templates_url(india),
        json={"data": rest, "paging": {"next": f"{GRAPH}/page-2"}},
        match=[
            responses.matchers.query_param_matcher(
                {"fields": "name,language,status,id,category", "limit": "200"}
            )
        ],
    )
    graph.get(f"{GRAPH}/page-2", json={"data": [first]})
    run("--mode", "upsert", "--templates", REMINDERS, "--platform-ids", str(india.pk))
    assert posted(graph) == []


def test_refresh_reads_statuses_back_and_submits_nothing(graph, platforms):
    india, _ = platforms
    graph.get(
        templates_url(india),
        json={
            "data": [
                {
                    "name": "jyt_production_run_reminder_pending_v1",
                    "language": "en",
                    "status": "APPROVED",
                },
                {
                    "name": "jyt_production_run_reminder_pending_v1",
                    "language": "hi",
                    "status": "REJECTED",
                    "rejected_reason": "INVALID_FORMAT",
                },
                {
                    "name": "jyt_production_run_reminder_idle_v1",
                    "language": "en",
                    "status": "PENDING",
                },
            ]
        },
    )
    out = json.loads(
        run("--mode", "refresh", "--templates", REMINDERS, "--platform-ids", "IN", "--json")
    )
    assert posted(graph) == []
    rows = {
        (r.template_name, r.language): (r.status, r.reason)
        for r in TemplateVariantStatus.objects.filter(platform=india)
    }
    assert rows[("jyt_production_run_reminder_pending_v1", "en")] == ("APPROVED", "")
    assert rows[("jyt_production_run_reminder_pending_v1", "hi")] == ("REJECTED", "INVALID_FORMAT")
    assert rows[("jyt_production_run_reminder_idle_v1", "en")][0] == "PENDING"
    assert rows[("jyt_production_run_reminder_not_started_v1", "hi")][0] == "MISSING"
    assert sum(1 for i in out["items"] if i["action"] == "missing") == 3


def test_a_refusal_from_meta_is_reported_and_fails_the_command(graph, platforms):
    india, _ = platforms
    graph.get(templates_url(india), json={"data": []})
    graph.post(
        templates_url(india),
        status=400,
        json={"error": {"message": "Invalid parameter", "error_user_msg": "Body too long"}},
    )
    with pytest.raises(CommandError, match="Graph API HTTP 400: Invalid parameter"):
        run("--mode", "upsert", "--templates", REMINDERS, "--platform-ids", "IN")
    # Absent from Meta's list and refused: recorded MISSING, as a refresh would.
    assert set(TemplateVariantStatus.objects.values_list("status", flat=True)) == {"MISSING"}
    assert TemplateVariantStatus.objects.count() == 6


COMPLETED = "jyt_production_run_completed_v1"


def meta_has_all_but_completed(graph, platform):
    graph.get(
        templates_url(platform),
        json={
            "data": [
                {"name": name, "language": "en", "status": "APPROVED", "id": str(i)}
                for i, name in enumerate(SPECS)
                if name != COMPLETED
            ]
        },
    )


def test_upsert_records_a_variant_missing_from_meta_as_missing_when_its_submission_fails(
    graph, platforms
):
    _, australia = platforms
    approve_all(australia)  # recorded APPROVED earlier; Meta has since lost the completed one
    meta_has_all_but_completed(graph, australia)
    graph.post(
        templates_url(australia),
        status=400,
        json={"error": {"message": "Invalid parameter"}},
    )

    with pytest.raises(CommandError, match="1 variant\\(s\\) failed: Graph API HTTP 400"):
        run("--mode", "upsert", "--platform-ids", "AU")

    row = TemplateVariantStatus.objects.get(platform=australia, template_name=COMPLETED)
    assert row.status == "MISSING"
    assert len(posted(graph)) == 1
    # The plan, and so the admin's "Show plan" and its approved count, no longer say approved.
    planned = json.loads(run("--mode", "dry-run", "--platform-ids", "AU", "--json"))["items"]
    actions = {i["template"]: (i["action"], i["status"]) for i in planned}
    assert actions[COMPLETED] == ("create", "MISSING")
    assert sum(1 for i in planned if i["status"] == "APPROVED") == len(SPECS) - 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (503, {"message": "Service temporarily unavailable"}),
        (429, {"message": "Too many calls"}),
        (400, {"message": "Content in this language already exists", "error_subcode": 2388024}),
    ],
    ids=["busy", "rate-limited", "already-exists"],
)
def test_upsert_records_in_review_a_variant_meta_may_have_taken(graph, platforms, status, error):
    """A busy Meta, or one that says it has the template, may have it: recorded MISSING,
    its held reminders were cancelled for good."""
    _, australia = platforms
    approve_all(australia)
    meta_has_all_but_completed(graph, australia)
    graph.post(templates_url(australia), status=status, json={"error": error})

    with pytest.raises(CommandError, match="1 variant\\(s\\) failed"):
        run("--mode", "upsert", "--platform-ids", "AU")

    row = TemplateVariantStatus.objects.get(platform=australia, template_name=COMPLETED)
    assert row.status == "PENDING"


def test_upsert_records_what_meta_answered_when_it_resubmits_a_variant_missing_from_meta(
    graph, platforms
):
    _, australia = platforms
    approve_all(australia)
    meta_has_all_but_completed(graph, australia)
    graph.post(templates_url(australia), json={"id": "950", "status": "PENDING"})

    run("--mode", "upsert", "--platform-ids", "AU")

    row = TemplateVariantStatus.objects.get(platform=australia, template_name=COMPLETED)
    assert (row.status, row.meta_id) == ("PENDING", "950")


def test_upsert_records_a_variant_missing_from_meta_it_cannot_submit_as_missing(graph, platforms):
    india, _ = platforms
    approve_all(india)
    graph.get(templates_url(india), json={"data": []})
    out = run(
        "--mode", "upsert", "--templates", "jyt_production_run_design_v1", "--platform-ids", "IN"
    )
    assert posted(graph) == []
    assert "blocked" in out
    row = TemplateVariantStatus.objects.get(
        platform=india, template_name="jyt_production_run_design_v1", language="en"
    )
    assert row.status == "MISSING"


def test_a_platform_without_a_token_is_named(graph, platforms, settings):
    settings.WHATSAPP_PLATFORM_TOKENS = "AU=token-au"
    with pytest.raises(CommandError, match="WHATSAPP_PLATFORM_TOKENS"):
        run("--mode", "upsert", "--templates", REMINDERS, "--platform-ids", "IN")
    assert len(graph.calls) == 0


def test_the_design_template_waits_for_its_sample_image(graph, platforms):
    india, _ = platforms
    graph.get(templates_url(india), json={"data": []})
    out = run(
        "--mode", "upsert", "--templates", "jyt_production_run_design_v1", "--platform-ids", "IN"
    )
    assert posted(graph) == []
    assert "blocked" in out and "WHATSAPP_HEADER_IMAGE_HANDLE" in out


def test_a_template_or_platform_named_twice_is_submitted_once(graph, platforms):
    india, _ = platforms
    graph.get(templates_url(india), json={"data": []})
    taken = set()

    def submit(request):
        body = json.loads(request.body)
        variant = (body["name"], body["language"])
        if variant in taken:  # Meta has it already
            error = {"message": "Invalid parameter", "error_subcode": 2388024}
            return 400, {}, json.dumps({"error": error})
        taken.add(variant)
        return 200, {}, json.dumps({"id": str(len(taken)), "status": "PENDING"})

    graph.add_callback(responses.POST, templates_url(india), callback=submit)

    out = run(
        "--mode",
        "upsert",
        "--templates",
        f"{COMPLETED},{COMPLETED}",
        "--platform-ids",
        f"IN,{india.pk},IN",
    )

    assert [(b["name"], b["language"]) for b in posted(graph)] == [
        (COMPLETED, "en"),
        (COMPLETED, "hi"),
    ]
    assert "mode upsert: 2 template variant(s)" in out and "2 created" in out
    assert set(TemplateVariantStatus.objects.values_list("status", flat=True)) == {"PENDING"}


def test_an_unknown_platform_or_template_is_a_clear_error(platforms):
    with pytest.raises(CommandError, match="no WhatsApp platform with id or label 'NZ'"):
        run("--platform-ids", "NZ")
    with pytest.raises(CommandError, match="unknown template"):
        run("--templates", "nope_v1")


# --- status updates from Meta's webhook ----------------------------------------------------


def test_a_template_status_webhook_event_updates_the_variant(platforms):
    india, _ = platforms
    events.record_event(
        "whatsapp.template_status",
        {
            "waba_id": india.waba_id,
            "time": 1,
            "event": "APPROVED",
            "template_id": "801",
            "template_name": "jyt_production_run_reminder_idle_v1",
            "language": "hi",
            "reason": "",
        },
        idempotency_key="tpl-1",
    )
    events.handle_due(now=events.timezone.now())
    row = TemplateVariantStatus.objects.get()
    assert (row.platform, row.template_name, row.language, row.status, row.meta_id) == (
        india,
        "jyt_production_run_reminder_idle_v1",
        "hi",
        "APPROVED",
        "801",
    )
