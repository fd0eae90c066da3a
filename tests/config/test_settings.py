import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import broker_config, database_config

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
