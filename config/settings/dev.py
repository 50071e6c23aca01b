"""Local development and the `make run` demo."""

from config.env import envint, envstr

from .base import *  # noqa: F403
from .base import BASE_DIR

DEBUG = False  # the demo behaves like production pages
# `manage.py demo_totp USER` prints the current code of a demo user (never in production).
PERFUSE_DEMO_TOOLS = True
SECRET_KEY = envstr("SECRET_KEY", "dev-only-not-secret-perfuse-demo-key-0123456789abcdef")
PERFUSE_AUDIT_CHECKPOINT_KEY = envstr(
    "PERFUSE_AUDIT_CHECKPOINT_KEY", "dev-only-audit-checkpoint-key-not-secret-0123456789"
)
# `make run` anchors the audit chain in a file next to its database (docs/security.md).
PERFUSE_AUDIT_ANCHOR = envstr("PERFUSE_AUDIT_ANCHOR", (BASE_DIR / ".data" / "audit-anchor.log").as_uri())

# `make run` starts a local SMTP sink on this port (README); a real relay would use STARTTLS.
PERFUSE_SMTP_HOST = envstr("PERFUSE_SMTP_HOST", "127.0.0.1")
PERFUSE_SMTP_PORT = envint("PERFUSE_SMTP_PORT", 8025, minimum=1)
PERFUSE_SMTP_SECURITY = envstr("PERFUSE_SMTP_SECURITY", "none")
