"""Unsubscribe links: a signed token naming an address and a channel, a page to confirm,
and RFC 8058 one-click support for mail clients.

The signature is the protection: nobody can unsubscribe an address they were not sent, so
the page needs no login and the one-click POST (which mail clients send without cookies or
a CSRF token) is accepted. GET never changes anything, because link scanners fetch it.
The token is signed, not encrypted: whoever holds a link (its recipient, or anyone they
forward the email to) can decode the address from it; the page itself shows it masked.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from notifications.models import Channel, Suppression
from notifications.tracking import suppress

SALT = "herald.unsubscribe"


def unsubscribe_token(
    address: str, channel: str = Channel.EMAIL, *, signer: signing.TimestampSigner | None = None
) -> str:
    """A signed, timestamped token naming the address and channel (what `signing.dumps`
    makes, without compression: an ordinary address's payload does not shrink, and trying
    cost a third of a token). A batch passes one `signer` for all its tokens."""
    signer = signer or signing.TimestampSigner(salt=SALT)
    return signer.sign_object({"a": address, "c": str(channel)})


def read_token(token: str) -> tuple[str, str] | None:
    """(address, channel) from a token we signed, or None for anything else."""
    try:
        data = signing.loads(token, salt=SALT)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    address, channel = data.get("a"), data.get("c")
    if not isinstance(address, str) or not address or channel not in Channel.values:
        return None
    return address, channel


def unsubscribe_url(address: str, channel: str = Channel.EMAIL) -> str:
    return unsubscribe_url_of_token(unsubscribe_token(address, channel))


def unsubscribe_urls() -> Callable[[str], str]:
    """`unsubscribe_url` for the email addresses of one batch, the URL pattern reversed and
    the signer made once (reversing it per recipient was a third of a link's cost). The
    token's characters (URL-safe base64 and ':') pass through `reverse` unquoted, so the
    URLs are the same."""
    marker = "TOKEN"
    prefix, _, suffix = unsubscribe_url_of_token(marker).rpartition(marker)
    signer = signing.TimestampSigner(salt=SALT)
    return lambda address: f"{prefix}{unsubscribe_token(address, signer=signer)}{suffix}"


def unsubscribe_url_of_token(token: str) -> str:
    return f"{settings.SITE_URL}{reverse('unsubscribe', args=[token])}"


def unsubscribe_headers(address: str) -> dict:
    """The List-Unsubscribe headers for an email to `address` (RFC 2369 and RFC 8058), which
    Gmail and Yahoo require of bulk senders."""
    return list_unsubscribe_headers(unsubscribe_url(address, Channel.EMAIL))


def list_unsubscribe_headers(url: str) -> dict:
    """The same headers for an unsubscribe_url already made (for the footer): one
    signature per recipient, not two."""
    return {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def mask_address(address: str) -> str:
    """Enough to recognise one's own address on the page, not the whole of it (the token in
    the link still carries it: see the module's docstring)."""
    local, at, domain = address.partition("@")
    if at:
        return f"{local[:2]}{'*' * max(3, len(local) - 2)}@{domain}"
    if len(address) <= 5:
        return "*" * len(address)
    return f"{address[:3]}{'*' * (len(address) - 5)}{address[-2:]}"


@csrf_exempt
@login_not_required
@require_http_methods(["GET", "POST"])
def unsubscribe_view(request: HttpRequest, token: str) -> HttpResponse:
    """GET: a confirmation page. POST (its button, or a mail client's one-click): suppress."""
    found = read_token(token)
    if found is None:
        return render(request, "notifications/unsubscribe_invalid.html", status=400)
    address, channel = found
    context = {"masked": mask_address(address), "channel": Channel(channel).label}
    if request.method == "GET":
        return render(request, "notifications/unsubscribe_confirm.html", context)
    suppress(
        address=address,
        channel=channel,
        reason=Suppression.Reason.UNSUBSCRIBE,
        source="one-click unsubscribe",
        by="recipient",
        now=timezone.now(),
    )
    return render(request, "notifications/unsubscribe_done.html", context)
