"""Settings shared by every environment; environment-specific files import from here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from config.env import database_from_url, envbool, envfloat, envint, envlist, envsecret, envstr
from config.redis_servers import channel_hosts

BASE_DIR = Path(__file__).resolve().parent.parent.parent

# Secrets (and URLs that may carry a password) go through envsecret: NAME or NAME_FILE, a file
# holding the value (docs/operations.md, "Secrets from files").
SECRET_KEY = envsecret("SECRET_KEY")
DEBUG = False
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    # No django.contrib.admin: it would be a second way in, beside the login gate, lockout,
    # roles and audit of the app (docs/security.md).
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "audit",
    "telemetry",
    "alerts",
    "dashboard",
]

MIDDLEWARE = [
    # /healthz, /readyz, /metrics: answered before host validation and the HTTPS redirect (config/ops.py).
    "config.ops.OpsEndpointsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "config.middleware.ContentSecurityPolicyMiddleware",
    "config.middleware.RejectNulMiddleware",
    "config.middleware.ChunkedBodyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "audit.access.middleware.SessionIdleMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

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
                "audit.access.context.staff_context",
            ],
        },
    },
]

DATABASE_URL = envsecret("DATABASE_URL", "postgres://perfuse@127.0.0.1:54329/perfuse")
DATABASES = {
    "default": {
        **database_from_url(DATABASE_URL, connect_timeout=envint("PERFUSE_DB_CONNECT_TIMEOUT", 5)),
        "CONN_MAX_AGE": 60,
        "ATOMIC_REQUESTS": False,
    }
}
# A streaming replica (docs/replica.md): history, FHIR searches and exports read from it through
# config.replica, never through a router; everything else stays on the primary. Under tests it
# mirrors the test database, so a suite run with it set changes nothing.
DATABASE_REPLICA_URL = envsecret("DATABASE_REPLICA_URL")
if DATABASE_REPLICA_URL:
    DATABASES["replica"] = {
        **database_from_url(DATABASE_REPLICA_URL, connect_timeout=envint("PERFUSE_REPLICA_CONNECT_TIMEOUT", 2)),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
        "ATOMIC_REQUESTS": False,
        "TEST": {"MIRROR": "default"},
    }
# A replica that failed is not tried again in a process for this long.
PERFUSE_REPLICA_RETRY_SECONDS = envfloat("PERFUSE_REPLICA_RETRY_SECONDS", 10.0, minimum=0)
# A replica further behind than this many seconds is passed over (set empty: no bound).
PERFUSE_REPLICA_MAX_LAG_SECONDS: float | None = (
    envfloat("PERFUSE_REPLICA_MAX_LAG_SECONDS", 10.0, minimum=0)
    if envstr("PERFUSE_REPLICA_MAX_LAG_SECONDS", "10")
    else None
)
# How long a read-your-writes read (an export) waits for the replica to replay that commit.
PERFUSE_REPLICA_CATCH_UP_SECONDS = envfloat("PERFUSE_REPLICA_CATCH_UP_SECONDS", 1.0, minimum=0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# "auto": use TimescaleDB when the extension is available, plain partitions otherwise.
PERFUSE_TIMESCALE = envstr("PERFUSE_TIMESCALE", "auto")

REDIS_URL = envsecret("REDIS_URL", "redis://127.0.0.1:63799/0")
# Several Redis servers (config/redis_servers.py, docs/operations.md "Redis"): the channel layer
# spreads over all of them; the rate limiter and login lockout live on one (or on a Cluster).
# URLs may carry a password: read like every secret (NAME or NAME_FILE).
REDIS_URLS = [url.strip() for url in envsecret("REDIS_URLS").split(",") if url.strip()] or [REDIS_URL]
PERFUSE_RATELIMIT_REDIS_URL = envsecret("PERFUSE_RATELIMIT_REDIS_URL", REDIS_URLS[0])
PERFUSE_REDIS_CLUSTER = envbool("PERFUSE_REDIS_CLUSTER", False)
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        # Each host entry is one connection with its own lock around every PUBLISH; several
        # entries for the same Redis shard the channels over several connections, so a busy
        # process does not publish one frame at a time (docs/benchmarks.md, Live).
        "CONFIG": {
            "hosts": channel_hosts(REDIS_URLS, envint("PERFUSE_CHANNEL_SHARDS", 4, minimum=1)),
            "prefix": envstr("PERFUSE_CHANNEL_PREFIX", "perfuse"),
        },
    }
}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        # One LOCATION: further ones would be read replicas of the first, not shards.
        "LOCATION": PERFUSE_RATELIMIT_REDIS_URL,
        "KEY_PREFIX": envstr("PERFUSE_CACHE_PREFIX", "perfuse"),
    }
}

# Live dashboard (dashboard/consumers.py, docs/live-protocol.md).
# A patient whose newest reading is older than this shows a stale-data warning.
PERFUSE_STALE_SECONDS = envint("PERFUSE_STALE_SECONDS", 60)
# Frames to one socket are coalesced: at most one WebSocket message per interval.
PERFUSE_LIVE_FLUSH_SECONDS = 0.1
# A socket's pending frames are bounded; beyond this the oldest are dropped and a resync is sent.
PERFUSE_LIVE_MAX_PENDING_POINTS = envint("PERFUSE_LIVE_MAX_PENDING_POINTS", 5000)
PERFUSE_LIVE_MAX_PENDING_FRAMES = envint("PERFUSE_LIVE_MAX_PENDING_FRAMES", 500)
# Sockets re-join their groups (lost on a Redis restart) and re-check access this often.
PERFUSE_LIVE_REJOIN_SECONDS = envint("PERFUSE_LIVE_REJOIN_SECONDS", 30)
# The alarm console's first frame lists at most this many open alarms, the most urgent first, and
# says how many are open: thousands (a fleet whose devices all went quiet) would make a frame
# over the WebSocket's 1 MiB limit and a handshake slower than its timeout, and no console at all.
PERFUSE_CONSOLE_SNAPSHOT_MAX = envint("PERFUSE_CONSOLE_SNAPSHOT_MAX", 500, minimum=1)
# Raw readings sent in a patient socket's snapshot.
PERFUSE_LIVE_SNAPSHOT_SECONDS = envint("PERFUSE_LIVE_SNAPSHOT_SECONDS", 300)
# Metrics a ward card shows beside tissue O2 when the patient has a recent reading of them.
PERFUSE_CARD_METRICS = envlist("PERFUSE_CARD_METRICS", ["spo2"])

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# Sent with every answer (config/middleware.py). Scripts and stylesheets come only from static/:
# the templates carry no inline <script>, event handler, <style> or style attribute, and page data
# travels as json_script (JSON, not executed) or data- attributes. Style *attributes* set by
# script are allowed (style-src-attr) because Plotly draws the chart with them; an attribute holds
# no selector and loads nothing beyond img-src, unlike an injected <style>, which stays refused.
# connect-src 'self' covers the page's own ws:/wss: origin (CSP level 3, as browsers implement it).
PERFUSE_CONTENT_SECURITY_POLICY = envstr(
    "PERFUSE_CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
)

# JSON clients get the contract's error body for a CSRF refusal, browsers Django's page.
CSRF_FAILURE_VIEW = "config.api_errors.csrf_failure"

SESSION_ENGINE = "django.contrib.sessions.backends.db"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_SAVE_EVERY_REQUEST = False
# Inactivity timeout for staff sessions, in seconds (see audit/access/middleware.py).
PERFUSE_SESSION_IDLE_SECONDS = envint("PERFUSE_SESSION_IDLE_SECONDS", 15 * 60)
SESSION_COOKIE_AGE = 12 * 3600

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / ".data" / "staticfiles"
# Let the ASGI app serve static/ itself (demo, tests); production puts the proxy in front.
PERFUSE_SERVE_STATIC = envbool("PERFUSE_SERVE_STATIC", True)

OTP_TOTP_ISSUER = "Perfuse"

# Audit chain checkpoints are signed with this key (HMAC-SHA256). It must differ from SECRET_KEY
# and live outside the database, so whoever can rewrite the audit table cannot re-sign it.
PERFUSE_AUDIT_CHECKPOINT_KEY = envsecret("PERFUSE_AUDIT_CHECKPOINT_KEY")
PERFUSE_AUDIT_CHECKPOINT_EVERY = envint("PERFUSE_AUDIT_CHECKPOINT_EVERY", 100)
# Every checkpoint is also appended here, outside the database (audit/anchor.py): a URL such as
# file:///var/lib/perfuse-anchor/audit-anchor.log on storage the database's users cannot
# rewrite. Empty: not anchored (a deploy check refuses that).
PERFUSE_AUDIT_ANCHOR = envstr("PERFUSE_AUDIT_ANCHOR", "")
# audit_verify fails when events have gone this many seconds without an anchored checkpoint
# (the checkpoint job stopped, or the anchor cannot be written). 0: not checked.
PERFUSE_AUDIT_CHECKPOINT_MAX_AGE = envint("PERFUSE_AUDIT_CHECKPOINT_MAX_AGE", 900)
# Break-glass grants last at most this long; a new need is a new grant with a new purpose.
PERFUSE_BREAK_GLASS_MAX_MINUTES = envint("PERFUSE_BREAK_GLASS_MAX_MINUTES", 240)
# Login brute-force protection (audit/access/lockout.py): after THRESHOLD charged attempts an account
# (or a source address, with its own threshold) is locked for BASE seconds, doubling with every
# further attempt up to MAX; counters are forgotten after WINDOW seconds without attempts.
PERFUSE_LOGIN_ACCOUNT_THRESHOLD = envint("PERFUSE_LOGIN_ACCOUNT_THRESHOLD", 5)
PERFUSE_LOGIN_ADDRESS_THRESHOLD = envint("PERFUSE_LOGIN_ADDRESS_THRESHOLD", 30)
PERFUSE_LOGIN_LOCK_BASE_SECONDS = envint("PERFUSE_LOGIN_LOCK_BASE_SECONDS", 30)
PERFUSE_LOGIN_LOCK_MAX_SECONDS = envint("PERFUSE_LOGIN_LOCK_MAX_SECONDS", 3600)
PERFUSE_LOGIN_WINDOW_SECONDS = envint("PERFUSE_LOGIN_WINDOW_SECONDS", 3600)
# The session-expiry warning appears this long before an idle session ends.
PERFUSE_SESSION_WARNING_SECONDS = envint("PERFUSE_SESSION_WARNING_SECONDS", 120)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # The staff API takes JSON only: form and multipart bodies get 415 (and the OpenAPI schema,
    # which lists the parsers' media types, advertises application/json alone).
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Refusals (config.refusal) are audited and answered there; other errors go on to
    # config.api_errors.exception_handler. Either way the body is {"error": {"code", "detail"}}.
    "EXCEPTION_HANDLER": "audit.access.answers.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Perfuse API",
    "DESCRIPTION": "Device ingest and staff APIs of Perfuse, a real-time tissue-oxygen monitor.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Alarms and their deliveries both have a `state`: each set of values gets its own name.
    "ENUM_NAME_OVERRIDES": {
        "StateEnum": "alerts.vocabulary.State.values",
        "DeliveryStateEnum": "alerts.vocabulary.DeliveryState.values",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "telemetry.openapi.add_ingest_endpoint",
        "config.openapi.add_ops_endpoints",
        "dashboard.fhir.openapi.add_fhir_endpoints",
    ],
}

# Ingest limits (contract section 1).
PERFUSE_INGEST_MAX_BYTES = 1024 * 1024
# Django refuses bodies above this before our view can answer 413 itself; keep it above our limit.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
PERFUSE_INGEST_MAX_READINGS = 5000
PERFUSE_INGEST_CLOCK_SKEW_SECONDS = 300
# Late data is stored back to this many days before now; older items are rejected as `too_old`.
# The engine keeps daily partitions for this horizon only (telemetry/storage.py).
PERFUSE_INGEST_MAX_AGE_DAYS = envint("PERFUSE_INGEST_MAX_AGE_DAYS", 30, minimum=1)
# Token buckets: sustained readings per second and burst, per device and per site.
PERFUSE_RATE_DEVICE_PER_SECOND = envint("PERFUSE_RATE_DEVICE_PER_SECOND", 200)
PERFUSE_RATE_DEVICE_BURST = envint("PERFUSE_RATE_DEVICE_BURST", 20000)
PERFUSE_RATE_SITE_PER_SECOND = envint("PERFUSE_RATE_SITE_PER_SECOND", 200000)
PERFUSE_RATE_SITE_BURST = envint("PERFUSE_RATE_SITE_BURST", 400000)
# Edge gateways (contract 1c): how old an inner batch's device timestamp may be (a gateway
# buffers while offline); the outer request keeps the 300 s window.
PERFUSE_GATEWAY_MAX_BUFFER_SECONDS = envint("PERFUSE_GATEWAY_MAX_BUFFER_SECONDS", 86400, minimum=300)
PERFUSE_INGEST_POOL_SIZE = envint("PERFUSE_INGEST_POOL_SIZE", 8)
# How long a request waits for a pooled connection before answering 503 storage_unavailable.
PERFUSE_INGEST_POOL_TIMEOUT_SECONDS = envint("PERFUSE_INGEST_POOL_TIMEOUT_SECONDS", 5)

# The archive (contract section 6, docs/archive.md): file:///path or s3://bucket/prefix (boto3, with
# the usual AWS_* variables, AWS_ENDPOINT_URL for an S3-compatible store). The scheduled run
# (`manage.py archive --every S`) archives a day once PERFUSE_ARCHIVE_AFTER_DAYS have passed since
# it ended, looking back PERFUSE_ARCHIVE_LOOKBACK_DAYS; PERFUSE_PIPELINE_COMMIT names the code in
# each manifest where the deployment has no git checkout.
PERFUSE_ARCHIVE_URL = envstr("PERFUSE_ARCHIVE_URL", (BASE_DIR / ".data" / "archive").as_uri())
PERFUSE_ARCHIVE_AFTER_DAYS = envint("PERFUSE_ARCHIVE_AFTER_DAYS", 2, minimum=1)
PERFUSE_ARCHIVE_LOOKBACK_DAYS = envint("PERFUSE_ARCHIVE_LOOKBACK_DAYS", 40, minimum=1)
# Ward-days archived at once by the scheduled run, each in a worker process of its own (about one
# per core the database host can spare: the export is PostgreSQL's COPY beside pyarrow's parsing).
PERFUSE_ARCHIVE_JOBS = envint("PERFUSE_ARCHIVE_JOBS", 1, minimum=1)
PERFUSE_PIPELINE_COMMIT = envstr("PERFUSE_PIPELINE_COMMIT", "")

# Group commit (telemetry/ingest/group.py, used by the MQTT bridge): a group closes this long after
# its first message arrived, or at this many readings (also the most one transaction holds).
PERFUSE_INGEST_GROUP_WINDOW_MS = envint("PERFUSE_INGEST_GROUP_WINDOW_MS", 5, minimum=0)
PERFUSE_INGEST_GROUP_MAX_ROWS = envint("PERFUSE_INGEST_GROUP_MAX_ROWS", 5000, minimum=1)
# The HTTP door through the same writer (concurrent requests share a transaction). Off: measured
# in docs/benchmarks.md ("Group commit and the HTTP door").
PERFUSE_INGEST_HTTP_GROUP = envbool("PERFUSE_INGEST_HTTP_GROUP", False)

# The MQTT bridge (`manage.py run_mqtt_ingest`; the broker and its TLS files: MQTT_* below).
# One persistent session per bridge: give each bridge of a shared subscription its own id.
MQTT_CLIENT_ID = envstr("MQTT_CLIENT_ID", "perfuse-bridge-1")
# How long the broker keeps a bridge's session, queueing its messages, while the bridge is away.
MQTT_SESSION_EXPIRY_SECONDS = envint("MQTT_SESSION_EXPIRY_SECONDS", 86400, minimum=0)
# Unacknowledged messages the broker may hand the bridge at once: bounds a group (PUBACK waits
# for the commit), so keep it above what arrives within a commit.
MQTT_RECEIVE_MAXIMUM = envint("MQTT_RECEIVE_MAXIMUM", 5000, minimum=1)
# Gateway messages the bridge stores at once. Its work is CPU in one process: more at once only
# makes each take longer (past its sender's ack timeout under overload, telemetry/mqtt_shed.py);
# two overlap one message's database round trips with another's CPU.
PERFUSE_MQTT_GATEWAY_CONCURRENCY = envint("PERFUSE_MQTT_GATEWAY_CONCURRENCY", 2, minimum=1)

# Retention per data class, in days (docs/retention.md). `manage.py apply_retention` drops a hot
# day of readings (and its signed batches) only once every ward-day of it is archived and verified
# and no legal hold touches it; rollups and HL7 messages are deleted past their retention (held
# patients' and wards' kept). The audit trail's retention is shown, never applied: it is
# append-only and the application cannot delete it. Days are looked at back to
# PERFUSE_RETENTION_LOOKBACK_DAYS before each class's cutoff. Keep readings longer than
# PERFUSE_INGEST_MAX_AGE_DAYS in production: a reading that arrives for a day already dropped
# makes that day differ from its archive (it stays, unverified, until re-archived by hand).
PERFUSE_RETENTION_READINGS_DAYS = envint("PERFUSE_RETENTION_READINGS_DAYS", 90, minimum=0)
PERFUSE_RETENTION_BATCHES_DAYS = envint("PERFUSE_RETENTION_BATCHES_DAYS", 90, minimum=0)
PERFUSE_RETENTION_ROLLUPS_DAYS = envint("PERFUSE_RETENTION_ROLLUPS_DAYS", 730, minimum=1)
PERFUSE_RETENTION_HL7_DAYS = envint("PERFUSE_RETENTION_HL7_DAYS", 365, minimum=2)
PERFUSE_RETENTION_AUDIT_DAYS = envint("PERFUSE_RETENTION_AUDIT_DAYS", 3650, minimum=1)
PERFUSE_RETENTION_LOOKBACK_DAYS = envint("PERFUSE_RETENTION_LOOKBACK_DAYS", 30, minimum=1)

# Research export (docs/retention.md): cohorts smaller than MIN_PATIENTS are refused, values
# outside the cohort's CLIP_PERCENT .. 100 - CLIP_PERCENT percentiles are clipped, each patient's
# times shift by a secret random whole number of days within ±DATE_SHIFT_DAYS, at most MAX_ROWS
# readings, files deleted RETENTION_HOURS after the export.
PERFUSE_RESEARCH_MIN_PATIENTS = envint("PERFUSE_RESEARCH_MIN_PATIENTS", 5, minimum=2)
PERFUSE_RESEARCH_CLIP_PERCENT = envint("PERFUSE_RESEARCH_CLIP_PERCENT", 1, minimum=0)
PERFUSE_RESEARCH_DATE_SHIFT_DAYS = envint("PERFUSE_RESEARCH_DATE_SHIFT_DAYS", 365, minimum=1)
PERFUSE_RESEARCH_MAX_ROWS = envint("PERFUSE_RESEARCH_MAX_ROWS", 2_000_000, minimum=1)
PERFUSE_RESEARCH_RETENTION_HOURS = envint("PERFUSE_RESEARCH_RETENTION_HOURS", 72, minimum=1)

# The proxies whose X-Forwarded-For (rightmost hop), X-Forwarded-Proto and X-Request-ID we believe,
# by the TCP peer's address (addresses or CIDR, comma-separated; config/net.py, docs/proxy.md).
# Empty: no peer is a proxy. PERFUSE_TRUSTED_PROXY=1, the older switch, means one on this host.
PERFUSE_TRUSTED_PROXIES = envlist(
    "PERFUSE_TRUSTED_PROXIES", ["127.0.0.1", "::1"] if envbool("PERFUSE_TRUSTED_PROXY", False) else []
)
if PERFUSE_TRUSTED_PROXIES:
    # HTTPS as the proxy saw it; the header is dropped from any other peer (config.net.ProxyHeadersGate).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Every line carries the request id of the HTTP request or socket it belongs to (config/logs.py).
PERFUSE_LOG_FORMAT = envstr("PERFUSE_LOG_FORMAT", "plain")
if PERFUSE_LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"PERFUSE_LOG_FORMAT must be plain or json, got {PERFUSE_LOG_FORMAT!r}")
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "config.logs.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "config.logs.json_formatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": PERFUSE_LOG_FORMAT, "filters": ["request_id"]}
    },
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}, "daphne": {"level": "WARNING"}},
}

# /metrics answers only these client addresses (CIDR, comma-separated in the environment):
# loopback and the private ranges where a hospital's monitoring usually sits. See docs/operations.md.
PERFUSE_METRICS_ALLOWED_NETS = envlist(
    "PERFUSE_METRICS_ALLOWED_NETS",
    ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"],
)

# Stream processors run by `manage.py run_engine`, in order, on each batch of new readings.
PERFUSE_ENGINE_PROCESSORS = envlist(
    "PERFUSE_ENGINE_PROCESSORS",
    [
        "telemetry.engine.RollupProcessor",
        "alerts.engine.AlarmProcessor",
        "telemetry.hl7.outbox.OruProcessor",
        "alerts.integration.IntegrationAlarmProcessor",
        "dashboard.fhir.exports.ExportProcessor",
    ],
)
PERFUSE_ENGINE_INTERVAL_SECONDS = 0.2
# A busy engine starts a loop no sooner than this after the previous one (telemetry/engine.py
# Engine._coalesce; docs/benchmarks.md "Engine under fleet load"); 0: a loop per wake-up.
PERFUSE_ENGINE_COALESCE_MS = envint("PERFUSE_ENGINE_COALESCE_MS", 20)
# The stream is split into this many partitions (by patient, docs/operations.md "Stream engine"),
# shared by the running `run_engine` processes. Changing it needs the engines stopped and caught up.
PERFUSE_ENGINE_PARTITIONS = envint("PERFUSE_ENGINE_PARTITIONS", 16)

# Secondary alarm notification (docs/alarms.md "Secondary notification", docs/operations.md).
# A channel is on when its address is set. Messages are written to the outbox in the alarm's
# transaction and sent by `manage.py run_notifier`.
PERFUSE_ALARM_NOTIFIERS = envlist(
    "PERFUSE_ALARM_NOTIFIERS",
    ["alerts.notifiers.InAppNotifier", "alerts.notifiers.LoggingNotifier", "alerts.notifiers.OutboxNotifier"],
)
PERFUSE_SMTP_HOST = envstr("PERFUSE_SMTP_HOST", "")
PERFUSE_SMTP_PORT = envint("PERFUSE_SMTP_PORT", 587, minimum=1)
PERFUSE_SMTP_SECURITY = envstr("PERFUSE_SMTP_SECURITY", "starttls")  # starttls, tls or none
PERFUSE_SMTP_USER = envstr("PERFUSE_SMTP_USER", "")
PERFUSE_SMTP_PASSWORD = envsecret("PERFUSE_SMTP_PASSWORD")
PERFUSE_SMTP_FROM = envstr("PERFUSE_SMTP_FROM", "perfuse-alarms@localhost")
PERFUSE_SMTP_TIMEOUT_SECONDS = envint("PERFUSE_SMTP_TIMEOUT_SECONDS", 5, minimum=1)
PERFUSE_WEBHOOK_URL = envsecret("PERFUSE_WEBHOOK_URL")  # gateways often put a token in the URL
PERFUSE_WEBHOOK_SECRET = envsecret("PERFUSE_WEBHOOK_SECRET")
PERFUSE_WEBHOOK_TIMEOUT_SECONDS = envint("PERFUSE_WEBHOOK_TIMEOUT_SECONDS", 5, minimum=1)
# What a message may carry, per channel (a subset of alerts.channels.MESSAGE_FIELDS; identity never).
PERFUSE_NOTIFY_EMAIL_FIELDS = envlist(
    "PERFUSE_NOTIFY_EMAIL_FIELDS", ["pseudonym", "ward", "priority", "condition", "link"]
)
PERFUSE_NOTIFY_WEBHOOK_FIELDS = envlist(
    "PERFUSE_NOTIFY_WEBHOOK_FIELDS", ["pseudonym", "ward", "priority", "condition", "link"]
)
# Raises of these priorities are sent at once; every escalation is sent.
PERFUSE_NOTIFY_RAISE_PRIORITIES = envlist("PERFUSE_NOTIFY_RAISE_PRIORITIES", ["high"])
PERFUSE_NOTIFY_MAX_ATTEMPTS = envint("PERFUSE_NOTIFY_MAX_ATTEMPTS", 6, minimum=1)
PERFUSE_NOTIFY_RETRY_BASE_SECONDS = envint("PERFUSE_NOTIFY_RETRY_BASE_SECONDS", 5, minimum=1)
PERFUSE_NOTIFY_RETRY_MAX_SECONDS = envint("PERFUSE_NOTIFY_RETRY_MAX_SECONDS", 300, minimum=1)
# This many failed attempts in a row on a channel raise `notification_failed` (so does giving up).
PERFUSE_NOTIFY_FAILURES_ALARM = envint("PERFUSE_NOTIFY_FAILURES_ALARM", 3, minimum=1)
# Links in messages point here (the address staff open Perfuse at).
PERFUSE_BASE_URL = envstr("PERFUSE_BASE_URL", "http://127.0.0.1:8000")

# HL7 v2 ADT over MLLP (contract section 4, docs/hl7.md): `manage.py run_hl7` listens here, with
# TLS when a certificate and key are set (and client certificates required when a CA is set).
PERFUSE_HL7_LISTEN = envstr("PERFUSE_HL7_LISTEN", "127.0.0.1:12575")
PERFUSE_HL7_TLS_CERT = envstr("PERFUSE_HL7_TLS_CERT", "")
PERFUSE_HL7_TLS_KEY = envstr("PERFUSE_HL7_TLS_KEY", "")
PERFUSE_HL7_TLS_CLIENT_CA = envstr("PERFUSE_HL7_TLS_CLIENT_CA", "")
# MSH-11 a message must carry to be applied (P production, T training, D debugging).
PERFUSE_HL7_PROCESSING_ID = envstr("PERFUSE_HL7_PROCESSING_ID", "P")
# The largest message accepted; a bigger one is answered AR and its connection closed.
PERFUSE_HL7_MAX_BYTES = envint("PERFUSE_HL7_MAX_BYTES", 1024 * 1024, minimum=1024)
# A connection that completes no message for this long is closed (a stalled half message too).
PERFUSE_HL7_IDLE_SECONDS = envint("PERFUSE_HL7_IDLE_SECONDS", 600, minimum=1)
# MSH-3 and MSH-4 of the acknowledgements Perfuse sends.
PERFUSE_HL7_APPLICATION = envstr("PERFUSE_HL7_APPLICATION", "PERFUSE")
PERFUSE_HL7_FACILITY = envstr("PERFUSE_HL7_FACILITY", "PERFUSE")
# Event times without a UTC offset (EVN-6, EVN-2) are read in this zone.
PERFUSE_HL7_TIME_ZONE = envstr("PERFUSE_HL7_TIME_ZONE", "UTC")

# Results out (contract section 4, docs/hl7-results.md): ORU^R01 per patient and interval to host:port
# over MLLP, from the outbox the engine fills (telemetry/hl7/outbox.py), sent by `manage.py
# run_hl7`. Nothing is written or sent while the target is unset.
PERFUSE_HL7_ORU_TARGET = envstr("PERFUSE_HL7_ORU_TARGET", "")
PERFUSE_HL7_ORU_INTERVAL = envint("PERFUSE_HL7_ORU_INTERVAL", 60, minimum=1)
# An interval is sent this long after it ended, so readings still in flight make it in; readings
# later than that are sent as a correction of the interval (OBX-11 C).
PERFUSE_HL7_ORU_GRACE_SECONDS = envint("PERFUSE_HL7_ORU_GRACE_SECONDS", 10, minimum=0)
PERFUSE_HL7_ORU_METRICS = envlist("PERFUSE_HL7_ORU_METRICS", ["tissue_o2", "tissue_po2", "spo2", "skin_temp"])
# Readings with a signal quality below this are artefacts (the alarm rules' default level): left out.
PERFUSE_HL7_ORU_MIN_QUALITY = envfloat("PERFUSE_HL7_ORU_MIN_QUALITY", 0.5, minimum=0.0)
PERFUSE_HL7_ORU_ACK_TIMEOUT_SECONDS = envfloat("PERFUSE_HL7_ORU_ACK_TIMEOUT_SECONDS", 10.0, minimum=0.1)
PERFUSE_HL7_ORU_RETRY_BASE_SECONDS = envfloat("PERFUSE_HL7_ORU_RETRY_BASE_SECONDS", 5.0, minimum=0.01)
PERFUSE_HL7_ORU_RETRY_MAX_SECONDS = envfloat("PERFUSE_HL7_ORU_RETRY_MAX_SECONDS", 300.0, minimum=0.01)
# TLS to the EHR: the CA that signed its certificate (host name checked), and Perfuse's own
# client certificate and key if the EHR asks for one.
PERFUSE_HL7_ORU_TLS_CA = envstr("PERFUSE_HL7_ORU_TLS_CA", "")
PERFUSE_HL7_ORU_TLS_CERT = envstr("PERFUSE_HL7_ORU_TLS_CERT", "")
PERFUSE_HL7_ORU_TLS_KEY = envstr("PERFUSE_HL7_ORU_TLS_KEY", "")
# MSH-5 and MSH-6 of the results (MSH-3/MSH-4 are PERFUSE_HL7_APPLICATION and _FACILITY).
PERFUSE_HL7_ORU_RECEIVING_APPLICATION = envstr("PERFUSE_HL7_ORU_RECEIVING_APPLICATION", "")
PERFUSE_HL7_ORU_RECEIVING_FACILITY = envstr("PERFUSE_HL7_ORU_RECEIVING_FACILITY", "")
PERFUSE_HL7_ORU_PROCESSING_ID = envstr("PERFUSE_HL7_ORU_PROCESSING_ID", "P")
# PID-3.4 of the MRN: the hospital's assigning authority, as its EHR expects it.
PERFUSE_HL7_MRN_AUTHORITY = envstr("PERFUSE_HL7_MRN_AUTHORITY", "")

# FHIR R4 (docs/fhir.md). Bulk exports are written by the engine (ExportProcessor), at most this
# many resources per engine loop, and deleted this long after they finished.
PERFUSE_FHIR_EXPORT_CHUNK_ROWS = envint("PERFUSE_FHIR_EXPORT_CHUNK_ROWS", 2000, minimum=1)
PERFUSE_FHIR_EXPORT_RETENTION_SECONDS = envint("PERFUSE_FHIR_EXPORT_RETENTION_SECONDS", 3600, minimum=1)
# Exports a user may have queued or running at once (more: 429).
PERFUSE_FHIR_EXPORT_MAX_ACTIVE = envint("PERFUSE_FHIR_EXPORT_MAX_ACTIVE", 2, minimum=1)
# Identifier system of the hospital's MRN in a revealed Patient resource.
PERFUSE_FHIR_MRN_SYSTEM = envstr("PERFUSE_FHIR_MRN_SYSTEM", "urn:perfuse:mrn")

# MQTT (contract section 1b, docs/mqtt.md). The deployment CA lives in PERFUSE_PKI_DIR (empty:
# no CA, provisioning issues no certificates). MQTT_URL names the broker; the MQTT_*_FILE paths
# are the TLS files of the ingest bridge's identity (perfuse-bridge).
PERFUSE_PKI_DIR = envstr("PERFUSE_PKI_DIR", "")
PERFUSE_CERT_DAYS = envint("PERFUSE_CERT_DAYS", 825, minimum=1)
MQTT_URL = envstr("MQTT_URL", "")
MQTT_CA_FILE = envstr("MQTT_CA_FILE", "")
MQTT_CERT_FILE = envstr("MQTT_CERT_FILE", "")
MQTT_KEY_FILE = envstr("MQTT_KEY_FILE", "")
# Telling the broker about a revocation: the CRL is reloaded by SIGHUP to the pid in
# PERFUSE_MQTT_PIDFILE, or by running PERFUSE_MQTT_RELOAD_COMMAND (another broker); an open
# connection is dropped through Mosquitto's dynamic-security plugin, as the perfuse-admin identity.
PERFUSE_MQTT_PIDFILE = envstr("PERFUSE_MQTT_PIDFILE", "")
PERFUSE_MQTT_RELOAD_COMMAND = envstr("PERFUSE_MQTT_RELOAD_COMMAND", "")
PERFUSE_MQTT_ADMIN_CERT_FILE = envstr("PERFUSE_MQTT_ADMIN_CERT_FILE", "")
PERFUSE_MQTT_ADMIN_KEY_FILE = envstr("PERFUSE_MQTT_ADMIN_KEY_FILE", "")
