from datetime import timedelta

import pytest
import time_machine

from production_runs.deeplink import (
    LinkExpired,
    LinkInvalid,
    make_token,
    portal_link,
    read_token,
)
from tests.production_runs.factories import NOW, RunFactory

pytestmark = pytest.mark.django_db


def test_a_fresh_token_names_its_run_and_partner():
    with time_machine.travel(NOW, tick=False):
        token = make_token(run_id=42, partner_id=7)
        link = read_token(token)
    assert (link.run_id, link.partner_id) == (42, 7)


def test_a_token_is_good_for_24_hours_and_no_longer():
    with time_machine.travel(NOW, tick=False) as clock:
        token = make_token(run_id=42, partner_id=7)
        clock.move_to(NOW + timedelta(hours=23, minutes=59))
        assert read_token(token).run_id == 42
        clock.move_to(NOW + timedelta(hours=24, minutes=1))
        with pytest.raises(LinkExpired):
            read_token(token)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t.replace(t.split(":")[0], make_token(run_id=43, partner_id=7).split(":")[0]),
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: "",
        lambda t: "not-a-token",
    ],
    ids=["other-run", "bad-signature", "empty", "garbage"],
)
def test_a_tampered_token_is_refused(tamper):
    with time_machine.travel(NOW, tick=False):
        token = make_token(run_id=42, partner_id=7)
        with pytest.raises(LinkInvalid):
            read_token(tamper(token))


def test_the_wa_auth_view_signs_the_partner_in_and_shows_the_run(client, clock):
    run = RunFactory(design__name="Kantha Quilt")
    link = portal_link(run_id=run.id, partner_id=run.partner_id)
    assert link.startswith("https://herald.example.com/partners/wa-auth?token=")
    response = client.get(link.removeprefix("https://herald.example.com"))
    assert response.status_code == 302
    assert response["Location"] == f"/partners/runs/{run.id}"
    page = client.get(response["Location"])
    assert page.status_code == 200
    assert "Kantha Quilt" in page.content.decode()
    assert client.session["partner_id"] == run.partner_id


def test_the_wa_auth_view_refuses_an_expired_link(client, clock):
    run = RunFactory()
    token = make_token(run_id=run.id, partner_id=run.partner_id)
    clock.move_to(NOW + timedelta(hours=25))
    response = client.get("/partners/wa-auth", {"token": token})
    assert response.status_code == 403
    assert "expired" in response.content.decode()
    assert "partner_id" not in client.session


def test_the_wa_auth_view_refuses_a_tampered_link(client, clock):
    run = RunFactory()
    token = make_token(run_id=run.id, partner_id=run.partner_id)
    response = client.get("/partners/wa-auth", {"token": token[:-3] + "xyz"})
    assert response.status_code == 403
    assert "not valid" in response.content.decode()
    assert client.get(f"/partners/runs/{run.id}").status_code == 403


def test_a_link_for_a_run_reassigned_since_is_refused(client, clock):
    run = RunFactory()
    token = make_token(run_id=run.id, partner_id=run.partner_id + 1000)
    assert client.get("/partners/wa-auth", {"token": token}).status_code == 403
