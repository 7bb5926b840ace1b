"""Settings for Omoi Console.

Two modes, chosen by the environment (docs/configuration.md lists every variable):

* embedded (no environment at all): SQLite in the data directory, in-memory
  channel layer, eager Celery, local-memory cache, mail kept as files and an
  in-process ticker that drives the periodic checks;
* production (``OMOI_MODE=production``, implied by ``DATABASE_URL``): Postgres,
  Redis for channels, cache and the Celery broker, SMTP, and a real SECRET_KEY.
"""

import contextlib
import ipaddress
import os
import secrets
import tomllib
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from limits import parse_many

from omoi_console.foundation.environment import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("OMOI_DATA_DIR") or BASE_DIR / "var")
DATA_DIR.mkdir(parents=True, exist_ok=True)

DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")
MODE = env_choice(
    "OMOI_MODE", ("embedded", "production"), "production" if DATABASE_URL else "embedded"
)
PRODUCTION = MODE == "production"

# --- secrets ------------------------------------------------------------------


def _embedded_secret_key() -> str:
    # Embedded mode keeps a generated key in the data directory so that login
    # sessions survive a restart without anyone having to set one.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        # Several server processes may start at once: each writes a candidate
        # and links it into place, and the first link wins. Writing the file in
        # place would let a sibling read it while it is still empty.
        candidate = DATA_DIR / f"secret_key.{os.getpid()}"
        candidate.touch(mode=0o600)
        candidate.write_text(secrets.token_urlsafe(50))
        with contextlib.suppress(FileExistsError):
            os.link(candidate, path)
        candidate.unlink()
    return path.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY")
if PRODUCTION:
    if len(SECRET_KEY) < 32 or SECRET_KEY.startswith("django-insecure"):
        raise ImproperlyConfigured(
            "Production mode needs SECRET_KEY: at least 32 random characters, not Django's "
            "'django-insecure' placeholder "
            '(python -c "import secrets; print(secrets.token_urlsafe(50))").'
        )
    if not REDIS_URL:
        # Without it the web, worker and beat processes would each fall back to
        # private in-memory queues and never hear from one another.
        raise ImproperlyConfigured("Production mode needs REDIS_URL (channels, cache, broker).")
elif not SECRET_KEY:
    SECRET_KEY = _embedded_secret_key()

DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
if PRODUCTION:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- applications -------------------------------------------------------------

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "channels",
    "django_celery_beat",
    "omoi_console",
    "observability",
    "monitoring",
    "alerting",
    "watchdog",
]

MIDDLEWARE = [
    # First, so that it sits directly inside the tracing middleware, which
    # instrumentation inserts in front of everything.
    "omoi_console.foundation.middleware.EndAbortedRequest",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "omoi_console.foundation.middleware.RefuseNulInURL",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "observability.profiling.ProfileRequestMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "omoi_console.urls"
ASGI_APPLICATION = "omoi_console.asgi.application"
WSGI_APPLICATION = "omoi_console.wsgi.application"

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

# --- database -----------------------------------------------------------------

if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
            conn_health_checks=True,
        )
    }
    # Under ASGI every concurrent request runs in a thread of its own with a
    # connection of its own: a burst of heartbeats would open as many Postgres
    # connections as there are requests in flight, until Postgres refuses. A
    # pool per process caps that; requests beyond it wait for a free connection.
    DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 20)
    if DATABASE_POOL_MAX_SIZE and DATABASES["default"]["ENGINE"].endswith("postgresql"):
        if DATABASES["default"]["CONN_MAX_AGE"]:
            raise ImproperlyConfigured(
                "DATABASE_CONN_MAX_AGE keeps connections per thread, which the pool replaces: "
                "set DATABASE_POOL_MAX_SIZE=0 to use it instead."
            )
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": env_float("DATABASE_POOL_TIMEOUT", 10.0),
        }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            # OMOI_SQLITE_PATH points a server process at another file, such as
            # the test database when the tests run the Procfile's web line.
            "NAME": env_str("OMOI_SQLITE_PATH") or DATA_DIR / "omoi.sqlite3",
            # Measured: without IMMEDIATE transactions, concurrent heartbeats and
            # the ticker get "database is locked" (a read-then-write transaction
            # is not covered by the busy timeout).
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL;",
            },
            # An in-memory test database fails under the in-process server
            # ("database table is locked"); a file does not.
            "TEST": {"NAME": DATA_DIR / "test.sqlite3"},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- cache, channels, celery --------------------------------------------------

