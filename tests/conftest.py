"""Shared fixtures. Tests use the real PostgreSQL and Redis started by `make test`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db.backends.postgresql.operations import DatabaseOperations

from telemetry import db as telemetry_db

_original_sql_flush = DatabaseOperations.sql_flush


def _flush_with_audit(self: DatabaseOperations, style: Any, tables: Any, **kwargs: Any) -> list[str]:
    # Transactional tests empty every table between tests. The audit table refuses TRUNCATE by
    # trigger; the test role is a superuser, which may run the flush in replica mode (triggers
    # off) — the very power PITFALLS.md warns production roles must not have.
    statements = _original_sql_flush(self, style, tables, **kwargs)
    if not statements:
        return statements
    return [
        "SET LOCAL session_replication_role = replica",
        *statements,
        "TRUNCATE telemetry_reading, telemetry_ingest_log",
        "SET LOCAL session_replication_role = origin",
    ]


DatabaseOperations.sql_flush = _flush_with_audit  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _isolated_redis() -> Iterator[None]:
    """Each test starts with empty rate-limit buckets and channel state."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield
    client.close()


@pytest.fixture
async def ingest_clients() -> AsyncIterator[None]:
    """Close the ingest pool bound to this test's event loop when the test ends."""
    yield
    await telemetry_db.close_clients()


def pytest_report_header(config: pytest.Config) -> str:
    return f"database: {os.environ.get('DATABASE_URL', '?')}  redis: {os.environ.get('REDIS_URL', '?')}"


@pytest.fixture(scope="session", autouse=True)
def _drop_stray_connections(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Async tests leave connections open in worker threads and ingest pools; end them so the
    test database can be dropped at the end of the session."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
