"""Async PostgreSQL and Redis clients for the ingest hot path, one set per event loop.

The ingest view does not use the ORM: it runs a handful of statements on a pooled psycopg
async connection. Connection parameters come from Django's settings at first use, so tests
(which rename the database) and production share one code path. Beside them, for synchronous
code on Django's connection: a cursor that binds on the server (`bound_cursor`: the engine, the
archive's restore) and the engine's LISTEN connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection, connections
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis, RedisCluster

from config.redis_servers import limits_client_async

_pools: dict[int, AsyncConnectionPool] = {}

# The staging table of the ingest COPY: one per connection (a temporary table), created once when
# the pool opens the connection rather than with an `IF NOT EXISTS` DDL statement per request.
STAGE_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS ingest_stage ("
    "device_id bigint, patient_id bigint, metric text, seq bigint, sample_time timestamptz, "
    "value double precision, raw_value double precision, raw_unit text, signal_quality real, "
    "calibration_id text, firmware text) ON COMMIT DELETE ROWS"
)


async def _configure(conn: AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)  # transactions are explicit (`conn.transaction()`)
    await conn.execute(STAGE_DDL)


_redis: dict[int, Redis | RedisCluster] = {}


def _conninfo() -> dict[str, Any]:
    params = connections["default"].get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    return {key: value for key, value in params.items() if value not in (None, "")}


def bound_cursor() -> psycopg.Cursor[Any]:
    """A cursor of Django's connection (so inside its transaction) that sends parameters apart
    from the statement instead of quoting them into its text as Django's cursors do: the arrays
    of a batch's rows are dumped by psycopg's C adapters rather than quoted element by element,
    and a statement run often is prepared once. Results stay text: a `real` column read in
    binary would come back as its float4 value widened (0.949999988…), not the 0.95 of text."""
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def listen_connect(channel: str) -> psycopg.Connection[Any]:
    """A dedicated autocommit connection LISTENing on `channel` (the engine's wake-up on commit)."""
    conn = psycopg.connect(**{"connect_timeout": 5, **_conninfo()}, autocommit=True)
    try:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    except psycopg.Error:
        conn.close()
        raise
    return conn


async def ingest_pool() -> AsyncConnectionPool:
    loop_id = id(asyncio.get_running_loop())
    pool = _pools.get(loop_id)
    if pool is None:
        size = settings.PERFUSE_INGEST_POOL_SIZE
        pool = AsyncConnectionPool(
            kwargs=_conninfo(),
            min_size=1,
            max_size=size,
            open=False,
            timeout=settings.PERFUSE_INGEST_POOL_TIMEOUT_SECONDS,
            configure=_configure,
        )
        await pool.open()
        _pools[loop_id] = pool
    return pool


def ingest_redis() -> Redis | RedisCluster:
    """The rate limiter's client: of the limits' server or cluster (config/redis_servers.py)."""
    loop_id = id(asyncio.get_running_loop())
    client = _redis.get(loop_id)
    if client is None:
        url, cluster = settings.PERFUSE_RATELIMIT_REDIS_URL, settings.PERFUSE_REDIS_CLUSTER
        client = _redis[loop_id] = limits_client_async(url, cluster=cluster, timeout=0.5)
    return client


async def close_clients() -> None:
    """Close this loop's pool and Redis client (tests; Daphne keeps them for its lifetime)."""
    loop_id = id(asyncio.get_running_loop())
    pool = _pools.pop(loop_id, None)
    if pool is not None:
        await pool.close()
    client = _redis.pop(loop_id, None)
    if client is not None:
        await client.aclose()