# Names this deployment's keys and pub/sub channels in a shared Redis.
CHANNELS_PREFIX = env_str("CHANNELS_PREFIX", "omoi")
if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": CHANNELS_PREFIX},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL or "memory://localhost/"
CELERY_TASK_ALWAYS_EAGER = env_bool(
    "CELERY_TASK_ALWAYS_EAGER", CELERY_BROKER_URL.startswith("memory://")
)
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# django-celery-beat's scheduler, recording beat's own liveness as it ticks.
CELERY_BEAT_SCHEDULER = "omoi_console.top.beat:LivenessScheduler"
# Workers and beat keep LOGGING's handlers (omoi_console.celery says how).
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = "UTC"

# --- email --------------------------------------------------------------------

EMAIL_HOST = env_str("EMAIL_HOST")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("EMAIL_PORT", 25)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
    EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
    EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
    EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
else:
    # Without a mail server, mail is kept as files in the data directory rather
    # than printed between the log lines of the demo's terminal.
    EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.filebased.EmailBackend")
    EMAIL_FILE_PATH = Path(env_str("EMAIL_FILE_PATH") or DATA_DIR / "mail")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "omoi-console@localhost")
# The file backend is a stand-in for trying things out; in production, mail
# that only reaches a directory is mail nobody reads.
MAIL_DELIVERED = bool(EMAIL_HOST or env_str("EMAIL_BACKEND"))

# --- auth ---------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "console"
LOGOUT_REDIRECT_URL = "login"

# --- API ----------------------------------------------------------------------


def _rates(name: str, default: str) -> str:
    """A limit in the ``limits`` notation ("10/second;300/minute"), checked at start-up."""
    value = env_str(name, default)
    try:
        parse_many(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be rates such as '10/second;300/minute', got {value!r}"
        ) from None
    return value


# Agents heartbeat every 1-5 s and retry with backoff; a metrics batch may share
# the token. Ten a second absorbs a retry burst, 300 a minute five a second.
RATE_LIMIT_PER_TOKEN = _rates("OMOI_RATE_LIMIT_PER_TOKEN", "10/second;300/minute")
# 401s from one source address before its unproven requests are refused.
RATE_LIMIT_AUTH_FAILURES = _rates("OMOI_RATE_LIMIT_AUTH_FAILURES", "30/minute")
# Repeated failures and refusals are logged once per this many seconds, with a count.
RATE_LIMIT_LOG_SECONDS = env_float("OMOI_RATE_LIMIT_LOG_SECONDS", 10.0)
# Failed logins before the login form answers 429, per username and per source.
LOGIN_FAILURES_PER_USER = _rates("OMOI_LOGIN_FAILURES_PER_USER", "5/15minutes")
LOGIN_FAILURES_PER_SOURCE = _rates("OMOI_LOGIN_FAILURES_PER_SOURCE", "20/15minutes")
# Proxies (addresses or CIDR networks) whose X-Forwarded-For names the client.
# Empty: the connection's own address is the source, and the header is ignored.
TRUSTED_PROXIES = env_list("OMOI_TRUSTED_PROXIES")

