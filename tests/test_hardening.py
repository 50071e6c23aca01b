"""Production settings pass `check --deploy`; the documented SQL leaves the app role INSERT-only."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import DatabaseError, connection, transaction

from audit.hardening import hardening_sql
from audit.trail import SYSTEM, audit_record

ROOT = Path(__file__).resolve().parent.parent


def _production_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "PERFUSE_AUDIT_CHECKPOINT_KEY"}}
    env["DJANGO_SETTINGS_MODULE"] = "config.settings.production"
    env.update(extra)
    return env


def test_check_deploy_is_clean_with_production_settings():
    env = _production_env(SECRET_KEY=secrets.token_urlsafe(64), PERFUSE_AUDIT_CHECKPOINT_KEY=secrets.token_urlsafe(48))
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize(
    "extra",
    [
        {"SECRET_KEY": "short"},
        {"SECRET_KEY": "x" * 64},  # checkpoint key missing
        {"SECRET_KEY": "y" * 64, "PERFUSE_AUDIT_CHECKPOINT_KEY": "y" * 64},  # same key twice
    ],
)
def test_production_refuses_weak_keys(extra):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=_production_env(**extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr


@pytest.mark.django_db
def test_app_role_is_insert_only_on_the_audit_tables():
    audit_record(actor=SYSTEM, action="test.before")
    suffix = secrets.token_hex(4)
    app, owner = f"perfuse_app_{suffix}", f"perfuse_owner_{suffix}"
    # Roles are created inside the test transaction, so they vanish with its rollback.
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {app} NOLOGIN")
        cursor.execute(f"CREATE ROLE {owner} NOLOGIN")
        cursor.execute(hardening_sql(app_role=app, owner_role=owner))
        cursor.execute(f"SET ROLE {app}")
    try:
        audit_record(actor=SYSTEM, action="test.as_app_role")  # INSERT (and chain read) still work
        for sql in (
            "UPDATE audit_auditevent SET purpose = 'x'",
            "DELETE FROM audit_auditevent",
            "TRUNCATE audit_auditevent",
            "ALTER TABLE audit_auditevent DISABLE TRIGGER USER",
            "DELETE FROM audit_auditcheckpoint",
        ):
            with (
                pytest.raises(DatabaseError, match=r"permission denied|must be owner"),
                transaction.atomic(),
                connection.cursor() as cursor,
            ):
                cursor.execute(sql)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")


def test_hardening_sql_refuses_odd_role_names():
    with pytest.raises(ValueError):
        hardening_sql(app_role='x"; DROP TABLE y; --', owner_role="owner")
