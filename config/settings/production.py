"""Production: refuses to start without a real secret key; secure cookies and HSTS."""

from django.core.exceptions import ImproperlyConfigured

from config.env import envbool, envint, envstr

from .base import *  # noqa: F403
from .base import LOGGING, PERFUSE_AUDIT_CHECKPOINT_KEY, SECRET_KEY

if len(SECRET_KEY) < 50 or SECRET_KEY.startswith(("dev-", "test-")):
    raise ImproperlyConfigured("SECRET_KEY must be set to a long random value in production")
if len(PERFUSE_AUDIT_CHECKPOINT_KEY) < 32 or PERFUSE_AUDIT_CHECKPOINT_KEY == SECRET_KEY:
    raise ImproperlyConfigured("PERFUSE_AUDIT_CHECKPOINT_KEY must be a long random value different from SECRET_KEY")

DEBUG = False
# One JSON object per line for the log pipeline (config/logs.py); `plain` for a human at a console.
PERFUSE_LOG_FORMAT = envstr("PERFUSE_LOG_FORMAT", "json")
if PERFUSE_LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"PERFUSE_LOG_FORMAT must be plain or json, got {PERFUSE_LOG_FORMAT!r}")
LOGGING["handlers"]["console"]["formatter"] = PERFUSE_LOG_FORMAT
PERFUSE_SERVE_STATIC = envbool("PERFUSE_SERVE_STATIC", False)
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"
