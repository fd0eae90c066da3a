"""Validators shared by every app that stores contact details (cadence is the lowest layer)."""

import phonenumbers
from django.core.exceptions import ValidationError


def validate_e164(value: str) -> None:
    """A phone number a provider will accept: valid, and written in E.164 (+14155550100)."""
    if not value:
        return
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValidationError(f"{value!r} is not a phone number: {exc}") from exc
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if not phonenumbers.is_valid_number(parsed) or e164 != value:
        raise ValidationError(f"Give the number in E.164 form, e.g. +14155550100 (not {value!r}).")