# Request bodies above this are refused with 413 before they are parsed.
MAX_REQUEST_BYTES = env_int("OMOI_MAX_REQUEST_BYTES", 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES
# Paths that take batches have their own, larger bound (set with the metrics below).
REQUEST_BODY_LIMITS: dict[str, int] = {}

_API = "omoi_console.foundation.api"
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token classes first: their WWW-Authenticate header makes a request
        # without credentials a 401 rather than a 403.
        "omoi_console.foundation.auth.OperatorTokenAuthentication",
        "monitoring.api.authentication.AgentTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        # Last: credentials that none of the above recognised are a 401 that says so.
        "omoi_console.foundation.auth.RefuseUnrecognisedCredentials",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["omoi_console.foundation.api.permissions.IsOperatorUser"],
    "DEFAULT_PARSER_CLASSES": ["omoi_console.foundation.api.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": f"{_API}.negotiation.JSONOnlyNegotiation",
    "URL_FORMAT_OVERRIDE": None,
    "DEFAULT_PAGINATION_CLASS": f"{_API}.pagination.BoundedLimitOffsetPagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "EXCEPTION_HANDLER": "omoi_console.foundation.api.problems.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Omoi Console API",
    "DESCRIPTION": "Heartbeats, alerts and remediation for fleets of AI coding agents.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from our own static files: the API docs work without internet
    # access, and their version is pinned in uv.lock.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "omoi_console.foundation.api.schema.add_problem_responses",
    ],
    # The last authenticator only words a refusal; it is no scheme of its own.
    "AUTHENTICATION_WHITELIST": [
        "omoi_console.foundation.auth.OperatorTokenAuthentication",
        "monitoring.api.authentication.AgentTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # One name for a choice set that several serializers share.
    "ENUM_NAME_OVERRIDES": {
        "AgentRoleEnum": "monitoring.models.AgentRole",
        "AgentStateEnum": "monitoring.models.AgentState",
        "ReportedStateEnum": "monitoring.models.REPORTABLE_STATES",
        "DetectionSourceEnum": "monitoring.api.detection.SOURCES",
        "ReadSourceEnum": ["raw", "rollup"],
    },
}

# --- static, i18n -------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve straight from the finders so neither mode needs collectstatic first.
WHITENOISE_USE_FINDERS = True
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- observability ------------------------------------------------------------

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
# JSON lines for a log aggregator in production, readable lines at a terminal otherwise.
LOG_FORMAT = env_choice("LOG_FORMAT", ("json", "console"), "json" if PRODUCTION else "console")
# One structured line per HTTP request (omoi.access); routine ingest successes are left out.
ACCESS_LOG = env_bool("OMOI_ACCESS_LOG", True)
# Beat sends several ticks a second, and Celery logs each one when it is sent,
# received and done: below DEBUG that would drown everything else.
TICK_LOG_LEVEL = "DEBUG" if LOG_LEVEL == "DEBUG" else "WARNING"
# The console keeps its own recent spans and log lines (at this level and above)
# in its database, for the agent and action pages (docs/observability/console-store.md).
TRACE_STORE = env_bool("OMOI_TRACE_STORE", True)
LOG_STORE_LEVEL = env_choice(
    "OMOI_LOG_STORE_LEVEL", ("debug", "info", "warning", "error", "critical"), "info"
).upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "structured": {
            "()": "observability.logging.structured_formatter",
            "renderer": LOG_FORMAT,
        },
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "structured"},
        "store": {"class": "observability.store.StoreLogHandler", "level": LOG_STORE_LEVEL},
    },
    "filters": {
        "drop_counted_responses": {
            "()": "observability.logging.DropCountedResponses",
        },
    },
    "root": {"handlers": ["stderr", "store"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # 401 and 429 answers are logged once per window, with a count.
        "django.request": {"filters": ["drop_counted_responses"]},
        # httpx logs every request's full URL at INFO; receivers' URLs carry tokens
        # (Slack's path is its secret). Delivery logs its own lines without them.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # The server's own lines go through the structured handler once Django is
        # set up in a worker; its plain-text access log is off on the Procfile's web
        # line, replaced by omoi.access (omoi_console.foundation.request_context).
        "uvicorn": {"level": "INFO", "propagate": True},
        "uvicorn.error": {"level": "INFO", "propagate": True},
        "uvicorn.access": {"level": "WARNING", "propagate": True},
        "celery": {"level": LOG_LEVEL},
        "celery.beat": {"level": TICK_LOG_LEVEL},
        "celery.worker.strategy": {"level": TICK_LOG_LEVEL},
        "celery.app.trace": {"level": TICK_LOG_LEVEL},
    },
}
# Tracing reads the standard OpenTelemetry variables. OTEL_TRACES_SAMPLER_RATIO,
# this console's older name for the sampler's ratio, still counts when
# OTEL_TRACES_SAMPLER_ARG is unset.
VERSION = tomllib.loads((BASE_DIR / "pyproject.toml").read_text())["project"]["version"]
DEPLOYMENT_ENVIRONMENT = env_str("OMOI_DEPLOYMENT_ENVIRONMENT", MODE)
OTEL_SERVICE_NAME = env_str("OTEL_SERVICE_NAME", "omoi-console")
OTEL_TRACES_SAMPLER = env_choice(
    "OTEL_TRACES_SAMPLER",
    (
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ),
    "parentbased_traceidratio",
)
OTEL_TRACES_SAMPLER_ARG = env_float(
    "OTEL_TRACES_SAMPLER_ARG", env_float("OTEL_TRACES_SAMPLER_RATIO", 1.0)
)
if not 0.0 <= OTEL_TRACES_SAMPLER_ARG <= 1.0:
    raise ImproperlyConfigured(
        f"OTEL_TRACES_SAMPLER_ARG is a ratio from 0 to 1, got {OTEL_TRACES_SAMPLER_ARG}"
    )
OTEL_EXPORTER_OTLP_ENDPOINT = env_str("OTEL_EXPORTER_OTLP_ENDPOINT") or env_str(
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
)
PROMETHEUS_EXPORT_MIGRATIONS = False
# pyinstrument's sampling interval for on-demand profiles (seconds).
PROFILE_INTERVAL_SECONDS = env_float("OMOI_PROFILE_INTERVAL", 0.001)
if not 0.0001 <= PROFILE_INTERVAL_SECONDS <= 1.0:
    raise ImproperlyConfigured(
        f"OMOI_PROFILE_INTERVAL is 0.0001 to 1 seconds, got {PROFILE_INTERVAL_SECONDS}"
    )
