"""Herald settings. Every value comes from the environment (or an optional .env file) with a
safe development default; DEBUG=False turns on the production hardening that
`manage.py check --deploy` asks for."""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from config.env import BASE_DIR, anymail_config, broker_config, database_config, email_config

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

VAR_DIR = Path(env("HERALD_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "django-insecure-herald-development-only-key-not-for-production-use"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Absolute base URL used in links that leave the site (unsubscribe, callbacks, deep links).
# Its default follows HERALD_PORT, the port `make run` serves on.
SITE_URL = env("SITE_URL", default=f"http://127.0.0.1:{env('HERALD_PORT', default='8000')}").rstrip(
    "/"
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_filters",
    "django_celery_beat",
    "anymail",
    "cadence",
    "notifications",
    "kiosks",
    "production_runs",
    "config",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "config.middleware.AdminInputGuard",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": database_config(env("DATABASE_URL", default=""), var_dir=VAR_DIR)}
# Django's cache: it keeps dispatch's pending "look again" hint. Each process has its own by
# default; with a shared one (e.g. redis://localhost:6379/1) all workers share one hint.
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True
# One way of writing times across the admin (config/formats/en/formats.py).
FORMAT_MODULE_PATH = ["config.formats"]

STATIC_URL = "static/"
STATIC_ROOT = env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))
MEDIA_URL = "media/"
MEDIA_ROOT = env("MEDIA_ROOT", default=str(VAR_DIR / "media"))

# --- Celery -------------------------------------------------------------------------------
CELERY_BROKER_URL, CELERY_BROKER_TRANSPORT_OPTIONS, _default_results = broker_config(
    env("CELERY_BROKER_URL", default=""), var_dir=VAR_DIR
)
if CELERY_BROKER_URL.startswith("filesystem:"):
    # kombu's filesystem transport, each message written whole before a worker reads it.
    CELERY_BROKER_TRANSPORT = "config.broker:Transport"
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=_default_results)
CELERY_TIMEZONE = TIME_ZONE
CELERY_ENABLE_UTC = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=15 * 60)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=14 * 60)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django support closes the database connection before and after every task
# unless this is set; then it closes it every this many tasks, and between those
# config/celery.py applies CONN_MAX_AGE and CONN_HEALTH_CHECKS as Django does per request.
# A dispatch task on PostgreSQL no longer opens a connection first (10-60 ms with 20
# worker processes starting on 2 cores). Run beat as its own process (as the Procfile
# does), not embedded in a worker (-B), whose parent then keeps its connection too.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
# Run tasks in-process (tests and one-off scripts only; make run uses a real worker).
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)

