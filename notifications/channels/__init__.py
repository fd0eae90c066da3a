"""The channel layer: one small class per channel, chosen by settings like EMAIL_BACKEND.

Dispatch asks `get_channel(name)` for a channel and calls `send()`; it only ever needs to
know whether a `ChannelError` is permanent, never which provider raised it.
"""

from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string

from .base import (
    Channel,
    ChannelError,
    OutgoingMessage,
    PermanentError,
    TransientError,
)

# Imported with the app rather than at the first send: a Celery prefork worker imports it
# once before forking, instead of each child on its first dispatch (20 children starting
# at once on 2 cores: 60 ms each).
from .email import EmailChannel

__all__ = [
    "Channel",
    "ChannelError",
    "OutgoingMessage",
    "PermanentError",
    "TransientError",
    "get_channel",
]

CHANNEL_SETTINGS = {"sms": "SMS_BACKEND", "whatsapp": "WHATSAPP_BACKEND"}


def get_channel(name: str) -> Channel:
    """A fresh channel for `name`, built from the current settings.

    Not cached: construction is cheap and re-reading settings means a changed credential
    (or a test's override) takes effect on the next send.
    """
    if name == "email":
        # Email always goes through Django's mail API; EMAIL_BACKEND picks the ESP.
        return EmailChannel()
    if name not in CHANNEL_SETTINGS:
        raise ValueError(f"unknown channel {name!r}; expected one of email, sms, whatsapp")
    return import_string(getattr(settings, CHANNEL_SETTINGS[name]))()