# Who may read /metrics: client networks (addresses or CIDR; "*" for anyone),
# and a bearer token that lets a scraper in from anywhere. Loopback by default,
# where a Prometheus on the same host scrapes from.
METRICS_TOKEN = env_str("OMOI_METRICS_TOKEN")
try:
    METRICS_ALLOW = tuple(
        "*" if entry == "*" else ipaddress.ip_network(entry, strict=False)
        for entry in env_list("OMOI_METRICS_ALLOW", ["127.0.0.0/8", "::1"])
    )
except ValueError as exc:
    raise ImproperlyConfigured(f"OMOI_METRICS_ALLOW: {exc}") from None
if "*" in METRICS_ALLOW:
    METRICS_ALLOW = ("*",)

# --- the product --------------------------------------------------------------


def _seconds(name: str, default: float, low: float, high: float) -> float:
    value = env_float(name, default)
    if not low <= value <= high:
        raise ImproperlyConfigured(f"{name} must be between {low:g} and {high:g} seconds")
    return value


# Agents heartbeat every interval; a heartbeat is missed at
# last + n * interval + skew. DEGRADED after 1 miss, FAILED after 3.
HEARTBEAT_INTERVAL_SECONDS = _seconds("OMOI_HEARTBEAT_INTERVAL", 5.0, 0.5, 3600)
HEARTBEAT_SKEW_SECONDS = env_float("OMOI_HEARTBEAT_SKEW", 2.0)
HEARTBEAT_DEGRADED_AFTER_MISSES = 1
HEARTBEAT_FAILED_AFTER_MISSES = 3
# The agent roles (monitoring.models.AgentRole, which settings may not import; a
# test keeps the two in step). Each role's interval defaults to the one above;
# an agent's own interval, when it has one, wins over its role's.
AGENT_ROLES = ("worker", "monitor", "scheduler")
HEARTBEAT_INTERVAL_BY_ROLE = {
    role: _seconds(f"OMOI_HEARTBEAT_INTERVAL_{role.upper()}", HEARTBEAT_INTERVAL_SECONDS, 0.5, 3600)
    for role in AGENT_ROLES
}
# An agent running a task whose progress has not moved for this long is STUCK,
# unless its heartbeats name a threshold of their own for the task.
STUCK_AFTER_SECONDS = _seconds("OMOI_STUCK_AFTER", 600.0, 10, 86400)
STUCK_AFTER_BY_ROLE = {
    role: _seconds(f"OMOI_STUCK_AFTER_{role.upper()}", STUCK_AFTER_SECONDS, 10, 86400)
    for role in AGENT_ROLES
}

# Composite agent health (monitoring.health): the weight of each component, the
# score at or above which an evaluation counts, how many such evaluations in a row
# make an agent anomalous, the clock skew that counts as fully unhealthy, and how
# old a detector's last minute may be before its signal is ignored.
HEALTH_COMPONENTS = ("latency", "errors", "heartbeat", "blocked")
HEALTH_WEIGHTS = {
    name: env_float(f"OMOI_HEALTH_WEIGHT_{name.upper()}", default)
    for name, default in zip(HEALTH_COMPONENTS, (0.35, 0.30, 0.20, 0.15), strict=True)
}
if not all(0 <= weight < float("inf") for weight in HEALTH_WEIGHTS.values()) or not any(
    HEALTH_WEIGHTS.values()
):
    raise ImproperlyConfigured(
        "OMOI_HEALTH_WEIGHT_LATENCY, _ERRORS, _HEARTBEAT and _BLOCKED must be finite numbers "
        f"of 0 or more, not all 0; got {HEALTH_WEIGHTS}"
    )
HEALTH_THRESHOLD = env_float("OMOI_HEALTH_THRESHOLD", 0.8)
if not 0 < HEALTH_THRESHOLD <= 1:
    raise ImproperlyConfigured(
        f"OMOI_HEALTH_THRESHOLD must be more than 0 and at most 1, got {HEALTH_THRESHOLD}"
    )
HEALTH_CONSECUTIVE = env_int("OMOI_HEALTH_CONSECUTIVE", 3)
if not 1 <= HEALTH_CONSECUTIVE <= 1000:
    raise ImproperlyConfigured(
        f"OMOI_HEALTH_CONSECUTIVE must be from 1 to 1000 evaluations, got {HEALTH_CONSECUTIVE}"
    )
HEALTH_MAX_CLOCK_SKEW_SECONDS = _seconds("OMOI_HEALTH_MAX_CLOCK_SKEW", 30.0, 0.001, 86400)
HEALTH_SIGNAL_MAX_AGE_SECONDS = _seconds("OMOI_HEALTH_SIGNAL_MAX_AGE", 600.0, 60, 86400)

