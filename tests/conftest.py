"""Shared fixtures. Tests use the real PostgreSQL and Redis started by `make test`.

Personas: one staff user per role, with a confirmed TOTP device (tests/personas.py), for tests
that need "a clinician of ward A" rather than a particular account. Ward A is `icu-a`, ward B
`icu-b`; `personas.verified_client(user)` signs one in. Tests whose usernames matter (a login by
name, a name asserted in the audit trail) create their own users with `personas.staff`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.db.backends.postgresql.operations import DatabaseOperations

from audit.access.roles import ADMIN, CLINICIAN, COMPLIANCE, DEVICE_ADMIN, ONCALL
from audit.hardening import AUDIT_TABLES, grants_sql
from telemetry import db as telemetry_db
from telemetry.models import Ward
from tests import db_roles, factories, mqtt_support, personas

_original_sql_flush = DatabaseOperations.sql_flush


def _flush_with_audit(self: DatabaseOperations, style: Any, tables: Any, **kwargs: Any) -> list[str]:
    # Transactional tests empty every table between tests. The audit tables refuse TRUNCATE by
    # trigger; their owner switches the triggers off for the flush — the very power the external
    # anchor exists to catch in production (docs/security.md).
    statements = _original_sql_flush(self, style, tables, **kwargs)
    if not statements:
        return statements
    return [
        *(f"ALTER TABLE {table} DISABLE TRIGGER USER" for table in AUDIT_TABLES),
        *statements,
        "TRUNCATE telemetry_reading, telemetry_ingest_log",
        # The rollup tables exist on plain PostgreSQL only (migration 0003); Django does not know them.
        "DO $$ BEGIN IF to_regclass('telemetry_rollup_1m') IS NOT NULL THEN "
        "TRUNCATE telemetry_rollup_1m, telemetry_rollup_1h; END IF; END $$",
        *(f"ALTER TABLE {table} ENABLE TRIGGER USER" for table in AUDIT_TABLES),
    ]


def _flush_as_owner(self: DatabaseOperations, sql_list: list[str]) -> None:
    # The application role the suite runs as may not TRUNCATE, nor touch a trigger: the owner does.
    with psycopg.connect(**db_roles.conninfo(db_roles.OWNER)) as conn, conn.cursor() as cursor:
        for sql in sql_list:
            cursor.execute(sql)


DatabaseOperations.sql_flush = _flush_with_audit  # type: ignore[method-assign]
DatabaseOperations.execute_sql_flush = _flush_as_owner  # type: ignore[method-assign]


def _connect_as(env: str) -> None:
    from django.db import connection

    connection.close()
    settings.DATABASES["default"].update(db_roles.role(env))


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings: None) -> None:
    """pytest-django creates and migrates the test database as the owner role, as a deployment
    migrates; the tests then run as the application role (django_db_setup below)."""
    _connect_as(db_roles.OWNER)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    from django.db import connection

    app, owner = db_roles.role(db_roles.APP)["USER"], db_roles.role(db_roles.OWNER)["USER"]
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(grants_sql(app_role=app, owner_role=owner))
    _connect_as(db_roles.APP)
    yield
    _connect_as(db_roles.OWNER)  # who drops the test database


@pytest.fixture(autouse=True)
def _audit_anchor(settings: Any, tmp_path: Path) -> None:
    """Each test anchors the audit chain in a file of its own."""
    settings.PERFUSE_AUDIT_ANCHOR = (tmp_path / "audit-anchor.log").as_uri()


@pytest.fixture(autouse=True)
def _isolated_redis() -> Iterator[None]:
    """Each test starts with empty rate-limit buckets and channel state."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield
    client.close()


# ---- personas ------------------------------------------------------------------------------


@pytest.fixture
def ward_a(db: None) -> Ward:
    """The ward of the ward personas."""
    return factories.ward("icu-a")


@pytest.fixture
def ward_b(db: None) -> Ward:
    """Another ward, of the other-ward personas."""
    return factories.ward("icu-b")


def _persona(username: str, role: str, ward: str | None, doc: str) -> Any:
    """A fixture: the staff user `username` in `role`, of the ward of fixture `ward` (if any)."""

    def persona(request: pytest.FixtureRequest, db: None) -> User:
        wards = [request.getfixturevalue(ward).code] if ward else []
        return personas.staff(username, role, wards)

    persona.__doc__ = doc
    return pytest.fixture(persona)


