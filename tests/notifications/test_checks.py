import pytest
from django.db import connection

from notifications import checks


@pytest.mark.skipif(connection.vendor != "sqlite", reason="a check of SQLite's version")
def test_an_sqlite_older_than_herald_needs_is_a_clear_system_check_error(monkeypatch):
    assert checks.check_sqlite_version() == []  # this machine's SQLite is recent enough
    monkeypatch.setattr(connection.Database, "sqlite_version_info", (3, 31, 1))
    errors = checks.check_sqlite_version()
    assert [e.id for e in errors] == ["notifications.E001"]
    assert "SQLite 3.31.1; Herald needs 3.33.0 or later" in errors[0].msg
