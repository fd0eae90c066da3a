import pytest
from django.contrib.auth import get_user_model

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_staff_log_in_to_the_admin_in_chromium(live_server, chromium_page, artifacts_dir):
    get_user_model().objects.create_superuser("ops", "ops@example.com", "correct horse")
    page = chromium_page
    page.goto(f"{live_server.url}/admin/")
    assert "Log in" in page.title()
    page.fill("#id_username", "ops")
    page.fill("#id_password", "correct horse")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    assert page.locator("#site-name").inner_text() == "Herald"
    assert "Operations" in page.content()
    page.screenshot(path=f"{artifacts_dir}/admin-login.png")
