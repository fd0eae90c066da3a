import pytest

from production_runs.language import resolve_language


@pytest.mark.parametrize(
    ("explicit", "saved", "phone", "fallback", "expected"),
    [
        ("en", "hi", "+919876543210", "hi", "en"),  # an explicit option wins
        ("", "en", "+919876543210", "hi", "en"),  # then the partner's saved language
        ("", "hi", "+61412345678", "en", "hi"),
        ("", "", "+919876543210", "en", "hi"),  # then the phone prefix: +91 is Hindi
        ("", "", "+61412345678", "hi", "en"),  # any other prefix is English
        ("", "", "+14155550100", "", "en"),
        ("", "", "", "en", "en"),  # no phone: WHATSAPP_TEMPLATE_LANG
        ("", "", "", "", "hi"),  # and finally Hindi
    ],
)
def test_the_language_follows_the_seed_order(settings, explicit, saved, phone, fallback, expected):
    settings.WHATSAPP_TEMPLATE_LANG = fallback
    assert resolve_language(explicit=explicit, saved=saved, phone=phone) == expected


def test_a_language_the_platform_lacks_falls_back_to_its_english():
    assert resolve_language(saved="hi", phone="+61412345678", available=["en"]) == "en"
    assert resolve_language(saved="hi", phone="+919876543210", available=["en", "hi"]) == "hi"
