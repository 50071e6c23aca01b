"""Operational endpoints: liveness (`/healthz`), readiness (`/readyz`), Prometheus metrics (`/metrics`).

They are served by OpsEndpointsMiddleware, first in MIDDLEWARE, not by the URL router: probes
and scrapers address a process by its own IP over plain HTTP, which ALLOWED_HOSTS (400) and the
production HTTPS redirect (301) would refuse; none of the three builds a URL from the Host
header or uses a session, so neither check protects anything here.

Liveness needs nothing: no database, no Redis. Readiness asks PostgreSQL (reachable,
`telemetry_reading` present, no unapplied migration) and every configured Redis server (PING).
The migration check loads the migration graph, too slow for every probe: once the database is
found migrated that answer is kept for the life of the process (a deploy that adds migrations
also restarts it); a negative answer is re-checked at most every few seconds.

`/metrics` joins this process's counters (config/metrics.py) with figures read from PostgreSQL
at scrape time, so they agree whichever process is scraped: engine lag, readings stored in the
last minute, open alarms, audit chain length. It is unauthenticated but answers only addresses
in PERFUSE_METRICS_ALLOWED_NETS (403 JSON otherwise). Nothing in it names a patient.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.migrations.loader import MigrationLoader
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from config import metrics
from config.api_errors import error_body
from config.middleware import RequestGate
from config.net import address_in, networks, request_address
from config.redis_servers import redis_servers
from telemetry.selectors import engine_lag, ingest_counts_last_minute, readings_table_present

log = logging.getLogger(__name__)

NOT_MIGRATED_RECHECK_SECONDS = 5.0
REDIS_TIMEOUT_SECONDS = 0.5
SCRAPE_STATEMENT_TIMEOUT = "2s"
_NO_STORE = {"Cache-Control": "no-store"}


def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"}, headers=_NO_STORE)


# ---- readiness -----------------------------------------------------------------------------

_migrated_checked_at: float | None = None
_migrated = False


def _database_check() -> str:
    return "ok" if readings_table_present() else "telemetry_reading missing"


def _migrations_check() -> str:
    global _migrated, _migrated_checked_at
    fresh = _migrated_checked_at is not None and time.monotonic() - _migrated_checked_at < NOT_MIGRATED_RECHECK_SECONDS
    if not _migrated and not fresh:
        # Every migration in the graph recorded as applied (not only the leaves: a gap in the
        # middle of an app's history would slip past a plan to the leaf nodes).
        loader = MigrationLoader(connection, ignore_no_migrations=True)
        _migrated = all(key in loader.applied_migrations for key in loader.graph.nodes)
        _migrated_checked_at = time.monotonic()
    return "ok" if _migrated else "unapplied migrations"


def _redis_check() -> str:
    # Every configured server: the channel layer's (each carries its share of the live groups)
    # and the limits' (config/redis_servers.py). The first one down fails the check, named in the log.
    for url in redis_servers(settings.REDIS_URLS, settings.PERFUSE_RATELIMIT_REDIS_URL):
        client = redis.Redis.from_url(
            url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS
        )
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise redis.ConnectionError(f"{_server_name(client)}: {exc}") from exc
        finally:
            client.close()
    return "ok"


def _server_name(client: redis.Redis) -> str:
    """host:port/db of a client, without the password a URL may carry."""
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}/{kwargs.get('db', 0)}"


def _run_check(name: str, check: Callable[[], str], failure: str) -> str:
    try:
        return check()
    except (DatabaseError, redis.RedisError, OSError) as exc:
        log.warning("readiness check %s failed: %s", name, exc)
        return failure


def readiness() -> dict[str, str]:
    checks = {"database": _run_check("database", _database_check, "unreachable")}
    if checks["database"] == "ok":
        checks["migrations"] = _run_check("migrations", _migrations_check, "unreachable")
    else:
        checks["migrations"] = "not checked"
    checks["redis"] = _run_check("redis", _redis_check, "unreachable")
    return checks


def readyz(request: HttpRequest) -> HttpResponse:
    checks = readiness()
    if all(state == "ok" for state in checks.values()):
        return JsonResponse({"status": "ok", "checks": checks}, headers=_NO_STORE)
    failed = {name: state for name, state in checks.items() if state not in ("ok", "not checked")}
    detail = "; ".join(f"{name}: {state}" for name, state in failed.items())
    body = {"status": "unavailable", "checks": checks, **error_body("not_ready", detail)}
    return JsonResponse(body, status=503, headers=_NO_STORE)


# ---- who may scrape ------------------------------------------------------------------------


def metrics_allowed(address: str) -> bool:
    return address_in(address, networks(tuple(settings.PERFUSE_METRICS_ALLOWED_NETS), "PERFUSE_METRICS_ALLOWED_NETS"))


# ---- figures from PostgreSQL ---------------------------------------------------------------

# The help text of every unlabelled gauge of the page, by name.
_GAUGES = {
    "perfuse_engine_lag_seconds": "Age of the oldest committed ingest transaction the stream engine's slowest "
    "partition has not processed (0 when caught up).",
    "perfuse_engine_lag_transactions": "Ingest-log rows at or past the slowest engine partition's watermark, i.e. "
    "not yet processed.",
    "perfuse_readings_stored_last_minute": "Readings committed by ingest transactions that started in the last "
    "60 seconds (all processes).",
    "perfuse_ingest_transactions_last_minute": "Committed ingest transactions that started in the last 60 seconds "
    "(all processes).",
    "perfuse_audit_events": "Length of the audit hash chain (events).",
    "perfuse_audit_checkpoint_age_seconds": "Seconds since the newest signed audit checkpoint was written.",
    "perfuse_audit_chain_unlinked_events": "Audit events after the newest checkpoint whose prev_hash is not the "
    "hash of the event before them (0 unless the chain was tampered with).",
    "perfuse_hl7_outbox_oldest_pending_seconds": "Age of the oldest ORU message not yet acknowledged by the EHR "
    "(0 when none waits).",
    "perfuse_archive_newest_day_timestamp_seconds": "End of the newest archived day (Unix time).",
    "perfuse_database_up": "Whether PostgreSQL answered this scrape.",
}


def _gauges(**values: float) -> list[Metric]:
    """One unlabelled gauge family per value, in the order given."""
    return [GaugeMetricFamily(name, _GAUGES[name], value=float(value)) for name, value in values.items()]


def _engine_lag(_cursor: Any) -> list[Metric]:
    lag = engine_lag()
    return _gauges(perfuse_engine_lag_seconds=lag.seconds, perfuse_engine_lag_transactions=lag.transactions)


def _recent_readings(_cursor: Any) -> list[Metric]:
    counts = ingest_counts_last_minute()
    return _gauges(
        perfuse_readings_stored_last_minute=counts.readings,
        perfuse_ingest_transactions_last_minute=counts.transactions,
    )


_ALARM_PRIORITIES = ("high", "medium", "low")
_ALARM_OPEN_STATES = ("active_unacknowledged", "acknowledged")


def _active_alarms(cursor: Any) -> list[Metric]:
    # The alarms app may not be installed or migrated yet: look for the table and its columns first.
    cursor.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('alerts_alarm') "
        "AND attname IN ('priority', 'state') AND NOT attisdropped"
    )
    if cursor.fetchone()[0] != 2:
        return []
    cursor.execute("SELECT priority, state, count(*) FROM alerts_alarm WHERE state <> 'resolved' GROUP BY 1, 2")
    counts = {(p, s): 0.0 for p in _ALARM_PRIORITIES for s in _ALARM_OPEN_STATES}
    for priority, state, count in cursor.fetchall():
        counts[(str(priority), str(state))] = float(count)
    family = GaugeMetricFamily(
        "perfuse_alarms_active", "Alarms not yet resolved, by priority and state.", labels=["priority", "state"]
    )
    for (priority, state), count in sorted(counts.items()):
        family.add_metric([priority, state], count)
    return [family]


def _audit_chain(cursor: Any) -> list[Metric]:
    # The latest signed checkpoint counts the chain up to its event; add the events after it
    # rather than counting the whole table on every scrape.
    cursor.execute(
        "WITH cp AS (SELECT events, event_id FROM audit_auditcheckpoint ORDER BY seq DESC LIMIT 1) "
        "SELECT coalesce((SELECT events FROM cp), 0) + (SELECT count(*) FROM audit_auditevent "
        "WHERE id > coalesce((SELECT event_id FROM cp), 0))"
    )
    (events,) = cursor.fetchone()
    return _gauges(perfuse_audit_events=events)


def _audit_tail(cursor: Any) -> list[Metric]:
    """The links of the chain's unsigned tail (after the newest checkpoint, which the checkpoint
    job writes every minute), compared in SQL: a deleted, inserted or rewritten tail event
    breaks one. Only the links, not the HMACs (that is audit_verify's full walk); without any
    checkpoint the whole chain is the tail, bounded by the scrape's statement timeout."""
    cursor.execute(
        "WITH cp AS (SELECT event_id, event_hash, created_at FROM audit_auditcheckpoint ORDER BY seq DESC LIMIT 1), "
        "tail AS (SELECT id, prev_hash, lag(hash) OVER (ORDER BY id) AS before FROM audit_auditevent "
        "WHERE id >= coalesce((SELECT event_id FROM cp), 0)) "
        "SELECT (SELECT count(*) FROM tail WHERE before IS NOT NULL AND prev_hash <> before), "
        "(SELECT extract(epoch FROM clock_timestamp() - created_at) FROM cp)"
    )
    unlinked, checkpoint_age = cursor.fetchone()
    families = _gauges(perfuse_audit_chain_unlinked_events=unlinked)
    if checkpoint_age is not None:  # no checkpoint yet: absent, not "0 seconds old"
        families += _gauges(perfuse_audit_checkpoint_age_seconds=checkpoint_age)
    return families


_HL7_STATES = ("queued", "sending", "retry", "dead")


def _hl7_outbox(cursor: Any) -> list[Metric]:
    # Both queries are answered from partial indexes (oru_pending, oru_dead): the outbox keeps
    # every message it ever sent, so nothing here may scan it.
    cursor.execute(
        "SELECT state, count(*), extract(epoch FROM now() - min(created_at)) FROM telemetry_orumessage "
        "WHERE state IN ('queued', 'sending', 'retry') GROUP BY state"
    )
    counts = dict.fromkeys(_HL7_STATES, 0.0)
    oldest = 0.0
    for state, count, age in cursor.fetchall():
        counts[str(state)] = float(count)
        oldest = max(oldest, float(age))
    cursor.execute("SELECT count(*) FROM telemetry_orumessage WHERE state = 'dead'")
    counts["dead"] = float(cursor.fetchone()[0])
    family = GaugeMetricFamily(
        "perfuse_hl7_outbox_messages",
        "ORU result messages in the HL7 outbox by state (dead: refused by the EHR, waiting in the dead-letter list).",
        labels=["state"],
    )
    for state, count in counts.items():
        family.add_metric([state], count)
    return [family, *_gauges(perfuse_hl7_outbox_oldest_pending_seconds=oldest)]


def _archive(cursor: Any) -> list[Metric]:
    # Each archived ward-day is audited once (`archive.written`, telemetry/archive/writer.py),
    # a few rows a day under the action index.
    cursor.execute(
        "SELECT extract(epoch FROM max((detail->>'day')::date + 1)::timestamp AT TIME ZONE 'UTC') "
        "FROM audit_auditevent WHERE action = 'archive.written'"
    )
    (newest,) = cursor.fetchone()
    return [] if newest is None else _gauges(perfuse_archive_newest_day_timestamp_seconds=newest)


# Each collector gets the scrape's cursor; telemetry's figures come from telemetry.selectors, on
# the same connection and so inside the same read-only transaction and statement timeout.
DATABASE_COLLECTORS: list[Callable[[Any], list[Metric]]] = [
    _engine_lag,
    _recent_readings,
    _active_alarms,
    _audit_chain,
    _audit_tail,
    _hl7_outbox,
    _archive,
]


def database_families() -> list[Metric]:
    """Run every collector in one read transaction with a statement timeout; a collector that
    fails is logged and left out (its savepoint keeps the others usable)."""
    families: list[Metric] = []
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION READ ONLY")
            cursor.execute(f"SET LOCAL statement_timeout = '{SCRAPE_STATEMENT_TIMEOUT}'")
            for collector in DATABASE_COLLECTORS:
                try:
                    with transaction.atomic():
                        families += collector(cursor)
                except DatabaseError as exc:
                    log.warning("metrics collector %s failed: %s", collector.__name__, exc)
    except DatabaseError as exc:
        log.warning("metrics: database unavailable: %s", exc)
        return _gauges(perfuse_database_up=0)
    return [*_gauges(perfuse_database_up=1), *families]


class DatabaseFigures(Collector):
    """The figures read from PostgreSQL, as a prometheus_client Collector (one scrape each)."""

    def collect(self) -> Iterator[Metric]:
        yield from database_families()

    def describe(self) -> list[Metric]:
        return []  # registering must not query the database


class ScrapeDuration(Collector):
    """Registered last: collected after everything else on the page."""

    def __init__(self, started: float) -> None:
        self.started = started

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "perfuse_metrics_scrape_duration_seconds",
            "Time spent producing this page, in seconds.",
            value=time.perf_counter() - self.started,
        )

    def describe(self) -> list[Metric]:
        return []


