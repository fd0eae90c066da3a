"""Settings of `make bench`: Herald's own, plus django-post-office (the baseline of workloads
1 and 2), a throw-away database and providers that answer at once.

The database is a SQLite file in a temporary folder unless DATABASE_URL names one (`make
bench-postgres` points it at a throw-away PostgreSQL database).
"""

import os
import tempfile
from pathlib import Path

# Made here (and removed at the end of the run) unless HERALD_BENCH_DIR names one.
BENCH_DIR_OWNED = not os.environ.get("HERALD_BENCH_DIR")
BENCH_DIR = Path(
    os.environ.get("HERALD_BENCH_DIR") or tempfile.mkdtemp(prefix="herald-bench-")
).resolve()
os.environ["HERALD_BENCH_DIR"] = str(BENCH_DIR)  # worker processes share the folder
os.environ.setdefault("HERALD_VAR_DIR", str(BENCH_DIR / "var"))
os.environ.setdefault("LOG_LEVEL", "WARNING")

from config.env import database_config  # noqa: E402
from config.settings import *  # noqa: E402, F403
from config.settings import INSTALLED_APPS, LOGGING, VAR_DIR, env  # noqa: E402

# Production mode: no query log kept in memory, cached templates.
DEBUG = False
INSTALLED_APPS = [*INSTALLED_APPS, "post_office"]

if not env("DATABASE_URL", default=""):
    DATABASES = {
        "default": database_config(f"sqlite:///{BENCH_DIR / 'bench.sqlite3'}", var_dir=VAR_DIR)
    }
if not env("CELERY_BROKER_URL", default=""):
    # Hints ("look now") go nowhere: the bench calls dispatch itself.
    CELERY_BROKER_URL = "memory://"
    CELERY_RESULT_BACKEND = "cache+memory://"

# Providers that answer at once (workload 3 swaps in one with latency through the
# environment, so that Celery worker processes use it too).
EMAIL_BACKEND = os.environ.get(
    "BENCH_EMAIL_BACKEND", "django.core.mail.backends.dummy.EmailBackend"
)
SMS_BACKEND = "bench.fakes.InstantSMSChannel"
WHATSAPP_BACKEND = "bench.fakes.InstantWhatsAppChannel"
POST_OFFICE = {"BACKENDS": {"default": "django.core.mail.backends.dummy.EmailBackend"}}

# Pacing is measured by workload 4 alone (with its own senders' rates); elsewhere the
# provider's rate must not be what is measured.
SENDER_DEFAULT_RATES = {"email": 1e6, "sms": 1e6, "whatsapp": 1e6}

LOGGING = {**LOGGING, "root": {**LOGGING["root"], "level": "WARNING"}}
LOGGING["loggers"] = {**LOGGING["loggers"], "post_office": {"level": "ERROR"}}
