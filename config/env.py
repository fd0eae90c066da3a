"""Turn environment values into settings. Plain functions so tests can feed them variants."""

import json
import os
from collections.abc import Mapping
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


# anymail settings that are not strings; everything else an ESP reads (keys, tokens,
# domains, URLs) is taken as given. Objects and lists are written as JSON.
_ANYMAIL_NUMBERS = ("REQUESTS_TIMEOUT", "DOWNLOAD_CHUNK_SIZE")


def anymail_config(environ: Mapping[str, str]) -> dict:
    """settings.ANYMAIL from the environment: every non-empty `ANYMAIL_<KEY>` becomes
    ANYMAIL["<KEY>"], so any ESP's setting can be given without a code change
    (ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY → ANYMAIL["MAILGUN_WEBHOOK_SIGNING_KEY"]).

    `true`/`false` become booleans, a value starting with `{` or `[` is read as JSON
    (ANYMAIL_AMAZON_SES_CLIENT_PARAMS, a WEBHOOK_SECRET list to rotate), and
    *_REQUESTS_TIMEOUT / *_DOWNLOAD_CHUNK_SIZE are numbers. AWS_REGION, if set, is the
    Amazon SES region unless ANYMAIL_AMAZON_SES_CLIENT_PARAMS says otherwise.
    """
    config: dict = {}
    for name, raw in sorted(environ.items()):
        key = name.removeprefix("ANYMAIL_")
        value = raw.strip()
        if not name.startswith("ANYMAIL_") or not key or not value:
            continue
        config[key] = _anymail_value(name, key, value)
    region = environ.get("AWS_REGION", "").strip()
    if region and "AMAZON_SES_CLIENT_PARAMS" not in config:
        config["AMAZON_SES_CLIENT_PARAMS"] = {"region_name": region}
    return config


def _anymail_value(name: str, key: str, value: str):
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value[0] in "{[" or key.endswith(_ANYMAIL_NUMBERS):
        try:
            decoded = json.loads(value)
        except ValueError as error:
            raise ImproperlyConfigured(f"{name} is not valid JSON: {error}") from error
        if key.endswith(_ANYMAIL_NUMBERS):
            return _anymail_number(name, key, value, decoded)
        return decoded
    return value


def _anymail_number(name: str, key: str, value: str, decoded):
    """A number (seconds, bytes); REQUESTS_TIMEOUT may also be [connect, read], which
    requests takes as a tuple."""
    if isinstance(decoded, int | float) and not isinstance(decoded, bool):
        return decoded
    pair = (
        key.endswith("REQUESTS_TIMEOUT")
        and isinstance(decoded, list)
        and len(decoded) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in decoded)
    )
    if pair:
        return tuple(decoded)
    raise ImproperlyConfigured(f"{name} must be a number of seconds or bytes: {value!r}")


# Query parameters an EMAIL_URL may carry, and the Django settings they set.
_EMAIL_URL_OPTIONS = {
    "TIMEOUT": "EMAIL_TIMEOUT",
    "SSL_CERTFILE": "EMAIL_SSL_CERTFILE",
    "SSL_KEYFILE": "EMAIL_SSL_KEYFILE",
}


def email_config(url: str) -> dict:
    """Django's EMAIL_* settings from an EMAIL_URL (empty: none, Django's defaults stand).

    smtp+tls://user:pass@host:587 is SMTP with STARTTLS, smtp+ssl://user:pass@host:465 SMTP
    over TLS from the first byte, smtp://host:25 plain; `?timeout=20` sets EMAIL_TIMEOUT.
    Percent-encode `@`, `:` or `/` in the user name or password. The URL names a backend
    (SMTP for smtp*, console for consolemail://): it is returned as EMAIL_BACKEND, which an
    explicit EMAIL_BACKEND setting overrides.
    """
    if not url:
        return {}
    scheme = url.split("://", 1)[0]
    if scheme == "smtps":
        # django-environ reads smtps:// as STARTTLS, which on port 465 hangs until the
        # timeout: make the writer say which of the two they mean.
        raise ImproperlyConfigured(
            "EMAIL_URL: smtps:// is ambiguous; use smtp+ssl:// for TLS from the start (port "
            "465) or smtp+tls:// for STARTTLS (port 587)"
        )
    try:
        parsed = environ.Env.email_url_config(url)
    except ImproperlyConfigured as error:
        raise ImproperlyConfigured(
            f"EMAIL_URL has an unsupported scheme {scheme!r}: use smtp+tls://, smtp+ssl:// "
            "or smtp:// (user:password@host:port)"
        ) from error
    config = {key: value for key, value in parsed.items() if value not in (None, "")}
    options = config.pop("OPTIONS", {})
    unknown = sorted(set(options) - set(_EMAIL_URL_OPTIONS))
    if unknown:
        raise ImproperlyConfigured(
            f"EMAIL_URL has unsupported parameters {', '.join(k.lower() for k in unknown)}: "
            f"use {', '.join(k.lower() for k in _EMAIL_URL_OPTIONS)}"
        )
    for option, value in options.items():
        config[_EMAIL_URL_OPTIONS[option]] = value
    if "EMAIL_TIMEOUT" in config:
        # django-environ leaves ?timeout=2.5 a string, which smtplib would fail on at the
        # first send: seconds, read here.
        try:
            config["EMAIL_TIMEOUT"] = float(config["EMAIL_TIMEOUT"])
        except (TypeError, ValueError):
            raise ImproperlyConfigured(
                f"EMAIL_URL: timeout must be a number of seconds, not {config['EMAIL_TIMEOUT']!r}"
            ) from None
    if config.get("EMAIL_BACKEND", "").endswith(".smtp.EmailBackend") and not config.get(
        "EMAIL_HOST"
    ):
        raise ImproperlyConfigured("EMAIL_URL names no mail server host: smtp+tls://host:587")
    return config
