"""What every channel shares: the message it is handed and the errors it may raise.

Dispatch only ever sees `ChannelError`. Each channel decides at the edge, where the
provider's answer is understood, whether trying again could help (transient) or never will
(permanent), so the retry policy upstream needs no knowledge of any provider.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import requests
from urllib3.exceptions import ConnectTimeoutError


@dataclass(frozen=True)
class OutgoingMessage:
    """One rendered message for one address; everything a provider needs, nothing it doesn't.

    `payload` carries the channel-specific extras (email headers and attachments, the SMS
    sender override, the WhatsApp template and its parameters).
    """

    channel: str
    to: str
    idempotency_key: str
    subject: str = ""
    body: str = ""
    html_body: str = ""
    payload: dict = field(default_factory=dict)
    status_callback: str = ""


class ChannelError(Exception):
    """A send that did not happen. `permanent` says whether a retry could ever succeed."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        code: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after
        self.code = code

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, permanent={self.permanent}, "
            f"retry_after={self.retry_after}, code={self.code!r})"
        )


class TransientError(ChannelError):
    """The provider was busy, slow or unreachable: the same message may go through later."""

    def __init__(self, message: str, *, retry_after: float | None = None, code: str = "") -> None:
        super().__init__(message, permanent=False, retry_after=retry_after, code=code)


class PermanentError(ChannelError):
    """The provider refused this message for good (bad address, opted out, bad template).
    `suppress`: the suppression reason ("bounce", "unsubscribe") when the provider said the
    address itself will never take a message (no such mailbox, not a mobile number, the
    person replied STOP), so dispatch puts it on the suppression list as a bounce report
    would; empty when the refusal was about this message or is not certain."""

    def __init__(self, message: str, *, code: str = "", suppress: str = "") -> None:
        super().__init__(message, permanent=True, code=code)
        self.suppress = suppress


class Channel:
    """One way of reaching a person. Subclasses talk to exactly one provider."""

    name: str = ""
    provider: str = ""

    def send(self, message: OutgoingMessage) -> str:
        """Hand the message to the provider and return its id for later status callbacks."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what the channel kept open between sends (an HTTP session); dispatch
        calls it at the end of each round."""


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), if any.

    Honouring the provider's own estimate beats a blind backoff when it bothered to say.
    """
    value = (headers or {}).get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def http_status_error(
    status: int, message: str, *, code: str = "", retry_after: float | None = None
) -> ChannelError:
    """Classify an HTTP failure the same way for every provider: 429 and 5xx may pass later."""
    code = code or f"http_{status}"
    if status == 429 or status >= 500:
        return TransientError(message, retry_after=retry_after, code=code)
    return PermanentError(message, code=code)


def network_error(exc: Exception, provider: str) -> TransientError:
    """A request that failed on the network. Retried ("connection_error") only when it never
    reached the provider: no connection was made (refused, name not resolved, connect
    timeout, TLS handshake). Once it may have arrived (the answer timed out, or the
    connection dropped while sending or waiting), the provider may have the message and a
    retry could send it twice: "no_answer", which dispatch leaves "unknown" for a person to
    check (invariant 2: at most once)."""
    if request_never_left(exc):
        return TransientError(f"{provider} unreachable: {exc}", code="connection_error")
    return TransientError(
        f"{provider} did not answer after the request went out: {exc}", code="no_answer"
    )


def request_never_left(exc: Exception) -> bool:
    """Whether a requests error (or anymail's, which wraps one as its cause) happened before
    the request reached the provider."""
    cause = exc.__cause__
    original = cause if isinstance(cause, requests.RequestException) else exc
    if isinstance(original, requests.ConnectTimeout | requests.exceptions.SSLError):
        return True
    if isinstance(original, requests.ConnectionError):
        reason = original.args[0] if original.args else None
        reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError carries it
        # NewConnectionError and NameResolutionError are ConnectTimeoutErrors too.
        return isinstance(reason, ConnectTimeoutError)
    return False
