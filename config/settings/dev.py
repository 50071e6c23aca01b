"""Local development and the `make run` demo."""

from config.env import envint, envsecret, envstr

from .base import *  # noqa: F403
from .base import BASE_DIR

DEBUG = False  # the demo behaves like production pages
# `manage.py demo_totp USER` prints the current code of a demo user (never in production).
PERFUSE_DEMO_TOOLS = True
SECRET_KEY = envsecret("SECRET_KEY", "dev-only-not-secret-perfuse-demo-key-0123456789abcdef")
PERFUSE_AUDIT_CHECKPOINT_KEY = envsecret(
    "PERFUSE_AUDIT_CHECKPOINT_KEY", "dev-only-audit-checkpoint-key-not-secret-0123456789"
)
# `make run` anchors the audit chain in a file next to its database (docs/security.md).
PERFUSE_AUDIT_ANCHOR = envstr("PERFUSE_AUDIT_ANCHOR", (BASE_DIR / ".data" / "audit-anchor.log").as_uri())

# `make run` starts a local SMTP sink on this port (README); a real relay would use STARTTLS.
PERFUSE_SMTP_HOST = envstr("PERFUSE_SMTP_HOST", "127.0.0.1")
PERFUSE_SMTP_PORT = envint("PERFUSE_SMTP_PORT", 8025, minimum=1)
PERFUSE_SMTP_SECURITY = envstr("PERFUSE_SMTP_SECURITY", "none")

# `make run`'s deployment CA and broker (scripts/run.sh, docs/mqtt.md): an operator's
# provision_device / revoke_device_key in another shell reach them without extra variables.
_DATA = BASE_DIR / ".data"
PERFUSE_PKI_DIR = envstr("PERFUSE_PKI_DIR", str(_DATA / "pki"))
MQTT_URL = envstr("MQTT_URL", f"mqtts://127.0.0.1:{envint('PERFUSE_MQTT_PORT', 18883, minimum=1)}")
MQTT_CA_FILE = envstr("MQTT_CA_FILE", str(_DATA / "pki" / "ca.pem"))
MQTT_CERT_FILE = envstr("MQTT_CERT_FILE", str(_DATA / "pki" / "bridge.pem"))
MQTT_KEY_FILE = envstr("MQTT_KEY_FILE", str(_DATA / "pki" / "bridge.key"))
PERFUSE_MQTT_PIDFILE = envstr("PERFUSE_MQTT_PIDFILE", str(_DATA / "mqtt" / "mosquitto.pid"))
PERFUSE_MQTT_ADMIN_CERT_FILE = envstr("PERFUSE_MQTT_ADMIN_CERT_FILE", str(_DATA / "pki" / "admin.pem"))
PERFUSE_MQTT_ADMIN_KEY_FILE = envstr("PERFUSE_MQTT_ADMIN_KEY_FILE", str(_DATA / "pki" / "admin.key"))