# The worker, beat and the embedded ticker record a beat every second; one whose
# last beat is older than this is down for /healthz and the console (0: not checked).
LIVENESS_STALE_SECONDS = env_float("OMOI_LIVENESS_STALE_SECONDS", 7.0)
if not 0 <= LIVENESS_STALE_SECONDS <= 3600:
    raise ImproperlyConfigured("OMOI_LIVENESS_STALE_SECONDS must be from 0 (off) to 3600 seconds")

# Undispatched events are re-dispatched by the sweeper after this long.
EVENT_REDISPATCH_AFTER_SECONDS = env_float("OMOI_EVENT_REDISPATCH_AFTER", 10.0)
EVENT_MAX_ATTEMPTS = env_int("OMOI_EVENT_MAX_ATTEMPTS", 10)

ALERT_EMAIL_RECIPIENTS = env_list("OMOI_ALERT_EMAIL_TO", [] if PRODUCTION else ["oncall@localhost"])
if PRODUCTION and ALERT_EMAIL_RECIPIENTS and not MAIL_DELIVERED:
    raise ImproperlyConfigured(
        "OMOI_ALERT_EMAIL_TO is set but no mail server is: set EMAIL_HOST (SMTP) "
        "or EMAIL_BACKEND, or leave OMOI_ALERT_EMAIL_TO empty to turn alert mail off."
    )
NOTIFICATION_MAX_ATTEMPTS = env_int("OMOI_NOTIFICATION_MAX_ATTEMPTS", 5)
# A firing alert nobody acknowledged escalates one level after this many seconds,
# per severity (0: never), and again after as long, up to ALERT_MAX_ESCALATION.
ALERT_ESCALATE_AFTER = {
    "critical": env_int("OMOI_ALERT_ESCALATE_AFTER_CRITICAL", 300),
    "error": env_int("OMOI_ALERT_ESCALATE_AFTER_ERROR", 900),
    "warning": env_int("OMOI_ALERT_ESCALATE_AFTER_WARNING", 0),
    "info": env_int("OMOI_ALERT_ESCALATE_AFTER_INFO", 0),
}
for _severity, _delay in ALERT_ESCALATE_AFTER.items():
    if _delay < 0:
        raise ImproperlyConfigured(
            f"OMOI_ALERT_ESCALATE_AFTER_{_severity.upper()} must be 0 (never) or more seconds"
        )
ALERT_MAX_ESCALATION = env_int("OMOI_ALERT_MAX_ESCALATION", 3)
# Receiver names, one per escalation level, for alerts that no route takes (a route
# names its own levels).
ALERT_ESCALATE_TO = env_list("OMOI_ALERT_ESCALATE_TO")
# A label set that resolved this many times within the window flaps: its next alerts
# notify only once it has calmed down (0 turns flap damping off).
ALERT_FLAP_COUNT = env_int("OMOI_ALERT_FLAP_COUNT", 3)
ALERT_FLAP_WINDOW_SECONDS = env_int("OMOI_ALERT_FLAP_WINDOW", 1800)
# Grouping at the top of the route tree (and for alerts no route takes), as
# Alertmanager's root route: group by these labels, wait, interval, repeat.
ALERT_GROUP_BY = env_list("OMOI_ALERT_GROUP_BY", ["alertname"])
ALERT_GROUP_WAIT_SECONDS = _seconds("OMOI_ALERT_GROUP_WAIT", 30.0, 0, 86400)
ALERT_GROUP_INTERVAL_SECONDS = _seconds("OMOI_ALERT_GROUP_INTERVAL", 300.0, 0, 86400)
ALERT_REPEAT_INTERVAL_SECONDS = _seconds("OMOI_ALERT_REPEAT_INTERVAL", 14400.0, 1, 30 * 86400)
if ALERT_REPEAT_INTERVAL_SECONDS < ALERT_GROUP_INTERVAL_SECONDS:
    raise ImproperlyConfigured(
        "OMOI_ALERT_REPEAT_INTERVAL cannot be shorter than OMOI_ALERT_GROUP_INTERVAL"
    )
