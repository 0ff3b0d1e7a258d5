"""Settings of the FMA service, all from environment variables with defaults for one laptop.

With nothing set, the service keeps everything under ``FMA_DATA_DIR`` (default ``./.fma-data``):
the SQLite database and the weight directory. ``FMA_DATABASE_URL=postgresql://...`` switches to
PostgreSQL. DEBUG is off unless ``FMA_DEBUG=1``; ``FMA_SECRET_KEY`` is required unless
``FMA_DEVELOPMENT=1`` (or DEBUG), where a key is generated and kept in the data dir.

On AWS Lambda (``terraform_deploy/``) the database credentials and the key come from Secrets
Manager instead: ``FMA_DATABASE_SECRET_ARN`` (with ``FMA_DATABASE_HOST``, ``_PORT``, ``_NAME`` and
``_CA_FILE``) and ``FMA_SECRET_KEY_SECRET_ARN`` (see aws_secrets).
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from fma_service import aws_secrets


def _flag(name: str, default: bool = False) -> bool:
    return os.environ.get(name, "1" if default else "0").strip().lower() in {"1", "true", "yes", "on"}


def _list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DATA_DIR = Path(os.environ.get("FMA_DATA_DIR", ".fma-data")).resolve()
DEBUG = _flag("FMA_DEBUG")
DEVELOPMENT = DEBUG or _flag("FMA_DEVELOPMENT")


def _secret_key() -> str:
    key = os.environ.get("FMA_SECRET_KEY", "")
    if key:
        return key
    arn = os.environ.get("FMA_SECRET_KEY_SECRET_ARN", "")
    if arn:
        return aws_secrets.secret_string(arn)
    if not DEVELOPMENT:
        raise ImproperlyConfigured(
            "FMA_SECRET_KEY is not set. Set it to a long random string, or set FMA_DEVELOPMENT=1 on a development machine."
        )
    path = DATA_DIR / "secret_key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


def _database(url: str) -> dict:
    if not url:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "fma.sqlite3",
            # IMMEDIATE: a transaction takes the write lock when it starts, so concurrent
            # writers wait for each other (up to the timeout) instead of failing mid-way.
            # WAL with synchronous=FULL: a commit is one fsync of the log, not the rollback
            # journal's four, and is as durable (a committed transaction survives a power cut);
            # readers no longer wait for a writer.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
            },
        }
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(f"FMA_DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "CONN_MAX_AGE": int(os.environ.get("FMA_DB_CONN_MAX_AGE", "60")),
        # A kept connection is pinged before a request reuses it: one the database (or a proxy,
        # or a failover) closed meanwhile is replaced, instead of failing that request.
        "CONN_HEALTH_CHECKS": True,
    }
    pool = int(os.environ.get("FMA_DB_POOL_SIZE", "0") or 0)
    if pool:  # psycopg's pool (Django's "pool" option): at most this many connections per process
        database.update(CONN_MAX_AGE=0, OPTIONS={"pool": {"min_size": 1, "max_size": pool, "timeout": 30}})
    return database


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = _list("FMA_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if not DEBUG else "*")
CSRF_TRUSTED_ORIGINS = _list("FMA_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "fma_service.accounts",  # first: its createsuperuser (password rules also with --noinput) wins
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "axes",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "fma_django",
    "fma_aggregator",
    "fma_service.dashboard",
    "fma_service.observability",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "fma_service.body_limits.BodyLimitMiddleware",  # before anything reads a body
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks: turns a lockout into its answer
]

# --- Metrics (fma_service.observability; the operators' page: README "Servers") ---
# FMA_METRICS: "prometheus" (servers: request metrics by django-prometheus's middleware, FMA's own
# figures, /metrics with FMA_METRICS_TOKEN or an exporter on FMA_METRICS_ADDRESS), "emf" (AWS
# Lambda's default: FMA's figures as CloudWatch embedded-metric-format log lines, namespace
# FMA_METRICS_NAMESPACE) or "off". FMA_METRICS_EXPERIMENTS: experiment ids that get their own
# label (a few; every other experiment is counted unlabelled, so series stay bounded).
FMA_METRICS = os.environ.get(
    "FMA_METRICS", "emf" if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") else "prometheus"
)
if FMA_METRICS not in {"prometheus", "emf", "off"}:
    raise ImproperlyConfigured(f"FMA_METRICS must be prometheus, emf or off, not {FMA_METRICS!r}")
FMA_METRICS_TOKEN = os.environ.get("FMA_METRICS_TOKEN", "")
FMA_METRICS_ADDRESS = os.environ.get("FMA_METRICS_ADDRESS", "")
FMA_METRICS_EXPERIMENTS = frozenset(_list("FMA_METRICS_EXPERIMENTS", ""))
FMA_METRICS_NAMESPACE = os.environ.get("FMA_METRICS_NAMESPACE", "FMA")
# OpenTelemetry traces (fma_service.observability.tracing), with the `tracing` extra installed:
# on when an OTLP endpoint is set; the exporter reads the OTEL_* variables.
FMA_TRACING = bool(
    os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
)
if FMA_TRACING:
    MIDDLEWARE.insert(0, "fma_service.observability.tracing.TracingMiddleware")
if FMA_METRICS == "prometheus":
    # first and just before axes (whose lockout answers pass back through it): every answer is counted
    MIDDLEWARE.insert(0, "django_prometheus.middleware.PrometheusBeforeMiddleware")
    MIDDLEWARE.insert(len(MIDDLEWARE) - 1, "fma_service.observability.middleware.RequestMetricsMiddleware")

# --- HTTPS, cookies and Content-Security-Policy (`manage.py check --deploy` is clean by default) ---
# Outside development the service is meant to sit behind a proxy that terminates TLS (a load
# balancer, nginx, API Gateway on Lambda) and says so in X-Forwarded-Proto: Django trusts that
# header (FMA_PROXY_SSL_HEADER; empty trusts none, for a server whose clients reach it directly:
# a client could otherwise claim https). Plain http is then redirected to https, except the
# probes /healthz and /readyz (a load balancer calls the instance itself), and HSTS and secure-only
# cookies hold. FMA_DEVELOPMENT=1 keeps plain http on loopback working: no redirect, no HSTS,
# cookies without Secure.
_proxy_header = os.environ.get("FMA_PROXY_SSL_HEADER", "X-Forwarded-Proto").strip()
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https") if _proxy_header else None
)
SECURE_SSL_REDIRECT = not DEVELOPMENT
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = 0 if DEVELOPMENT else int(os.environ.get("FMA_HSTS_SECONDS", str(365 * 24 * 3600)))
SECURE_HSTS_INCLUDE_SUBDOMAINS = _flag("FMA_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = _flag("FMA_HSTS_PRELOAD", True)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = not DEVELOPMENT
# The same policy everywhere, development included, so a page that breaks under it breaks in the
# tests: no inline script or style and no eval on any page (the dashboard's scripts and styles are
# static files; the Swagger UI is served split, its start-up script from a URL of its own); data:
# images for the Swagger UI's icons.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
}

ROOT_URLCONF = "fma_service.urls"
WSGI_APPLICATION = "fma_service.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

if os.environ.get("FMA_DATABASE_SECRET_ARN"):
    DATABASES = {
        "default": aws_secrets.database_settings(
            os.environ["FMA_DATABASE_SECRET_ARN"], int(os.environ.get("FMA_DB_CONN_MAX_AGE", "60"))
        )
    }
else:
    DATABASES = {"default": _database(os.environ.get("FMA_DATABASE_URL", ""))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
# the admin's times in ISO order with their zone (fma_service/formats/en/formats.py)
FORMAT_MODULE_PATH = "fma_service.formats"
USE_I18N = True
USE_TZ = True

# Passwords: Django's rules, for every form and command that sets one (the admin, changepassword,
# createsuperuser, also with --noinput: see fma_service.accounts).
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": int(os.environ.get("FMA_PASSWORD_MIN_LENGTH", "10"))},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Logins (the token endpoint, the dashboard, the admin) lock out after FMA_LOGIN_FAILURE_LIMIT wrong
# passwords for one username from one address: even the right password is refused until
# FMA_LOGIN_LOCKOUT_MINUTES after the last failure, or until an administrator unlocks it (admin →
# Access attempts, or `manage.py axes_reset_username NAME`). Attempts are rows in the database.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("FMA_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("FMA_LOGIN_LOCKOUT_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "fma_django.api.throttling.client_address"
AXES_HTTP_RESPONSE_CODE = 403
AXES_LOCKOUT_TEMPLATE = "dashboard/locked_out.html"
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False


def _caches(url: str) -> dict:
    """``FMA_CACHE_URL``: a ``redis://`` (or ``rediss://``) URL on servers; unset, a table of the
    database (``fma_cache``, made by fma_django's migrations), which every process of one
    deployment shares, so throttles count across fma-server's worker processes and Lambda instances."""
    if not url:
        return {
            "default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "fma_cache"}
        }
    if urlsplit(url).scheme not in {"redis", "rediss", "unix"}:
        raise ImproperlyConfigured(f"FMA_CACHE_URL must be a redis:// URL, not {url.split(':')[0]}://")
    return {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}}


