"""Test settings: real PostgreSQL and Redis from the test command, fast password hashing."""

from config.env import envsecret

from .base import *  # noqa: F403

SECRET_KEY = envsecret("SECRET_KEY", "test-only-not-secret-perfuse-key-0123456789abcdef")
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
PERFUSE_AUDIT_CHECKPOINT_KEY = envsecret(
    "PERFUSE_AUDIT_CHECKPOINT_KEY", "test-only-audit-checkpoint-key-not-secret-0123456789"
)
# No deployment CA unless a test asks for one: the MQTT fixture (tests/mqtt_support.py) points
# this at the throwaway CA that scripts/test.sh exported as PERFUSE_PKI_DIR (or made itself).
PERFUSE_PKI_DIR = ""
