"""Turn environment values into settings. Plain functions so tests can feed them variants."""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def database_config(url: str, *, var_dir: Path) -> dict:
    """DATABASES['default'] from a DATABASE_URL (empty: a SQLite file under var/)."""
    if not url:
        url = f"sqlite:///{var_dir / 'herald.sqlite3'}"
    scheme = url.split("://", 1)[0]
    if scheme not in environ.Env.DB_SCHEMES:
        raise ImproperlyConfigured(f"DATABASE_URL has an unsupported scheme: {scheme!r}")
    config = environ.Env.db_url_config(url)
    engine = config["ENGINE"]
    if not engine:
        raise ImproperlyConfigured(f"DATABASE_URL has an unsupported scheme: {url.split(':')[0]!r}")
    if engine.endswith("sqlite3"):
        # WAL lets the web process read while a worker writes; IMMEDIATE takes the write lock
        # at BEGIN, so two writers queue on the timeout instead of failing with "locked".
        config.setdefault("OPTIONS", {}).update(
            {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            }
        )
        # Tests use a file too (not :memory:), so threads in race tests get SQLite's real
        # file locking and busy timeout instead of shared-cache "table is locked" errors.
        # One file per test process, so two test runs side by side never share one.
        test_name = var_dir / f"test-herald-{os.getpid()}.sqlite3"
        config.setdefault("TEST", {}).setdefault("NAME", str(test_name))
    elif engine.endswith("postgresql"):
        config.setdefault("CONN_MAX_AGE", 60)
        config.setdefault("CONN_HEALTH_CHECKS", True)
    return config


def broker_config(url: str, *, var_dir: Path) -> tuple[str, dict, str]:
    """(broker_url, broker_transport_options, result_backend) for CELERY_BROKER_URL.

    Empty means the embedded default: kombu's filesystem transport under var/, which needs
    no server. redis:// and amqp:// URLs are used as given.
    """
    if not url or url.startswith("filesystem:"):
        folder = var_dir / "broker"
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
        results = var_dir / "results"
        results.mkdir(parents=True, exist_ok=True)
        return "filesystem://localhost/", options, f"file://{results}"
    scheme = url.split("://", 1)[0]
    if scheme in ("redis", "rediss"):
        # A delivery is never scheduled through a broker ETA (see DESIGN, invariant 1), so the
        # visibility timeout only bounds how long a crashed worker's message stays hidden.
        return url, {"visibility_timeout": 3600}, url
    if scheme in ("amqp", "amqps", "pyamqp"):
        return url, {}, "rpc://"
    raise ImproperlyConfigured(
        f"CELERY_BROKER_URL has an unsupported scheme {scheme!r}: use redis://, amqp:// "
        "or leave it empty for the embedded filesystem broker"
    )