# Retries: exponential from the base, capped, with jitter; a receiver's Retry-After
# is honoured up to its own cap.
NOTIFICATION_BACKOFF_SECONDS = _seconds("OMOI_NOTIFICATION_BACKOFF", 2.0, 0.1, 3600)
NOTIFICATION_BACKOFF_MAX_SECONDS = _seconds("OMOI_NOTIFICATION_BACKOFF_MAX", 600.0, 1, 86400)
NOTIFICATION_RETRY_AFTER_MAX_SECONDS = _seconds("OMOI_NOTIFICATION_RETRY_AFTER_MAX", 3600, 1, 86400)
# Default timeout of one HTTP delivery; a receiver may set its own (up to 30 s).
NOTIFICATION_TIMEOUT_SECONDS = _seconds("OMOI_NOTIFICATION_TIMEOUT", 10.0, 0.1, 30)
# Circuit breaker: after this many consecutive failures a receiver rests this long.
RECEIVER_BREAKER_FAILURES = env_int("OMOI_RECEIVER_BREAKER_FAILURES", 5)
RECEIVER_BREAKER_OPEN_SECONDS = _seconds("OMOI_RECEIVER_BREAKER_OPEN", 300.0, 1, 86400)
# HTTP receivers on private, loopback or link-local addresses are refused unless allowed.
WEBHOOK_ALLOW_PRIVATE = env_bool("OMOI_WEBHOOK_ALLOW_PRIVATE", False)
# Where people reach this console: links in notifications (generatorURL, externalURL).
EXTERNAL_URL = env_str("OMOI_EXTERNAL_URL", "http://localhost:8000").rstrip("/")

# Metrics: how long raw samples and per-minute rollups are kept (whole days of
# partitions on PostgreSQL), the most series a metric may have, and the bounds of
# one ingest batch.
METRIC_SAMPLE_RETENTION_DAYS = env_int("OMOI_METRIC_SAMPLE_RETENTION_DAYS", 8)
METRIC_ROLLUP_RETENTION_DAYS = env_int("OMOI_METRIC_ROLLUP_RETENTION_DAYS", 90)
METRIC_MAX_SERIES_PER_METRIC = env_int("OMOI_METRIC_MAX_SERIES_PER_METRIC", 20000)
METRIC_MAX_BATCH_BYTES = env_int("OMOI_METRIC_MAX_BATCH_BYTES", 10 * 1024 * 1024)
METRIC_MAX_SAMPLES_PER_BATCH = env_int("OMOI_METRIC_MAX_SAMPLES_PER_BATCH", 100_000)
# A sample may be at most this far ahead of the console's clock.
METRIC_FUTURE_TOLERANCE_SECONDS = env_float("OMOI_METRIC_FUTURE_TOLERANCE", 300.0)
# A gzip batch may expand to at most this many bytes.
METRIC_MAX_DECOMPRESSED_BYTES = env_int("OMOI_METRIC_MAX_DECOMPRESSED_BYTES", 64 * 1024 * 1024)
REQUEST_BODY_LIMITS["/api/v1/metrics/ingest"] = METRIC_MAX_BATCH_BYTES
REQUEST_BODY_LIMITS["/v1/metrics"] = METRIC_MAX_BATCH_BYTES
# Daily partitions are created this many days ahead.
METRIC_PARTITIONS_AHEAD_DAYS = env_int("OMOI_METRIC_PARTITIONS_AHEAD_DAYS", 2)
# Idempotency keys of ingested batches are remembered this long.
METRIC_BATCH_KEY_RETENTION_HOURS = env_int("OMOI_METRIC_BATCH_KEY_RETENTION_HOURS", 24)
# Anomaly detection on a new installation starts this far back in the rollups, so
# the detectors warm up on history instead of on the next half hour.
DETECTION_BACKFILL_SECONDS = env_int("OMOI_DETECTION_BACKFILL_SECONDS", 6 * 3600)
# An open anomaly of a series that has sent nothing for this long is ended.
DETECTION_STALE_SECONDS = env_int("OMOI_DETECTION_STALE_SECONDS", 3600)

# The lean heartbeat path writes buffered heartbeats every this many seconds.
INGEST_FLUSH_SECONDS = env_float("OMOI_INGEST_FLUSH_SECONDS", 0.1)
# Without Redis, a revocation made by another process (the command line) is noticed
# by polling for the newest revocation this often.
INGEST_REVOCATION_POLL_SECONDS = env_float("OMOI_INGEST_REVOCATION_POLL_SECONDS", 1.0)

# The dead man's switch: a ping to this URL every interval while the console is
# healthy, for something outside to notice when it is gone (off without a URL).
DEADMAN_URL = env_str("OMOI_DEADMAN_URL")
if DEADMAN_URL and not DEADMAN_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured("OMOI_DEADMAN_URL must be an http:// or https:// URL")
DEADMAN_INTERVAL_SECONDS = _seconds("OMOI_DEADMAN_INTERVAL_SECONDS", 60.0, 10, 86400)
DEADMAN_METHOD = env_choice("OMOI_DEADMAN_METHOD", ("post", "get"), "post")

