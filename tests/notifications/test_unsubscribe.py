from urllib.parse import urlparse

import pytest
from django.core import signing
from django.test import Client

from notifications.models import Suppression
from notifications.unsubscribe import (
    mask_address,
    read_token,
    unsubscribe_headers,
    unsubscribe_token,
    unsubscribe_url,
    unsubscribe_urls,
)

pytestmark = pytest.mark.django_db
ONE_CLICK = "List-Unsubscribe=One-Click"


@pytest.fixture(autouse=True)
def site(settings):
    settings.SITE_URL = "https://herald.example.com"


@pytest.fixture
def mail_client():
    """What a mail client's one-click POST looks like: no session, no CSRF cookie or token."""
    return Client(enforce_csrf_checks=True)


def _path(url):
    return urlparse(url).path


def _one_click(client, url):
    return client.post(_path(url), ONE_CLICK, content_type="application/x-www-form-urlencoded")


def test_the_unsubscribe_url_is_absolute_and_signed():
    url = unsubscribe_url("jane@example.com")
    assert url.startswith("https://herald.example.com/unsubscribe/")
    token = _path(url).removeprefix("/unsubscribe/")
    assert read_token(token) == ("jane@example.com", "email")


def test_unsubscribe_headers_follow_rfc_8058():
    headers = unsubscribe_headers("jane@example.com")
    assert headers == {
        "List-Unsubscribe": f"<{unsubscribe_url('jane@example.com')}>",
        "List-Unsubscribe-Post": ONE_CLICK,
    }


def test_get_shows_a_confirmation_and_writes_nothing(client):
    response = client.get(_path(unsubscribe_url("jane.doe@example.com")))
    assert response.status_code == 200
    page = response.content.decode()
    assert "ja******@example.com" in page
    assert "jane.doe" not in page
    assert 'method="post"' in page
    assert not Suppression.objects.exists()


def test_a_one_click_post_unsubscribes_without_login_or_csrf(mail_client):
    response = _one_click(mail_client, unsubscribe_url("Jane@Example.com"))
    assert response.status_code == 200
    assert "unsubscribed" in response.content.decode()
    suppression = Suppression.objects.get()
    assert (suppression.address, suppression.channel, suppression.reason, suppression.source) == (
        "jane@example.com",
        "email",
        "unsubscribe",
        "one-click unsubscribe",
    )


def test_unsubscribing_twice_is_fine(mail_client):
    url = unsubscribe_url("jane@example.com")
    assert _one_click(mail_client, url).status_code == 200
    assert mail_client.post(_path(url)).status_code == 200  # the confirmation page's button
    assert Suppression.objects.count() == 1


def test_an_sms_link_suppresses_the_number_for_sms(mail_client):
    _one_click(mail_client, unsubscribe_url("+14155550100", channel="sms"))
    suppression = Suppression.objects.get()
    assert (suppression.address, suppression.channel) == ("+14155550100", "sms")


def _tampered_tokens():
    good = unsubscribe_token("jane@example.com")
    forged_salt = signing.dumps({"a": "boss@example.com", "c": "email"}, salt="other")
    bad_channel = signing.dumps({"a": "x@example.com", "c": "pigeon"}, salt="herald.unsubscribe")
    not_a_dict = signing.dumps(["x@example.com", "email"], salt="herald.unsubscribe")
    return [
        good[:-1] + ("A" if good[-1] != "A" else "B"),
        "garbage",
        forged_salt,
        bad_channel,
        not_a_dict,
    ]


@pytest.mark.parametrize("token", _tampered_tokens())
@pytest.mark.parametrize("method", ["get", "post"])
def test_a_forged_or_tampered_link_is_refused_and_writes_nothing(mail_client, token, method):
    response = getattr(mail_client, method)(f"/unsubscribe/{token}")
    assert response.status_code == 400
    assert "not valid" in response.content.decode()
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("jane.doe@example.com", "ja******@example.com"),
        ("j@example.com", "j***@example.com"),
        ("+14155550100", "+14*******00"),
        ("123", "***"),
    ],
)
def test_addresses_are_partly_masked(address, masked):
    assert mask_address(address) == masked


@pytest.mark.parametrize(
    "address",
    ["jane@example.com", "Jane.Doe+news@Example.co.uk", "zoë@exämple.de", "a" * 200 + "@x.io"],
)
def test_a_batchs_unsubscribe_urls_are_the_same_as_one_at_a_time(address, settings):
    settings.SITE_URL = "https://herald.example.com/TOKEN"  # the marker in the site's URL
    assert unsubscribe_urls()(address) == unsubscribe_url(address)
    assert read_token(_path(unsubscribe_urls()(address)).rstrip("/").rsplit("/", 1)[1]) == (
        address,
        "email",
    )


@pytest.mark.parametrize("address", ["jane@example.com", "a" * 200 + "@x.io"])
def test_links_sent_before_tokens_were_left_uncompressed_still_unsubscribe(address):
    old = signing.dumps({"a": address, "c": "email"}, salt="herald.unsubscribe", compress=True)
    assert old.startswith(".") == (len(address) > 100)  # the long one was compressed
    assert read_token(old) == (address, "email")
    assert not unsubscribe_token(address).startswith(".")
