"""The database roles of the test run (scripts/test.sh creates them; audit/hardening.py).

The suite connects as the application role, like production. pytest-django creates and migrates
the test database as the owner role (tests/conftest.py). Tests that must act as the owner — to
tamper with the audit trail as a database owner could, or to change the schema under a check —
use `owner_sql`; the deploy check's superuser case uses `connect("DATABASE_SUPERUSER_URL")`.
Those connections see only committed rows: such tests are transactional.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest
from django.db import connection

from audit.hardening import AUDIT_TABLES
from config.env import database_from_url

OWNER = "DATABASE_OWNER_URL"
SUPERUSER = "DATABASE_SUPERUSER_URL"
APP = "DATABASE_URL"


def role(env: str) -> dict[str, Any]:
    """USER and PASSWORD of the role in `env`."""
    url = os.environ.get(env)
    if not url:
        raise pytest.UsageError(f"{env} is not set: run the suite with scripts/test.sh (it creates the roles)")
    params = database_from_url(url)
    return {"USER": params["USER"], "PASSWORD": params["PASSWORD"]}


def conninfo(env: str) -> dict[str, Any]:
    """psycopg parameters for the test database, as the role in `env`."""
    db, who = connection.settings_dict, role(env)
    params = {"host": db["HOST"], "port": db["PORT"], "dbname": db["NAME"], "user": who["USER"]}
    if who["PASSWORD"]:
        params["password"] = who["PASSWORD"]
    return params


def connect(env: str) -> psycopg.Connection[Any]:
    return psycopg.connect(**conninfo(env), autocommit=True)


def owner_sql(*statements: str | tuple[str, list[Any]], triggers_off: bool = True) -> None:
    """Run statements as the owner of the audit tables, in one committed transaction, with
    their triggers switched off (ALTER TABLE … DISABLE TRIGGER: the owner's own power)."""
    with psycopg.connect(**conninfo(OWNER)) as conn, conn.cursor() as cursor:
        if triggers_off:
            for table in AUDIT_TABLES:
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        for statement in statements:
            sql, params = statement if isinstance(statement, tuple) else (statement, [])
            cursor.execute(sql, params or None)
        if triggers_off:
            for table in AUDIT_TABLES:
                cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
