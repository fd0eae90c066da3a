"""Validators shared by every app that stores contact details (cadence is the lowest layer)."""

import math

import phonenumbers
from django.core.exceptions import ValidationError

# The longest cooldown, wait or lifetime Herald takes: a year. Longer means "never" in
# practice, and a billion hours overflowed the date arithmetic of every tick and send.
MAX_HOURS = 24 * 365


def validate_hours(value: float | None) -> None:
    """Hours of a cooldown, a wait or a lifetime: from 0 to a year."""
    if value is None:
        return
    if isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValidationError("Give hours from 0 up.")
    if value > MAX_HOURS:
        raise ValidationError(
            f"At most {MAX_HOURS:,} hours (a year); {value:g} is longer than Herald waits."
        )


def validate_e164(value: str) -> None:
    """A phone number a provider will accept: valid, and written in E.164 (+14155550100)."""
    if not value:
        return
    example = "e.g. +14155550100"
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type != phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            problem = "it is not a phone number"
        elif value.lstrip().startswith("+"):
            problem = "it does not start with a known country code"
        else:
            problem = "it needs + and the country code"
        raise ValidationError(f"{value!r}: {problem} ({example}).") from exc
    if not phonenumbers.is_valid_number(parsed):
        region = phonenumbers.region_code_for_number(parsed) or f"+{parsed.country_code}"
        raise ValidationError(
            f"{value!r} is not a valid number for {region}: check its digits ({example})."
        )
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if e164 != value:
        raise ValidationError(f"Write {value!r} in E.164 form: {e164}.")
