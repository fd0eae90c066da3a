"""The signed partner-portal link in reminders: /partners/wa-auth?token=... signs the run and
the partner with Django's TimestampSigner and is good for 24 hours."""

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core import signing

SALT = "production_runs.wa-auth"
MAX_AGE = timedelta(hours=24)


class LinkExpired(Exception):
    pass


class LinkInvalid(Exception):
    pass


@dataclass(frozen=True)
class PartnerLink:
    run_id: int
    partner_id: int


def make_token(*, run_id: int, partner_id: int) -> str:
    return signing.TimestampSigner(salt=SALT).sign_object({"r": run_id, "p": partner_id})


def read_token(token: str) -> PartnerLink:
    signer = signing.TimestampSigner(salt=SALT)
    try:
        data = signer.unsign_object(token, max_age=MAX_AGE)
    except signing.SignatureExpired as exc:
        raise LinkExpired(str(exc)) from exc
    except (signing.BadSignature, ValueError, TypeError) as exc:
        raise LinkInvalid(str(exc)) from exc
    try:
        return PartnerLink(run_id=int(data["r"]), partner_id=int(data["p"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise LinkInvalid("token does not name a run and a partner") from exc


def portal_link(*, run_id: int, partner_id: int) -> str:
    token = make_token(run_id=run_id, partner_id=partner_id)
    return f"{settings.PARTNER_PORTAL_URL.rstrip('/')}/wa-auth?token={token}"
