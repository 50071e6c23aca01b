"""Production settings pass `check --deploy` as the application role and fail it as a superuser,
as an owner of the audit tables or with UPDATE/DELETE/TRUNCATE on them; the documented SQL leaves
the application role INSERT-only on the audit tables."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import DatabaseError, connection, transaction

from audit.hardening import audit_anchor_check, hardening_sql, role_problems
from audit.trail import SYSTEM, audit_record
from tests import db_roles

ROOT = Path(__file__).resolve().parents[2]


def _production_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "PERFUSE_AUDIT_CHECKPOINT_KEY"}}
    env["DJANGO_SETTINGS_MODULE"] = "config.settings.production"
    env.update(extra)
    return env


def _database_url(env: str) -> str:
    info = db_roles.conninfo(env)
    return f"postgres://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}"


def _check_deploy(database_env: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`check --deploy` with production settings against the migrated test database."""
    env = _production_env(
        SECRET_KEY=secrets.token_urlsafe(64),
        PERFUSE_AUDIT_CHECKPOINT_KEY=secrets.token_urlsafe(48),
        PERFUSE_AUDIT_ANCHOR=(tmp_path / "audit-anchor.log").as_uri(),
        DATABASE_URL=_database_url(database_env),
    )
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings(django_db_setup, tmp_path):
    result = _check_deploy(db_roles.APP, tmp_path)  # connected as the application role
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_fails_when_connected_as_a_superuser(django_db_setup, tmp_path):
    result = _check_deploy(db_roles.SUPERUSER, tmp_path)
    assert result.returncode != 0
    assert "audit.E001" in result.stderr and "superuser" in result.stderr


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
    # The suite connects as the application role (tests/db_roles.py), set up by the same SQL.
    audit_record(actor=SYSTEM, action="test.as_app_role")  # INSERT (and chain read) still work
    for sql in (
        "UPDATE audit_auditevent SET purpose = 'x'",
        "DELETE FROM audit_auditevent",
        "TRUNCATE audit_auditevent",
        "ALTER TABLE audit_auditevent DISABLE TRIGGER USER",
        "DELETE FROM audit_auditcheckpoint",
        "ALTER TABLE audit_auditcheckpoint DISABLE TRIGGER USER",
        "SET session_replication_role = replica",
    ):
        with (
            pytest.raises(DatabaseError, match=r"permission denied|must be owner"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql)


def test_hardening_sql_refuses_odd_role_names():
    with pytest.raises(ValueError):
        hardening_sql(app_role='x"; DROP TABLE y; --', owner_role="owner")


# ---- the deploy check of the database role, condition by condition ------------------------


def _problems(env: str) -> list[str]:
    with db_roles.connect(env) as conn, conn.cursor() as cursor:
        return [message.id or "" for message in role_problems(cursor)]


def test_application_role_passes_the_role_check(django_db_setup):
    assert _problems(db_roles.APP) == []


def test_role_check_refuses_a_superuser(django_db_setup):
    assert "audit.E001" in _problems(db_roles.SUPERUSER)


def test_role_check_refuses_the_owner_of_the_audit_tables(django_db_setup):
    problems = _problems(db_roles.OWNER)
    assert problems.count("audit.E002") == 2 and "audit.E001" not in problems


@pytest.mark.parametrize("privilege", ["UPDATE", "DELETE", "TRUNCATE"])
def test_role_check_refuses_update_delete_truncate_on_the_audit_tables(django_db_setup, privilege):
    app = db_roles.role(db_roles.APP)["USER"]
    with db_roles.connect(db_roles.OWNER) as owner:
        owner.execute(f'GRANT {privilege} ON audit_auditcheckpoint TO "{app}"')
        try:
            with db_roles.connect(db_roles.APP) as conn, conn.cursor() as cursor:
                problems = role_problems(cursor)
        finally:
            owner.execute(f'REVOKE {privilege} ON audit_auditcheckpoint FROM "{app}"')
    assert [p.id for p in problems] == ["audit.E003"]
    assert privilege in problems[0].msg and "audit_auditcheckpoint" in problems[0].msg


def test_role_check_refuses_a_role_that_may_switch_triggers_off(django_db_setup):
    app = db_roles.role(db_roles.APP)["USER"]
    with db_roles.connect(db_roles.SUPERUSER) as superuser:
        superuser.execute(f'GRANT SET ON PARAMETER session_replication_role TO "{app}"')
        try:
            problems = _problems(db_roles.APP)
        finally:
            superuser.execute(f'REVOKE SET ON PARAMETER session_replication_role FROM "{app}"')
    assert problems == ["audit.E004"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [("", ["audit.E005"]), ("s3://bucket/anchor", ["audit.E006"]), ("file:///var/lib/anchor.log", [])],
)
def test_deploy_check_wants_an_anchor(settings, url, expected):
    settings.PERFUSE_AUDIT_ANCHOR = url
    assert [m.id for m in audit_anchor_check(None)] == expected
