"""Provider fakes of the bench: they take a message and answer with an id, at once or after
a fixed latency, and record nothing."""

import itertools
import os
import time

from django.core.mail.backends.base import BaseEmailBackend

from notifications.channels.base import Channel, OutgoingMessage

_ids = itertools.count(1)


class SlowEmailBackend(BaseEmailBackend):
    """An ESP that takes BENCH_PROVIDER_LATENCY seconds (default 50 ms) per call."""

    latency = float(os.environ.get("BENCH_PROVIDER_LATENCY", "0.05"))

    def send_messages(self, email_messages) -> int:
        time.sleep(self.latency)
        return len(email_messages)


class InstantSMSChannel(Channel):
    name = "sms"
    provider = "bench"

    def send(self, message: OutgoingMessage) -> str:
        return f"SM{next(_ids)}"


class InstantWhatsAppChannel(InstantSMSChannel):
    name = "whatsapp"