# --- Channels -----------------------------------------------------------------------------
# Email goes through Django's mail API. Development records every message in the database
# (Admin → Recorded messages); production names an anymail ESP backend, for example
# anymail.backends.amazon_ses.EmailBackend, and fills ANYMAIL from the environment, or gives
# an SMTP server as EMAIL_URL (smtp+tls://user:password@smtp.example.com:587), which also
# selects Django's SMTP backend unless EMAIL_BACKEND names another.
PROVIDER_TIMEOUT_SECONDS = env.float("PROVIDER_TIMEOUT_SECONDS", default=10.0)
_email = email_config(env("EMAIL_URL", default=""))
EMAIL_BACKEND = env(
    "EMAIL_BACKEND",
    default=_email.get("EMAIL_BACKEND", "notifications.channels.recording.EmailBackend"),
)
EMAIL_HOST = _email.get("EMAIL_HOST", "localhost")
EMAIL_PORT = _email.get("EMAIL_PORT", 25)
EMAIL_HOST_USER = _email.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = _email.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = _email.get("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = _email.get("EMAIL_USE_SSL", False)
EMAIL_SSL_CERTFILE = _email.get("EMAIL_SSL_CERTFILE")
EMAIL_SSL_KEYFILE = _email.get("EMAIL_SSL_KEYFILE")
EMAIL_FILE_PATH = _email.get("EMAIL_FILE_PATH", "")
# Django's SMTP backend waits forever by default: a mail server that stops answering would
# hold a worker (and its claimed deliveries) until they are marked "unknown".
EMAIL_TIMEOUT = _email.get("EMAIL_TIMEOUT", PROVIDER_TIMEOUT_SECONDS)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Herald <herald@localhost>")
SERVER_EMAIL = env("SERVER_EMAIL", default=DEFAULT_FROM_EMAIL)
# Every ANYMAIL_<KEY> variable is ANYMAIL["<KEY>"] (config/env.py): the chosen ESP's
# credentials (ANYMAIL_POSTMARK_SERVER_TOKEN, ANYMAIL_MAILGUN_API_KEY and
# ANYMAIL_MAILGUN_SENDER_DOMAIN, ANYMAIL_SENDGRID_API_KEY, ...), its webhook signing key
# (ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY, ...) and ANYMAIL_WEBHOOK_SECRET, the "user:password"
# every ESP must present on tracking webhooks (basic auth). AWS_REGION is the SES region.
ANYMAIL = anymail_config(os.environ)
# anymail's HTTP ESPs wait 30 s by default: the same timeout as every other provider call,
# unless ANYMAIL_REQUESTS_TIMEOUT says otherwise (SES goes through boto3's own).
ANYMAIL.setdefault("REQUESTS_TIMEOUT", PROVIDER_TIMEOUT_SECONDS)
SMS_BACKEND = env("SMS_BACKEND", default="notifications.channels.recording.SMSChannel")
WHATSAPP_BACKEND = env(
    "WHATSAPP_BACKEND", default="notifications.channels.recording.WhatsAppChannel"
)
TWILIO_ACCOUNT_SID = env("TWILIO_ACCOUNT_SID", default="")
TWILIO_AUTH_TOKEN = env("TWILIO_AUTH_TOKEN", default="")
TWILIO_FROM_NUMBER = env("TWILIO_FROM_NUMBER", default="")
TWILIO_MESSAGING_SERVICE_SID = env("TWILIO_MESSAGING_SERVICE_SID", default="")
WHATSAPP_GRAPH_URL = env("WHATSAPP_GRAPH_URL", default="https://graph.facebook.com/v21.0")
WHATSAPP_PHONE_NUMBER_ID = env("WHATSAPP_PHONE_NUMBER_ID", default="")
WHATSAPP_ACCESS_TOKEN = env("WHATSAPP_ACCESS_TOKEN", default="")
WHATSAPP_APP_SECRET = env("WHATSAPP_APP_SECRET", default="")
WHATSAPP_VERIFY_TOKEN = env("WHATSAPP_VERIFY_TOKEN", default="")
WHATSAPP_TEMPLATE_LANG = env("WHATSAPP_TEMPLATE_LANG", default="")
WHATSAPP_PLATFORM_LANGUAGES = env("WHATSAPP_PLATFORM_LANGUAGES", default="")

# --- Dispatch -----------------------------------------------------------------------------
# A delivery left "sending" longer than this (a worker died mid-call) is marked "unknown"
# for a human to reconcile; it is never resent blindly. A live worker renews its claim's
# unsent rows every quarter of this (a slow provider).
DISPATCH_SENDING_TIMEOUT_SECONDS = env.int("DISPATCH_SENDING_TIMEOUT_SECONDS", default=600)
DISPATCH_BATCH_SIZE = env.int("DISPATCH_BATCH_SIZE", default=200)
# A claim whose deliveries were all handed over in under half a second (a fast provider)
# makes the next claim of the round twice as big, up to this many: fewer claims and writes
# per message. A slow provider keeps claims at DISPATCH_BATCH_SIZE, so one worker does not
# hold minutes of work that others could share.
DISPATCH_MAX_BATCH_SIZE = env.int("DISPATCH_MAX_BATCH_SIZE", default=1000)
# Tracking webhooks store each report and answer at once; "celery" applies the reports in a
# worker (production), "inline" in the request (simpler to follow in development tests).
TRACKING_APPLY = env("TRACKING_APPLY", default="celery")
if TRACKING_APPLY not in ("celery", "inline"):
    raise ImproperlyConfigured("TRACKING_APPLY must be celery or inline")
# Accepted deliveries are written in bulk: at the end of each claim, or sooner once this many
# are waiting or before a handover that would come a second or more after the oldest waiting
# one (a crash before the write leaves them "unknown" for reconciliation, never resent).
DISPATCH_WRITE_BATCH = env.int("DISPATCH_WRITE_BATCH", default=1000)
# Retries wait base * 2^(n-1) seconds (at most the cap), stretched by up to this fraction so
# failures of one burst do not all retry at the same instant.
DISPATCH_RETRY_JITTER = env.float("DISPATCH_RETRY_JITTER", default=0.1)

# Pacing: messages per second per sender unless set on the sender in the admin
# (Twilio US long code: 1/s; WhatsApp Cloud API: 80/s per phone number).
SENDER_DEFAULT_RATES = {
    "email": env.float("EMAIL_RATE_PER_SECOND", default=14.0),
    "sms": env.float("SMS_RATE_PER_SECOND", default=1.0),
    "whatsapp": env.float("WHATSAPP_RATE_PER_SECOND", default=80.0),
}
# A paced delivery whose slot is further away than this is put back until its slot.
PACING_HORIZON_SECONDS = env.float("PACING_HORIZON_SECONDS", default=1.0)
# How long a provider keeps a queued message before dropping it (Twilio SMS: 10 hours).
SENDER_MAX_QUEUE_HOURS = {"sms": 10.0}
# Provider circuit breaker: this many consecutive transient failures open it; after the
# cool-off a single trial call closes it again or re-opens it.
BREAKER_THRESHOLD = env.int("BREAKER_THRESHOLD", default=5)
BREAKER_COOLOFF_SECONDS = env.int("BREAKER_COOLOFF_SECONDS", default=60)

# Batch notification: the highest max_recipients anyone may set (the default cap is 50).
BATCH_MAX_RECIPIENTS_CEILING = env.int("BATCH_MAX_RECIPIENTS_CEILING", default=10000)

# --- Production-run reminders ---------------------------------------------------------
# The partner portal the signed 24-hour WhatsApp links open (/partners/wa-auth?token=...).
PARTNER_PORTAL_URL = env("PARTNER_PORTAL_URL", default=f"{SITE_URL}/partners").rstrip("/")
# Graph API token per WhatsApp platform (WABA), by label: "IN=<token>;AU=<token>". A platform
# without one uses WHATSAPP_ACCESS_TOKEN.
WHATSAPP_PLATFORM_TOKENS = env("WHATSAPP_PLATFORM_TOKENS", default="")
# Meta needs a sample image (a handle from its Resumable Upload API) to review a template
# with an image header: the design-image template is only submitted once this is set.
WHATSAPP_HEADER_IMAGE_HANDLE = env("WHATSAPP_HEADER_IMAGE_HANDLE", default="")

# --- Triggers and cadence (seed 003) -------------------------------------------------------
# Layer 1 cooldown of a trigger context when neither the workflow nor its audience's
# personas name one.
TRIGGER_DEFAULT_COOLDOWN_HOURS = env.float("TRIGGER_DEFAULT_COOLDOWN_HOURS", default=1.0)
# A kiosk without a heartbeat for this long is offline; below this battery it is low.
KIOSK_OFFLINE_AFTER_MINUTES = env.int("KIOSK_OFFLINE_AFTER_MINUTES", default=5)
KIOSK_LOW_BATTERY_PERCENT = env.int("KIOSK_LOW_BATTERY_PERCENT", default=20)
# The modes a working kiosk reports; any other reported mode is the MODE issue (a kiosk that
# reports none is not judged). Empty: MODE is never raised.
KIOSK_EXPECTED_MODES = [
    m.strip().lower() for m in env.list("KIOSK_EXPECTED_MODES", default=["kiosk"]) if m.strip()
]
# morale_drop_baseline: the average of the last MORALE_RECENT_HOURS against the
# MORALE_BASELINE_DAYS before them; it fires below MORALE_DROP_SHARE of the baseline when
# both windows hold at least MORALE_MIN_RESPONSES answers.
MORALE_RECENT_HOURS = env.int("MORALE_RECENT_HOURS", default=24)
MORALE_BASELINE_DAYS = env.int("MORALE_BASELINE_DAYS", default=14)
MORALE_DROP_SHARE = env.float("MORALE_DROP_SHARE", default=0.8)
MORALE_MIN_RESPONSES = env.int("MORALE_MIN_RESPONSES", default=3)
for _name, _ok in (
    ("TRIGGER_DEFAULT_COOLDOWN_HOURS", TRIGGER_DEFAULT_COOLDOWN_HOURS >= 0),
    ("KIOSK_OFFLINE_AFTER_MINUTES", KIOSK_OFFLINE_AFTER_MINUTES > 0),
    ("KIOSK_LOW_BATTERY_PERCENT", 0 <= KIOSK_LOW_BATTERY_PERCENT <= 100),
    ("MORALE_RECENT_HOURS", MORALE_RECENT_HOURS > 0),
    ("MORALE_BASELINE_DAYS", MORALE_BASELINE_DAYS > 0),
    ("MORALE_DROP_SHARE", 0 < MORALE_DROP_SHARE <= 1),
    ("MORALE_MIN_RESPONSES", MORALE_MIN_RESPONSES > 0),
):
    if not _ok:
        raise ImproperlyConfigured(f"{_name} is out of range: {globals()[_name]!r}")
# --- end of triggers and cadence ----------------------------------------------------------

# --- Logging ------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"mask_personal_data": {"()": "config.logmask.MaskPersonalData"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["mask_personal_data"],
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # twilio logs every request (numbers included) at INFO.
        "twilio.http_client": {"level": "WARNING"},
    },
}

# --- Production hardening (DEBUG=False) ---------------------------------------------------
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"

os.environ.setdefault("HERALD_VAR_DIR", str(VAR_DIR))
