import pytest
from django.contrib.auth import get_user_model

PASSWORD = "correct horse"


@pytest.fixture
def recording_email(settings):
    """Development backends: what would be sent is recorded in the database."""
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"


@pytest.fixture
def staff_page(live_server, chromium_page):
    """A chromium page logged in to the admin as a superuser named mike."""

    def login(username: str = "mike"):
        user = get_user_model().objects.create_superuser(
            username, f"{username}@example.com", PASSWORD
        )
        page = chromium_page
        page.set_viewport_size({"width": 1600, "height": 1000})  # room for the lists
        page.goto(f"{live_server.url}/admin/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("#site-name")
        return page, user

    return login


def run_action(page, action: str, *, rows: list[str] | None = None) -> None:
    """Select rows of a changelist (all of them, or those containing each text) and run
    an admin action."""
    if rows is None:
        page.check("#action-toggle")
    else:
        for text in rows:
            page.locator("#result_list tbody tr", has_text=text).locator(
                "input.action-select"
            ).check()
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")
