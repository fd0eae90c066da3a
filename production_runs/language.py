"""Which language a WhatsApp template goes out in, decided at send time (seed 002):
an explicit option on the send, then the partner's saved conversation language, then the
phone prefix (+91 → Hindi, any other → English), then WHATSAPP_TEMPLATE_LANG, then Hindi.

A language the partner's platform has no variant of (Hindi on a non-Indian WABA) falls back
to the platform's English, so the send never names a template variant that cannot exist.
"""

from collections.abc import Sequence

from django.conf import settings

FINAL_DEFAULT = "hi"


def language_from_phone(phone: str) -> str:
    if not phone:
        return ""
    return "hi" if phone.startswith("+91") else "en"


def resolve_language(
    *,
    explicit: str = "",
    saved: str = "",
    phone: str = "",
    available: Sequence[str] | None = None,
) -> str:
    chosen = (
        explicit
        or saved
        or language_from_phone(phone)
        or getattr(settings, "WHATSAPP_TEMPLATE_LANG", "")
        or FINAL_DEFAULT
    )
    if available and chosen not in available:
        return "en" if "en" in available else available[0]
    return chosen