ward_clinician = _persona("ward-clinician", CLINICIAN, "ward_a", "A clinician of ward A.")
other_ward_clinician = _persona("other-ward-clinician", CLINICIAN, "ward_b", "A clinician of ward B, none of ward A.")
oncall_nurse = _persona("oncall-nurse", ONCALL, "ward_a", "On-call staff of ward A.")
other_ward_nurse = _persona("other-ward-nurse", ONCALL, "ward_b", "On-call staff of ward B, none of ward A.")
compliance_officer = _persona("compliance-officer", COMPLIANCE, None, "A compliance officer: the audit trail, no ward.")
device_admin = _persona("device-admin", DEVICE_ADMIN, None, "A device administrator: devices, no ward.")
admin = _persona("admin", ADMIN, None, "An administrator: every ward's alarm rules and staff.")


@pytest.fixture
async def ingest_clients() -> AsyncIterator[None]:
    """Close the ingest pool bound to this test's event loop when the test ends."""
    yield
    await telemetry_db.close_clients()


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[mqtt_support.Broker]:
    """The real Mosquitto (mutual TLS) of tests/mqtt_support.py: scripts/test.sh's, or our own."""
    broker = mqtt_support.broker_from_env()
    if broker is not None:
        yield broker
        return
    with mqtt_support.broker_started() as started:
        yield started


@pytest.fixture
def mqtt(mqtt_broker: mqtt_support.Broker, settings: Any) -> mqtt_support.Broker:
    """The broker, with the deployment CA and broker settings pointing at it for this test."""
    for name, value in mqtt_broker.settings().items():
        setattr(settings, name, value)
    return mqtt_broker


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"database: {os.environ.get('DATABASE_URL', '?')}  redis: {os.environ.get('REDIS_URL', '?')}  "
        f"timescale: {os.environ.get('TIMESCALE_TEST_URL', 'not set (timescale tests skipped)')}"
    )


def _timescale_log_tail() -> str:
    path = os.environ.get("TIMESCALE_TEST_LOG")
    if not path or not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as log:
        return "\nserver log:\n" + "".join(log.readlines()[-20:])


def migrate_timescale(url: str, *args: str) -> None:
    """Run `manage.py migrate` against the TimescaleDB test server in a subprocess: the server takes
    one connection at a time, so the test process must hold none while Django migrates."""
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"migrate {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def _empty_timescale_schema(conn: psycopg.Connection[Any]) -> None:
    """Drop what earlier runs left, so a reused server gives the same run as a fresh one. The
    extension itself stays: PGlite's one backend cannot load it a second time."""
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone():
        for (view,) in conn.execute("SELECT view_name FROM timescaledb_information.continuous_aggregates").fetchall():
            conn.execute(f'DROP MATERIALIZED VIEW IF EXISTS public."{view}" CASCADE')
    for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall():
        conn.execute(f'DROP TABLE IF EXISTS public."{table}" CASCADE')
    for (sequence,) in conn.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'").fetchall():
        conn.execute(f'DROP SEQUENCE IF EXISTS public."{sequence}" CASCADE')
    own_functions = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public' AND NOT EXISTS "
        "(SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')"
    ).fetchall()
    for (function,) in own_functions:
        conn.execute(f"DROP FUNCTION IF EXISTS {function} CASCADE")


@pytest.fixture(scope="session")
def timescale_url() -> str:
    """The TimescaleDB test server (scripts/timescale-server.sh, started by `make test`), migrated
    from an empty schema. Tests connect with psycopg, one connection at a time."""
    url = os.environ.get("TIMESCALE_TEST_URL")
    if not url:
        pytest.skip("TIMESCALE_TEST_URL is not set")
    deadline = time.monotonic() + 240  # first start may run `npm ci` and initialise PGlite
    while True:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                _empty_timescale_schema(conn)
            break
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"TimescaleDB test server at {url} not ready: {exc}{_timescale_log_tail()}"
                ) from exc
            time.sleep(0.5)
    migrate_timescale(url)
    return url


@pytest.fixture
def timescale(timescale_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the migrated TimescaleDB test server."""
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session", autouse=True)
def _drop_stray_connections(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Async tests leave connections open in worker threads and ingest pools; end them so the
    test database can be dropped at the end of the session."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND usename = current_user AND pid <> pg_backend_pid()"
        )