CACHES = _caches(os.environ.get("FMA_CACHE_URL", ""))
# Deployments (or test runs) that share one Redis keep apart by a prefix.
CACHES["default"]["KEY_PREFIX"] = os.environ.get("FMA_CACHE_KEY_PREFIX", "")

# The dashboard's pages use Django's session login.
LOGIN_URL = "dashboard:login"
LOGIN_REDIRECT_URL = "dashboard:experiments"
LOGOUT_REDIRECT_URL = "dashboard:login"

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("FMA_STATIC_ROOT", DATA_DIR / "static"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# WhiteNoise serves the admin's and Swagger UI's files (bundled by drf-spectacular-sidecar) from
# the installed apps, so no internet and no separate web server are needed.
WHITENOISE_USE_FINDERS = True

# Weights: bytes live in the weight store, never in Django's request buffers.
FMA_WEIGHTS_DIR = Path(os.environ.get("FMA_WEIGHTS_DIR", DATA_DIR / "weights"))


def _weight_store() -> tuple[str, dict]:
    """``FMA_WEIGHT_STORE``: empty for the directory ``FMA_WEIGHTS_DIR``, ``s3`` for fma-s3's store
    configured by the ``FMA_S3_*`` variables, anything else a ``WeightStore`` class's dotted path."""
    name = os.environ.get("FMA_WEIGHT_STORE", "").strip()
    if name != "s3":
        return name, {}
    from fma_s3 import options_from_env  # only S3 deployments need boto3 at start-up

    try:
        return "fma_s3.S3WeightStore", options_from_env(os.environ)
    except ValueError as error:
        raise ImproperlyConfigured(f"FMA_WEIGHT_STORE=s3: {error}") from None


FMA_WEIGHT_STORE, FMA_WEIGHT_STORE_OPTIONS = _weight_store()
FMA_MAX_UPDATE_BYTES = int(os.environ.get("FMA_MAX_UPDATE_BYTES", str(2 * 1024**3)))
# The v1 JSON path parses the whole body in memory (that is what JSON costs); cap it.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("FMA_MAX_JSON_BYTES", str(1024**3)))
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024**2
# Request bodies, checked against Content-Length before a byte is read (fma_service.body_limits):
# the routes that take weights accept up to the limits above, every other route
# FMA_MAX_REQUEST_BYTES, which fma-server also reads whole before a thread runs the request.
FMA_MAX_REQUEST_BYTES = int(os.environ.get("FMA_MAX_REQUEST_BYTES", str(1024**2)))
FMA_BODY_LIMITS = {
    "fma-api:model-upload-update": FMA_MAX_UPDATE_BYTES,
    "fma-api:upload-part": FMA_MAX_UPDATE_BYTES,
    "fma-api:model-list": DATA_UPLOAD_MAX_MEMORY_SIZE,  # v1: an experiment's initial model as JSON
    "fma-api:model-detail": DATA_UPLOAD_MAX_MEMORY_SIZE,
    "fma-api:model_update-list": DATA_UPLOAD_MAX_MEMORY_SIZE,  # v1: an update as JSON
}
# fma-server's patience with a client (fma_service.asgi): the longest wait for the next bytes of a
# request body, or for the client to take the next bytes of a response.
FMA_READ_TIMEOUT = float(os.environ.get("FMA_READ_TIMEOUT", "60"))
# Upload sessions (fma_django.ingestion): the size of each part (S3 needs at least 5 MiB for every
# part but the last), and how long a session may stay open before the sweep aborts it.
FMA_UPLOAD_PART_BYTES = int(os.environ.get("FMA_UPLOAD_PART_BYTES", str(64 * 1024**2)))
FMA_UPLOAD_TIMEOUT_SECONDS = int(os.environ.get("FMA_UPLOAD_TIMEOUT_SECONDS", "86400"))
# Experiments that sample clients per round (fma_django.sampling): the longest a client not selected
# is told to wait (Retry-After) before asking again; a round's deadline, when sooner, is said instead.
FMA_SAMPLING_RETRY_SECONDS = int(os.environ.get("FMA_SAMPLING_RETRY_SECONDS", "60"))
# Uploads larger than this are checked (joined, hashed, validated) by the aggregator runner after
# their complete request answers 202, not inside it: behind API Gateway a request has 29 s.
# Unset: every upload is checked within its complete request.
FMA_UPLOAD_INLINE_CHECK_BYTES = (
    int(os.environ["FMA_UPLOAD_INLINE_CHECK_BYTES"])
    if os.environ.get("FMA_UPLOAD_INLINE_CHECK_BYTES")
    else None
)
# Days after its round completed that an update's raw bytes are deleted; unset keeps them forever.
FMA_UPDATE_RETENTION_DAYS = (
    float(os.environ["FMA_UPDATE_RETENTION_DAYS"]) if os.environ.get("FMA_UPDATE_RETENTION_DAYS") else None
)
# How often, at most, a process's sweep lists the weight store for bytes no record references
# (fma_django.housekeeping); 0: every sweep.
FMA_ORPHAN_SWEEP_SECONDS = int(os.environ.get("FMA_ORPHAN_SWEEP_SECONDS", "3600"))

# Who runs a round once an accepted update may have made it ready: "inprocess" (a background
# thread of this process), "celery", "lambda" or "none"; see fma_aggregator.config.
FMA_AGGREGATOR_RUNNER = os.environ.get("FMA_AGGREGATOR_RUNNER", "inprocess")

# Developers' API tokens (fma_django.models.DeveloperToken): each expires this long after it is made;
# the developer then logs in again (`fma login`) for a new one.
FMA_TOKEN_TTL = timedelta(days=float(os.environ.get("FMA_TOKEN_TTL_DAYS", "30")))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "fma_django.api.authentication.DeveloperTokenAuthentication",
        "fma_django.api.authentication.ClientCredentialAuthentication",
        "fma_django.api.authentication.LegacyClientUUIDAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "fma_django.api.parsers.JSONParser",  # refuses JSON nested too deeply (a 400, not a 500)
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "fma_django.api.pagination.Pagination",
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "fma_django.api.schema.AutoSchema",
    "EXCEPTION_HANDLER": "fma_django.api.exceptions.exception_handler",
    "PAGE_SIZE": 50,
    # Anonymous callers, per address, counted in CACHES (fma_django.api.throttling): password
    # guesses at /api-token-auth/, anonymous register_client/, and any other view open to them.
    "DEFAULT_THROTTLE_CLASSES": ["fma_django.api.throttling.AnonymousRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "login": os.environ.get("FMA_THROTTLE_LOGIN", "10/min"),
        "register": os.environ.get("FMA_THROTTLE_REGISTER", "60/min"),
        "anon": os.environ.get("FMA_THROTTLE_ANON", "120/min"),
    },
    # How many proxies in front of the service append to X-Forwarded-For (0: trust none, the
    # caller is REMOTE_ADDR). Behind one load balancer, 1.
    "NUM_PROXIES": int(os.environ.get("FMA_NUM_PROXIES", "0")),
}

# The schema says what the server sends (tests/fuzz checks every answer against it): OpenAPI 3.1,
# whose schemas are plain JSON Schema, with request and response shapes apart (read-only fields
# are never asked for, write-only ones never promised).
SPECTACULAR_SETTINGS = {
    "OAS_VERSION": "3.1.0",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "fma_django.api.schema.nulls_as_json_schema",
    ],
    "TITLE": "FMA API",
    "DESCRIPTION": "Federated model aggregation: the v1 protocol of the original FMA, plus binary weights.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("FMA_LOG_LEVEL", "INFO")},
}