WATCHDOG_MODE = env_choice("OMOI_WATCHDOG_MODE", ("on", "off", "dry-run"), "on")
# The receiver (an alerting Receiver's name) a "guardian" escalation level tells.
WATCHDOG_GUARDIAN_RECEIVER = env_str("OMOI_WATCHDOG_GUARDIAN_RECEIVER")
# Which ``environments:`` section of a policy file applies (manage.py policies import).
ENVIRONMENT = env_str("OMOI_ENVIRONMENT")
# How the watchdog reaches agents: ``local`` (commands ride on heartbeat responses)
# or ``http`` (an external registry API at OMOI_REGISTRY_URL; docs/watchdog.md).
WATCHDOG_ADAPTER = env_choice("OMOI_WATCHDOG_ADAPTER", ("local", "http"), "local")
REGISTRY_URL = env_str("OMOI_REGISTRY_URL").rstrip("/")
REGISTRY_TOKEN = env_str("OMOI_REGISTRY_TOKEN")
# Each call's timeout, and how many times a 5xx or a connection error is retried
# (backing off from OMOI_REGISTRY_BACKOFF seconds, doubling); a 4xx is never retried.
REGISTRY_TIMEOUT_SECONDS = _seconds("OMOI_REGISTRY_TIMEOUT", 2.0, 0.1, 30)
REGISTRY_RETRIES = env_int("OMOI_REGISTRY_RETRIES", 2)
REGISTRY_BACKOFF_SECONDS = _seconds("OMOI_REGISTRY_BACKOFF", 0.2, 0, 10)
if not 0 <= REGISTRY_RETRIES <= 5:
    raise ImproperlyConfigured("OMOI_REGISTRY_RETRIES must be from 0 to 5")
if WATCHDOG_ADAPTER == "http" and not REGISTRY_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured("OMOI_WATCHDOG_ADAPTER=http needs OMOI_REGISTRY_URL (http or https)")

# Safety guards (docs/watchdog.md, "Safety guards"). A limit of 0 turns its guard off.
# At most this many acts a minute across the fleet, and per policy.
WATCHDOG_BUDGET_PER_MINUTE = env_int("OMOI_WATCHDOG_BUDGET_PER_MINUTE", 60)
WATCHDOG_POLICY_PER_MINUTE = env_int("OMOI_WATCHDOG_POLICY_PER_MINUTE", 30)
# Storm: at least this share of a role's agents, and at least this many, fell
# unhealthy within the window: restarts of that role pause until fewer than the
# resume share are unhealthy.
WATCHDOG_STORM_SHARE = env_float("OMOI_WATCHDOG_STORM_SHARE", 0.5)
WATCHDOG_STORM_MIN_AGENTS = env_int("OMOI_WATCHDOG_STORM_MIN_AGENTS", 3)
WATCHDOG_STORM_WINDOW_SECONDS = _seconds("OMOI_WATCHDOG_STORM_WINDOW", 60.0, 1, 86400)
WATCHDOG_STORM_RESUME_SHARE = env_float("OMOI_WATCHDOG_STORM_RESUME_SHARE", 0.2)
# Fewer healthy agents of a role than this must never be left by a step that takes one out.
WATCHDOG_MIN_HEALTHY_BY_ROLE = {
    role: env_int(f"OMOI_WATCHDOG_MIN_HEALTHY_{role.upper()}", 0) for role in AGENT_ROLES
}
# A policy whose actions fail this many times in a row pauses for this long.
WATCHDOG_BREAKER_FAILURES = env_int("OMOI_WATCHDOG_BREAKER_FAILURES", 5)
WATCHDOG_BREAKER_OPEN_SECONDS = _seconds("OMOI_WATCHDOG_BREAKER_OPEN", 600.0, 1, 86400)
# Failover hands a task over only once its agent has been down this long: a short
# network split heals before it, and the task stays where it is.
WATCHDOG_FAILOVER_GRACE_SECONDS = _seconds("OMOI_WATCHDOG_FAILOVER_GRACE_SECONDS", 60.0, 0, 86400)
# No selection of agents may take more than this share of the fleet at once.
WATCHDOG_MAX_SELECTION_SHARE = env_float("OMOI_WATCHDOG_MAX_SELECTION_SHARE", 0.25)
if not 0 < WATCHDOG_STORM_RESUME_SHARE < WATCHDOG_STORM_SHARE <= 1:
    raise ImproperlyConfigured(
        "OMOI_WATCHDOG_STORM_SHARE must be more than 0 and at most 1, and "
        "OMOI_WATCHDOG_STORM_RESUME_SHARE more than 0 and less than it, got "
        f"{WATCHDOG_STORM_SHARE} and {WATCHDOG_STORM_RESUME_SHARE}"
    )
