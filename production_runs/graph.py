"""Meta's Graph API for message templates: the one module that talks to it.

Each WhatsApp platform (WABA) has its own token in WHATSAPP_PLATFORM_TOKENS ("IN=...;AU=...",
by platform label), falling back to WHATSAPP_ACCESS_TOKEN; a missing token is reported by
name instead of failing at Meta.
"""

from __future__ import annotations

import requests
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from production_runs.models import WhatsAppPlatform

# Pages of templates followed at most (Meta returns up to `limit` per page).
MAX_PAGES = 50


# Meta's subcode for a template name and language it already has (a submission it took
# before the list was read, or one the list left out).
ALREADY_EXISTS_SUBCODE = 2388024


class GraphError(Exception):
    """A Graph API call that did not do what was asked. `unsure`: whether Meta may still
    have (or may take) what was asked for: it was unreachable, busy (429, 5xx) or answered
    that the template already exists."""

    def __init__(self, message: str, *, unsure: bool = False) -> None:
        super().__init__(message)
        self.unsure = unsure


def parse_tokens(value: str) -> dict[str, str]:
    tokens = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        label, sep, token = part.partition("=")
        if not sep or not label.strip() or not token.strip():
            raise ImproperlyConfigured(
                f'WHATSAPP_PLATFORM_TOKENS: an entry is not like "IN=<token>" ({label.strip()!r})'
            )
        tokens[label.strip()] = token.strip()
    return tokens


def platform_token(platform: WhatsAppPlatform) -> str:
    token = parse_tokens(settings.WHATSAPP_PLATFORM_TOKENS).get(platform.label)
    token = token or settings.WHATSAPP_ACCESS_TOKEN
    if not token:
        raise ImproperlyConfigured(
            f"no token for WhatsApp platform {platform.label}: set WHATSAPP_PLATFORM_TOKENS="
            f'"{platform.label}=<token>" or WHATSAPP_ACCESS_TOKEN'
        )
    return token


class GraphClient:
    def __init__(self, platform: WhatsAppPlatform) -> None:
        self.platform = platform
        self.token = platform_token(platform)
        self.base = settings.WHATSAPP_GRAPH_URL.rstrip("/")

    def _call(self, method: str, url: str, **kwargs) -> dict:
        try:
            response = requests.request(
                method,
                url,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=settings.PROVIDER_TIMEOUT_SECONDS,
                **kwargs,
            )
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise GraphError(f"Graph API unreachable: {exc}", unsure=True) from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            detail, exists = "", False
            if isinstance(error, dict):
                detail = f": {error.get('message', '')}"
                user_msg = error.get("error_user_msg")
                if user_msg:
                    detail += f" ({user_msg})"
                exists = error.get("error_subcode") == ALREADY_EXISTS_SUBCODE
            busy = response.status_code == 429 or response.status_code >= 500
            raise GraphError(
                f"Graph API HTTP {response.status_code}{detail}", unsure=busy or exists
            )
        if not isinstance(body, dict):
            raise GraphError(f"Graph API answered {response.text[:200]!r}")
        return body

    def list_templates(self) -> list[dict]:
        """GET /{waba-id}/message_templates, every page."""
        url = f"{self.base}/{self.platform.waba_id}/message_templates"
        params: dict | None = {"fields": "name,language,status,id,category", "limit": 200}
        templates: list[dict] = []
        for _ in range(MAX_PAGES):
            body = self._call("GET", url, params=params)
            templates += [t for t in body.get("data", []) if isinstance(t, dict)]
            url = (body.get("paging") or {}).get("next")
            params = None  # the next link carries them
            if not url:
                break
        return templates

    def create_template(self, body: dict) -> dict:
        """POST /{waba-id}/message_templates: returns {"id", "status", "category"}."""
        url = f"{self.base}/{self.platform.waba_id}/message_templates"
        return self._call("POST", url, json=body)