def render_metrics() -> str:
    started = time.perf_counter()
    registry = metrics.scrape_registry(DatabaseFigures(), ScrapeDuration(started))
    return generate_latest(registry).decode()


def metrics_view(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return JsonResponse(error_body("method_not_allowed", "use GET"), status=405, headers={"Allow": "GET, HEAD"})
    if not metrics_allowed(request_address(request)):
        return JsonResponse(
            error_body("metrics_forbidden", "metrics are served to the monitoring networks only"), status=403
        )
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE_PLAIN_0_0_4, headers=_NO_STORE)


OPS_VIEWS: dict[str, Callable[[HttpRequest], HttpResponse]] = {
    "/healthz": healthz,
    "/readyz": readyz,
    "/metrics": metrics_view,
}


class OpsEndpointsMiddleware(RequestGate):
    """Answers OPS_VIEWS' exact paths before any other middleware runs (see the module docstring).
    Under ASGI only the (sync) ops views take a thread hop."""

    def before(self, request: HttpRequest) -> HttpResponse | None:
        view = OPS_VIEWS.get(request.path_info)
        return view(request) if view is not None else None

    async def abefore(self, request: HttpRequest) -> HttpResponse | None:
        view = OPS_VIEWS.get(request.path_info)
        return await sync_to_async(view)(request) if view is not None else None