if not 0 < WATCHDOG_MAX_SELECTION_SHARE <= 1:
    raise ImproperlyConfigured(
        "OMOI_WATCHDOG_MAX_SELECTION_SHARE must be more than 0 and at most 1, "
        f"got {WATCHDOG_MAX_SELECTION_SHARE}"
    )
_watchdog_counts = {
    "OMOI_WATCHDOG_BUDGET_PER_MINUTE": WATCHDOG_BUDGET_PER_MINUTE,
    "OMOI_WATCHDOG_POLICY_PER_MINUTE": WATCHDOG_POLICY_PER_MINUTE,
    "OMOI_WATCHDOG_STORM_MIN_AGENTS": WATCHDOG_STORM_MIN_AGENTS,
    "OMOI_WATCHDOG_BREAKER_FAILURES": WATCHDOG_BREAKER_FAILURES,
    **{
        f"OMOI_WATCHDOG_MIN_HEALTHY_{role.upper()}": floor
        for role, floor in WATCHDOG_MIN_HEALTHY_BY_ROLE.items()
    },
}
for _name, _count in _watchdog_counts.items():
    if _count < 0:
        raise ImproperlyConfigured(f"{_name} must be 0 or more, got {_count}")


# --- retention ----------------------------------------------------------------


def _retention_days(name: str, default: int) -> int:
    days = env_int(name, default)
    if days < 0:
        raise ImproperlyConfigured(f"{name} must be 0 (keep forever) or more days, got {days}")
    return days


# Days each kind of record is kept once it is finished; 0 keeps it forever.
RETAIN_PROCESSED_EVENTS_DAYS = _retention_days("OMOI_RETAIN_PROCESSED_EVENTS_DAYS", 7)
RETAIN_DEAD_EVENTS_DAYS = _retention_days("OMOI_RETAIN_DEAD_EVENTS_DAYS", 30)
RETAIN_TRANSITIONS_DAYS = _retention_days("OMOI_RETAIN_TRANSITIONS_DAYS", 30)
RETAIN_ANOMALIES_DAYS = _retention_days("OMOI_RETAIN_ANOMALIES_DAYS", 90)
RETAIN_NOTIFICATIONS_DAYS = _retention_days("OMOI_RETAIN_NOTIFICATIONS_DAYS", 30)
RETAIN_REMEDIATIONS_DAYS = _retention_days("OMOI_RETAIN_REMEDIATIONS_DAYS", 90)
RETAIN_PROFILES_DAYS = _retention_days("OMOI_RETAIN_PROFILES_DAYS", 14)
# The console's own spans and log lines: days kept, and at most this many rows of
# each (0: no cap); between flushes, at most this many of each wait in memory
# (the oldest make way), written every this many seconds by a background thread.
TRACE_STORE_DAYS = _retention_days("OMOI_TRACE_STORE_DAYS", 3)
LOG_STORE_DAYS = _retention_days("OMOI_LOG_STORE_DAYS", 3)
TRACE_STORE_MAX_SPANS = env_int("OMOI_TRACE_STORE_MAX_SPANS", 200_000)
LOG_STORE_MAX_LINES = env_int("OMOI_LOG_STORE_MAX_LINES", 200_000)
TRACE_STORE_BUFFER = env_int("OMOI_TRACE_STORE_BUFFER", 10_000)
TRACE_STORE_FLUSH_SECONDS = _seconds("OMOI_TRACE_STORE_FLUSH_SECONDS", 1.0, 0.05, 60)
if TRACE_STORE_MAX_SPANS < 0 or LOG_STORE_MAX_LINES < 0 or TRACE_STORE_BUFFER < 1:
    raise ImproperlyConfigured(
        "OMOI_TRACE_STORE_MAX_SPANS and OMOI_LOG_STORE_MAX_LINES must be 0 (no cap) or more, "
        "OMOI_TRACE_STORE_BUFFER at least 1"
    )
# One prune run: rows per DELETE, batches per kind, and seconds before it stops
# starting new batches (the embedded ticker runs it beside the heartbeat check).
RETENTION_BATCH_SIZE = env_int("OMOI_RETENTION_BATCH_SIZE", 1000)
RETENTION_MAX_BATCHES = env_int("OMOI_RETENTION_MAX_BATCHES", 20)
RETENTION_RUN_SECONDS = env_float("OMOI_RETENTION_RUN_SECONDS", 1.0)
if RETENTION_BATCH_SIZE < 1 or RETENTION_MAX_BATCHES < 1 or RETENTION_RUN_SECONDS <= 0:
    raise ImproperlyConfigured(
        "OMOI_RETENTION_BATCH_SIZE and OMOI_RETENTION_MAX_BATCHES must be at least 1, "
        "OMOI_RETENTION_RUN_SECONDS more than 0"
    )
