"""Validators shared by every app that stores contact details (cadence is the lowest layer)."""

import phonenumbers
from django.core.exceptions import ValidationError


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
