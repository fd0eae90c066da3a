import os
import shutil

import pytest


@pytest.fixture
def chromium_page(monkeypatch):
    """A page in Debian's headless chromium (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in the test thread; the ORM calls made by
    # the same test are still synchronous and safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    executable = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
    if not executable:
        pytest.fail("chromium is not installed: make ci installs Debian's chromium package")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(15_000)
        yield page
        context.close()
        browser.close()


@pytest.fixture
def artifacts_dir():
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "test-artifacts")
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def django_db_modify_db_settings():
    """No persistent connections in tests: threads and the live server would otherwise keep
    the PostgreSQL test database open when it is dropped."""
    from django.conf import settings

    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0


@pytest.fixture(autouse=True, scope="session")
def no_stray_connections_at_teardown(django_db_setup, django_db_blocker):
    """Before the PostgreSQL test database is dropped, end the sessions others left open:
    the live server's request threads (browser tests) keep one until the process exits,
    and the drop then failed with "database is being accessed by other users"."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def fast_senders(settings):
    """Tests that are not about pacing should not wait for it: every sender starts at a
    rate no test reaches. Pacing tests set their senders' rates themselves."""
    settings.SENDER_DEFAULT_RATES = {"email": 1e6, "sms": 1e6, "whatsapp": 1e6}


@pytest.fixture(autouse=True, scope="session")
def in_memory_broker():
    """Unit tests publish "look now" hints to an in-memory broker, never to the embedded
    broker under var/ (a running `make run` worker would pick them up). Tests that need a
    real broker start their own worker with its own folder or Redis."""
    from config.celery import app

    app.conf.broker_url = "memory://"
    app.conf.broker_transport = None  # settings name Herald's filesystem transport for var/
    app.conf.broker_transport_options = {}
    app.conf.result_backend = "cache+memory://"
    yield


@pytest.fixture(autouse=True)
def empty_cache():
    """Django's cache holds the pending dispatch hint; a test's hint must not hold back the
    next test's."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def tracking_inline(settings):
    """Webhook tests check what a report does to its delivery in the same request; the
    flood test switches back to the production mode (stored, applied by a worker)."""
    settings.TRACKING_APPLY = "inline"
