import logging

from config.logmask import MaskPersonalData, mask


def test_emails_and_phone_numbers_are_masked():
    text = "delivery 7 to office+042@brooklyn-tech.example.org and +14155550100 failed"
    assert mask(text) == "delivery 7 to o***@brooklyn-tech.example.org and +1415*****00 failed"


def test_the_filter_masks_formatted_records():
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "sent to %s", ("ana@example.com",), None
    )
    MaskPersonalData().filter(record)
    assert record.getMessage() == "sent to a***@example.com"


def test_the_console_handler_uses_the_filter(settings):
    assert "mask_personal_data" in settings.LOGGING["handlers"]["console"]["filters"]
