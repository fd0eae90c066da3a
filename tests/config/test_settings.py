import base64
import json
import os
import secrets
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import anymail_config, broker_config, database_config, email_config

ROOT = Path(__file__).resolve().parents[2]


def test_empty_database_url_means_a_sqlite_file_under_var(tmp_path):
    config = database_config("", var_dir=tmp_path)
    assert config["ENGINE"] == "django.db.backends.sqlite3"
    assert config["NAME"] == str(tmp_path / "herald.sqlite3")
    assert config["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


def test_postgres_url_is_parsed_into_its_parts(tmp_path):
    config = database_config("postgres://herald:s3cret@db.internal:6543/herald", var_dir=tmp_path)
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["HOST"], config["PORT"], config["NAME"]) == ("db.internal", 6543, "herald")
    assert (config["USER"], config["PASSWORD"]) == ("herald", "s3cret")
    assert config["CONN_HEALTH_CHECKS"] is True


def test_unknown_database_scheme_is_refused(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL|scheme"):
        database_config("oracle-ish://x/y", var_dir=tmp_path)


def test_empty_broker_url_means_the_filesystem_broker_under_var(tmp_path):
    url, options, results = broker_config("", var_dir=tmp_path)
    assert url == "filesystem://localhost/"
    assert options["data_folder_in"] == options["data_folder_out"]
    assert Path(options["data_folder_in"]).is_dir()
    assert results == f"file://{tmp_path / 'results'}"


def test_redis_broker_url_is_used_as_given_with_results_in_redis(tmp_path):
    url, options, results = broker_config("redis://cache:6379/2", var_dir=tmp_path)
    assert (url, results) == ("redis://cache:6379/2", "redis://cache:6379/2")
    assert options["visibility_timeout"] == 3600
    assert not (tmp_path / "broker").exists()


def test_amqp_broker_url_uses_rpc_results(tmp_path):
    assert broker_config("amqp://guest@rabbit//", var_dir=tmp_path)[2] == "rpc://"


def test_unknown_broker_scheme_names_the_problem(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="'sqs'"):
        broker_config("sqs://queue", var_dir=tmp_path)


def _manage(*args, **env_overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY")}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_production_settings_pass_check_deploy_without_warnings(tmp_path):
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="False",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="herald.example.com",
        HERALD_VAR_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_production_without_secret_key_refuses_to_start(tmp_path):
    result = _manage("check", DEBUG="False", HERALD_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_links_that_leave_the_site_follow_the_port_make_run_serves_on():
    env = {k: v for k, v in os.environ.items() if k not in ("SITE_URL", "HERALD_PORT")}
    script = (
        "import django; django.setup(); from django.conf import settings; print(settings.SITE_URL)"
    )
    site = {}
    for port in (None, "8021"):
        run_env = {**env, "DJANGO_SETTINGS_MODULE": "config.settings"}
        if port:
            run_env["HERALD_PORT"] = port
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=run_env, capture_output=True, text=True
        )
        site[port] = out.stdout.strip().splitlines()[-1]
    assert site == {None: "http://127.0.0.1:8000", "8021": "http://127.0.0.1:8021"}


# --- Email: ANYMAIL_<KEY> and EMAIL_URL ------------------------------------------------------


def _settings(names, **env_overrides):
    """The named settings as config/settings.py computes them in a fresh process."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANYMAIL_", "EMAIL_")) and k not in ("AWS_REGION", "DEBUG")
    }
    env.update(env_overrides, DJANGO_SETTINGS_MODULE="config.settings")
    script = (
        "import json, django; django.setup(); from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n) for n in {list(names)!r}}}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_anymail_variable_in_the_environment_goes_into_anymail():
    config = anymail_config(
        {
            "ANYMAIL_MAILGUN_API_KEY": "key-1",
            "ANYMAIL_MAILGUN_SENDER_DOMAIN": "mg.example.com",
            "ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY": "signing-1",
            "ANYMAIL_WEBHOOK_SECRET": "hook:s3cret",
            "ANYMAIL_POSTMARK_SERVER_TOKEN": "",  # empty: not set
            "MAILGUN_API_KEY": "not ours",  # only ANYMAIL_ variables
            "AWS_REGION": "eu-west-1",
        }
    )
    assert config == {
        "MAILGUN_API_KEY": "key-1",
        "MAILGUN_SENDER_DOMAIN": "mg.example.com",
        "MAILGUN_WEBHOOK_SIGNING_KEY": "signing-1",
        "WEBHOOK_SECRET": "hook:s3cret",
        "AMAZON_SES_CLIENT_PARAMS": {"region_name": "eu-west-1"},
    }


def test_anymail_http_esps_wait_as_long_as_every_other_provider_call():
    """anymail's own default is 30 s; PROVIDER_TIMEOUT_SECONDS reached only SMTP, Twilio
    and WhatsApp. A Postmark backend built from these settings waits 7 s."""
    script_names = ["ANYMAIL", "PROVIDER_TIMEOUT_SECONDS"]
    timed = _settings(script_names, PROVIDER_TIMEOUT_SECONDS="7")
    assert timed["ANYMAIL"]["REQUESTS_TIMEOUT"] == 7.0
    own = _settings(script_names, PROVIDER_TIMEOUT_SECONDS="7", ANYMAIL_REQUESTS_TIMEOUT="12")
    assert own["ANYMAIL"]["REQUESTS_TIMEOUT"] == 12


def test_a_postmark_backend_takes_the_provider_timeout(settings):
    from anymail.backends.postmark import EmailBackend

    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "x", "REQUESTS_TIMEOUT": 7.0}
    assert EmailBackend().timeout == 7.0


def test_anymail_values_that_are_not_strings_are_decoded():
    config = anymail_config(
        {
            "ANYMAIL_AMAZON_SES_CLIENT_PARAMS": '{"region_name": "us-west-2"}',
            "ANYMAIL_WEBHOOK_SECRET": '["hook:old", "hook:new"]',
            "ANYMAIL_IGNORE_UNSUPPORTED_FEATURES": "True",
            "ANYMAIL_REQUESTS_TIMEOUT": "30",
            "ANYMAIL_SENDGRID_API_KEY": "12345",  # a key of digits stays a string
            "AWS_REGION": "eu-west-1",  # the explicit client params win
        }
    )
    assert config["AMAZON_SES_CLIENT_PARAMS"] == {"region_name": "us-west-2"}
    assert config["WEBHOOK_SECRET"] == ["hook:old", "hook:new"]
    assert config["IGNORE_UNSUPPORTED_FEATURES"] is True
    assert config["REQUESTS_TIMEOUT"] == 30
    assert config["SENDGRID_API_KEY"] == "12345"
    # (connect, read), as requests takes it
    assert anymail_config({"ANYMAIL_REQUESTS_TIMEOUT": "[3.05, 27]"})["REQUESTS_TIMEOUT"] == (
        3.05,
        27,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ANYMAIL_AMAZON_SES_CLIENT_PARAMS", "{region_name: x}"),
        ("ANYMAIL_REQUESTS_TIMEOUT", "x"),
        ("ANYMAIL_REQUESTS_TIMEOUT", "[1, 2, 3]"),
    ],
)
def test_an_unreadable_anymail_value_names_its_variable(name, value):
    with pytest.raises(ImproperlyConfigured, match=name):
        anymail_config({name: value})


def test_settings_take_the_esp_keys_from_the_environment():
    """The walkthrough's Mailgun webhook failed because nothing read this variable."""
    anymail = _settings(
        ["ANYMAIL"],
        ANYMAIL_WEBHOOK_SECRET="hook:s3cret",
        ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY="signing-1",
        ANYMAIL_SENDGRID_API_KEY="SG.x",
    )["ANYMAIL"]
    assert anymail == {
        "MAILGUN_WEBHOOK_SIGNING_KEY": "signing-1",
        "SENDGRID_API_KEY": "SG.x",
        "WEBHOOK_SECRET": "hook:s3cret",
        "REQUESTS_TIMEOUT": 10.0,  # PROVIDER_TIMEOUT_SECONDS
    }


def test_an_smtp_email_url_gives_host_port_credentials_and_starttls():
    assert email_config("smtp+tls://us%40er:p%40ss%3Aword@smtp.example.com:587") == {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "smtp.example.com",
        "EMAIL_PORT": 587,
        "EMAIL_HOST_USER": "us@er",
        "EMAIL_HOST_PASSWORD": "p@ss:word",
        "EMAIL_USE_TLS": True,
    }


def test_an_smtp_ssl_email_url_may_set_the_timeout():
    config = email_config("smtp+ssl://u:p@smtp.example.com:465?timeout=20")
    assert (config["EMAIL_USE_SSL"], config["EMAIL_PORT"], config["EMAIL_TIMEOUT"]) == (
        True,
        465,
        20,
    )
    assert "EMAIL_USE_TLS" not in config
    assert email_config("") == {}
    # seconds, whole or not (django-environ left 2.5 a string smtplib failed on)
    assert email_config("smtp://smtp.example.com:25?timeout=2.5")["EMAIL_TIMEOUT"] == 2.5


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("smtps://u:p@smtp.example.com:465", "smtps:// is ambiguous"),
        ("mailgun://key@example.com", "unsupported scheme 'mailgun'"),
        ("smtp+tls://u:p@smtp.example.com:587?tls=yes", "unsupported parameters tls"),
        ("smtp+tls://u:p@:587", "names no mail server host"),
        ("smtp+tls://u:p@smtp.example.com:587?timeout=soon", "timeout must be a number"),
    ],
)
def test_an_email_url_herald_cannot_use_is_refused_saying_why(url, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        email_config(url)


EMAIL_NAMES = [
    "EMAIL_BACKEND",
    "EMAIL_HOST",
    "EMAIL_PORT",
    "EMAIL_HOST_USER",
    "EMAIL_HOST_PASSWORD",
    "EMAIL_USE_TLS",
    "EMAIL_USE_SSL",
    "EMAIL_TIMEOUT",
]


def test_settings_read_the_smtp_server_from_email_url():
    assert _settings(EMAIL_NAMES, EMAIL_URL="smtp+tls://user:pass@smtp.example.com:587") == {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "smtp.example.com",
        "EMAIL_PORT": 587,
        "EMAIL_HOST_USER": "user",
        "EMAIL_HOST_PASSWORD": "pass",
        "EMAIL_USE_TLS": True,
        "EMAIL_USE_SSL": False,
        "EMAIL_TIMEOUT": 10.0,  # PROVIDER_TIMEOUT_SECONDS: SMTP never waits forever
    }


def test_without_email_url_email_is_recorded_and_an_explicit_backend_wins():
    plain = _settings(EMAIL_NAMES)
    assert plain["EMAIL_BACKEND"] == "notifications.channels.recording.EmailBackend"
    assert (plain["EMAIL_HOST"], plain["EMAIL_PORT"], plain["EMAIL_HOST_USER"]) == (
        "localhost",
        25,
        "",
    )
    custom = _settings(
        ["EMAIL_BACKEND", "EMAIL_HOST"],
        EMAIL_URL="smtp+tls://u:p@smtp.example.com:587",
        EMAIL_BACKEND="django.core.mail.backends.console.EmailBackend",
    )
    assert custom == {
        "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend",
        "EMAIL_HOST": "smtp.example.com",
    }


class _AuthSMTPHandler(socketserver.StreamRequestHandler):
    """Enough SMTP with AUTH PLAIN for Django's backend; keeps the credentials it was given."""

    def handle(self):
        self.wfile.write(b"220 test\r\n")
        while line := self.rfile.readline():
            command = line.split(b" ", 1)[0].strip().upper()
            if command == b"EHLO":
                self.wfile.write(b"250-test\r\n250 AUTH PLAIN\r\n")
            elif command == b"AUTH":
                self.server.logins.append(base64.b64decode(line.split()[2]).split(b"\0")[1:])
                self.wfile.write(b"235 ok\r\n")
            elif command == b"DATA":
                self.wfile.write(b"354 go on\r\n")
                while self.rfile.readline() not in (b".\r\n", b""):
                    pass
                self.server.messages += 1
                self.wfile.write(b"250 queued\r\n")
            elif command == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:  # MAIL, RCPT, RSET, NOOP
                self.wfile.write(b"250 ok\r\n")


def test_sendtestemail_goes_to_the_smtp_server_email_url_names():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _AuthSMTPHandler)
    server.daemon_threads = True
    server.logins, server.messages = [], 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        result = _manage(
            "sendtestemail",
            "ops@example.com",
            EMAIL_URL=f"smtp://herald%40example.com:p%40ss@127.0.0.1:{port}?timeout=5",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert server.logins == [[b"herald@example.com", b"p@ss"]]
    assert server.messages == 1


def test_production_settings_with_smtp_and_esp_variables_pass_check_deploy(tmp_path):
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="False",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="herald.example.com",
        HERALD_VAR_DIR=str(tmp_path),
        EMAIL_URL="smtp+tls://user:pass@smtp.example.com:587",
        ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY="signing-1",
        ANYMAIL_WEBHOOK_SECRET="hook:s3cret",
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_cache_url_sets_the_cache_that_keeps_the_dispatch_hint():
    shared = _manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.CACHES['default']['BACKEND'], "
        "settings.CACHES['default']['LOCATION'])",
        CACHE_URL="redis://cache.internal:6379/1",
    )
    assert shared.stdout.strip().splitlines()[-1].split() == [
        "django.core.cache.backends.redis.RedisCache",
        "redis://cache.internal:6379/1",
    ]
    default = _manage(
        "shell", "-c", "from django.conf import settings; print(settings.CACHES['default'])"
    )
    assert "LocMemCache" in default.stdout.strip().splitlines()[-1]
