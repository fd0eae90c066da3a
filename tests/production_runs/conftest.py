import pytest
import time_machine

from tests.production_runs.factories import NOW


@pytest.fixture
def clock():
    """The wall clock stands at NOW (Monday 10:00 in Asia/Kolkata) and only moves when a
    test moves it: clock.move_to(NOW + DAY)."""
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture(autouse=True)
def reminder_settings(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    settings.WHATSAPP_BACKEND = "notifications.channels.recording.WhatsAppChannel"
    settings.WHATSAPP_TEMPLATE_LANG = ""
    settings.WHATSAPP_PLATFORM_LANGUAGES = ""
    settings.PARTNER_PORTAL_URL = "https://herald.example.com/partners"
    return settings
