"""Operational endpoints: /healthz, /readyz, /metrics and the WebSocket gauge."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.db import connection
from django.test import AsyncClient, Client, override_settings
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from audit.trail import SYSTEM, audit_record
from config import metrics, ops
from telemetry import selectors as telemetry_selectors
from telemetry.engine import engine_batch
from tests import db_roles, factories

# ---- a strict reader of the Prometheus text format (0.0.4) -----------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
# Format 0.0.4 names a counter family by its sample name, which ends in _total.
_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        assert match, f"bad label set {text!r} at {position}"
        name, raw = match.group(1), match.group(2)
        assert name not in labels, f"label {name} twice in {text!r}"
        labels[name] = raw.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        position = match.end()
    return labels


def _value(text: str) -> float:
    return {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(text) or float(text)


def parse_exposition(text: str) -> tuple[Series, dict[str, str]]:
    """Every line is a HELP, a TYPE or a sample of a family whose TYPE came first; samples are
    unique; histogram buckets are cumulative and end at +Inf == _count. Returns (series, types)."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    series: Series = {}
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(_NAME, name) and name not in helps, line
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert re.fullmatch(_NAME, name) and name not in types, line
            assert kind in _SUFFIXES, line
            assert kind != "counter" or name.endswith("_total"), line
            types[name] = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels = match.group(1), _labels(match.group(2) or "")
            family = next((f for f, kind in types.items() for suffix in _SUFFIXES[kind] if name == f + suffix), None)
            assert family is not None, f"sample {name} before or without its TYPE"
            key = (name, frozenset(labels.items()))
            assert key not in series, f"duplicate series {line!r}"
            series[key] = _value(match.group(3))
    for family, kind in types.items():
        if kind != "histogram":
            continue
        buckets = sorted(
            (_value(dict(labels)["le"]), value)
            for (name, labels), value in series.items()
            if name == family + "_bucket"
        )
        counts = [count for _, count in buckets]
        assert counts == sorted(counts), f"{family} buckets are not cumulative"
        assert buckets[-1][0] == math.inf
        assert buckets[-1][1] == series[(family + "_count", frozenset())]
    return series, types


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


class _Fixed(Collector):
    def __init__(self, *families: Metric) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _dead_redis_url() -> str:
    # A port that was free a moment ago and has nobody listening on it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def _dead_redis_settings() -> dict[str, Any]:
    url = _dead_redis_url()
    cache = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}
    return {"REDIS_URL": url, "REDIS_URLS": [url], "PERFUSE_RATELIMIT_REDIS_URL": url, "CACHES": {"default": cache}}


# ---- healthz ---------------------------------------------------------------------------------


def test_healthz_needs_neither_database_nor_redis():
    # No django_db mark: pytest-django makes any database access fail this test.
    with override_settings(**_dead_redis_settings()):
        response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_by_ip_over_plain_http_are_answered(path: str):
    # A kubelet or Prometheus addresses the process by its IP, without TLS.
    with override_settings(SECURE_SSL_REDIRECT=True):
        client = Client(HTTP_HOST="10.9.8.7:8000", REMOTE_ADDR="10.9.0.1")
        assert client.get(path).status_code == 200
        # ... while every other path keeps both protections.
        assert client.get("/accounts/login/").status_code == 400
        assert Client().get("/accounts/login/").status_code == 301


# ---- readyz ----------------------------------------------------------------------------------


@pytest.fixture
def fresh_migration_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "_migrated", False)
    monkeypatch.setattr(ops, "_migrated_checked_at", None)


@pytest.mark.django_db
@pytest.mark.usefixtures("fresh_migration_check")
def test_readyz_ok():
    response = Client().get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "migrations": "ok", "redis": "ok"}}
    assert response["Cache-Control"] == "no-store"


@pytest.mark.django_db
@pytest.mark.usefixtures("fresh_migration_check")
def test_readyz_503_when_redis_is_unreachable():
    with override_settings(**_dead_redis_settings()):
        response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"] == {"database": "ok", "migrations": "ok", "redis": "unreachable"}
    assert body["error"] == {"code": "not_ready", "detail": "redis: unreachable"}


@pytest.mark.django_db
@pytest.mark.usefixtures("fresh_migration_check")
def test_readyz_503_with_an_unapplied_migration():
    with connection.cursor() as cursor:  # rolled back with the test's transaction
        cursor.execute("DELETE FROM django_migrations WHERE app = %s AND name LIKE %s", ["telemetry", "0002%"])
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["migrations"] == "unapplied migrations"


@contextlib.contextmanager
def _table_renamed(table: str) -> Iterator[None]:
    """The table gone for a while: only its owner may rename it (the suite runs as the
    application role), and the rename commits, so it is undone on the way out."""
    db_roles.owner_sql(f"ALTER TABLE {table} RENAME TO {table}_gone", triggers_off=False)
    try:
        yield
    finally:
        db_roles.owner_sql(f"ALTER TABLE {table}_gone RENAME TO {table}", triggers_off=False)


@pytest.mark.django_db
@pytest.mark.usefixtures("fresh_migration_check")
def test_readyz_503_without_the_readings_table():
    with _table_renamed("telemetry_reading"):
        response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "telemetry_reading missing"
    assert response.json()["checks"]["migrations"] == "not checked"
    assert response.json()["error"]["detail"] == "database: telemetry_reading missing"


@pytest.mark.django_db
def test_readyz_keeps_a_positive_migration_check(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ops, "_migrated", True)
    monkeypatch.setattr(ops, "_migrated_checked_at", 0.0)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the migration graph was loaded again")

    monkeypatch.setattr(ops, "MigrationLoader", refuse)
    assert Client().get("/readyz").status_code == 200


# ---- metrics ---------------------------------------------------------------------------------


def scrape(client: Client | None = None) -> tuple[Series, dict[str, str]]:
    response = (client or Client()).get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_exposition(response.content.decode())


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("ingest_clients")
async def test_ingest_moves_the_counters_and_the_database_figures():
    dev = await sync_to_async(factories.device)(patient="p-metrics-secret")
    before, _ = await sync_to_async(scrape)()
    client = AsyncClient()
    now = dt.datetime.now(dt.UTC)
    good = factories.series(1, 40, start=now - dt.timedelta(seconds=60), step=1.0)
    bad = [factories.reading(100, now, value=150.0), factories.reading(101, now, metric="heart_rate")]
    body = factories.batch_body(dev, good + bad)
    first = await client.post("/api/v1/ingest/readings", body, content_type="application/json", headers=dev.sign(body))
    assert first.json()["accepted"] == 40
    again = await client.post("/api/v1/ingest/readings", body, content_type="application/json", headers=dev.sign(body))
    assert again.json()["duplicates"] == 40
    unsigned = await client.post("/api/v1/ingest/readings", body, content_type="application/json")
    assert unsigned.status_code == 401

    after, types = await sync_to_async(scrape)()
    grew = {
        ("perfuse_ingest_requests_total", ("status", "200")): 2,
        ("perfuse_ingest_requests_total", ("status", "401")): 1,
        ("perfuse_ingest_readings_total", ("outcome", "accepted")): 40,
        ("perfuse_ingest_readings_total", ("outcome", "duplicate")): 40,
        ("perfuse_ingest_readings_rejected_total", ("code", "out_of_range")): 2,
        ("perfuse_ingest_readings_rejected_total", ("code", "unknown_metric")): 2,
    }
    for (name, (label, label_value)), delta in grew.items():
        assert value(after, name, **{label: label_value}) - value(before, name, **{label: label_value}) == delta, name
    assert (
        value(after, "perfuse_ingest_request_duration_seconds_count")
        - value(before, "perfuse_ingest_request_duration_seconds_count")
        == 3
    )
    assert types["perfuse_ingest_request_duration_seconds"] == "histogram"
    # From PostgreSQL: the table was emptied before this test, so these are exact.
    assert value(after, "perfuse_database_up") == 1
    assert value(after, "perfuse_readings_stored_last_minute") == 40
    assert value(after, "perfuse_engine_lag_transactions") >= 1
    assert value(after, "perfuse_engine_lag_seconds") >= 0

    await sync_to_async(engine_batch)([], now=dt.datetime.now(dt.UTC))
    caught_up, _ = await sync_to_async(scrape)()
    assert value(caught_up, "perfuse_engine_lag_transactions") == 0
    assert value(caught_up, "perfuse_engine_lag_seconds") == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("ingest_clients")
async def test_metrics_name_no_patient_and_no_device():
    dev = await sync_to_async(factories.device)(device_id="lumee-7777", patient="p-never-in-metrics")
    body = factories.batch_body(dev, [*factories.series(1, 5), factories.reading(9, unit="furlongs")])
    response = await AsyncClient().post(
        "/api/v1/ingest/readings", body, content_type="application/json", headers=dev.sign(body)
    )
    assert response.json()["rejected"][0]["code"] == "unknown_unit"
    page = (await sync_to_async(Client().get)("/metrics")).content.decode()
    assert 'code="unknown_unit"' in page
    for identifier in ("p-never-in-metrics", "lumee-7777", dev.key_id, dev.ward_code):
        assert identifier not in page


@pytest.mark.django_db
def test_recent_readings_walk_pages_of_the_ingest_log(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(telemetry_selectors, "RECENT_PAGE_ROWS", 3)
    rows = [
        # (txid, accepted, age in seconds): old rows first, then the last minute, with two rows
        # sharing a txid across a page boundary and one slow transaction that started earlier.
        *((100 + i, 1000, 300 + i) for i in range(6)),
        (200, 1, 50),
        (201, 2, 40),
        (202, 4, 30),
        (202, 8, 30),
        (203, 16, 90),  # started 90 s ago: outside the window although its txid is recent
        (204, 32, 20),
        (205, 64, 10),
    ]
    with connection.cursor() as cursor:
        for txid, accepted, age in rows:
            cursor.execute(
                "INSERT INTO telemetry_ingest_log (txid, device_id, min_sample_time, max_sample_time, accepted, "
                "created_at) VALUES (%s, 1, now(), now(), %s, now() - %s * interval '1 second')",
                [txid, accepted, age],
            )
    series, _ = scrape()
    assert value(series, "perfuse_readings_stored_last_minute") == 1 + 2 + 4 + 8 + 32 + 64
    assert value(series, "perfuse_ingest_transactions_last_minute") == 6


@pytest.mark.django_db
def test_metrics_audit_chain_length_counts_new_events():
    before, _ = scrape()
    for i in range(3):
        audit_record(actor=SYSTEM, action="test.metrics", detail={"i": i})
    after, _ = scrape()
    assert value(after, "perfuse_audit_events") - value(before, "perfuse_audit_events") == 3
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audit_auditevent")
        assert value(after, "perfuse_audit_events") == cursor.fetchone()[0]


@pytest.mark.django_db
def test_metrics_active_alarms_by_priority():
    series, _ = scrape()
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('alerts_alarm') IS NOT NULL")
        (installed,) = cursor.fetchone()
    if not installed:  # before the alarms app: the family is left out, not invented
        assert not any(name == "perfuse_alarms_active" for name, _ in series)
    with connection.cursor() as cursor:
        # A temporary table shadows the real one (if any) for this connection only.
        cursor.execute("CREATE TEMP TABLE alerts_alarm (priority text, state text)")
        cursor.execute(
            "INSERT INTO alerts_alarm VALUES ('high', 'active_unacknowledged'), ('high', 'active_unacknowledged'), "
            "('low', 'acknowledged'), ('medium', 'resolved')"
        )
    series, _ = scrape()
    assert value(series, "perfuse_alarms_active", priority="high", state="active_unacknowledged") == 2
    assert value(series, "perfuse_alarms_active", priority="low", state="acknowledged") == 1
    assert (("perfuse_alarms_active", frozenset({"priority": "medium", "state": "acknowledged"}.items()))) in series
    assert not any(dict(labels).get("state") == "resolved" for _, labels in series)


@pytest.mark.django_db
def test_metrics_survive_a_missing_table():
    with _table_renamed("telemetry_ingest_log"):
        series, _ = scrape()
    assert value(series, "perfuse_database_up") == 1
    assert ("perfuse_engine_lag_seconds", frozenset()) not in series
    assert ("perfuse_audit_events", frozenset()) in series


@pytest.mark.django_db
@pytest.mark.parametrize("address", ["203.0.113.7", "8.8.8.8", "2001:db8::1", "::ffff:203.0.113.7", "not-an-ip"])
def test_metrics_refused_outside_the_allowed_networks(address: str):
    response = Client(REMOTE_ADDR=address).get("/metrics")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "metrics_forbidden"


@pytest.mark.django_db
@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.20.0.5", "192.168.1.10", "::1", "::ffff:10.0.0.9"])
def test_metrics_served_to_the_allowed_networks(address: str):
    assert Client(REMOTE_ADDR=address).get("/metrics").status_code == 200


@pytest.mark.django_db
def test_metrics_forwarded_for_is_trusted_only_behind_our_proxy():
    spoofed = Client(REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert spoofed.get("/metrics").status_code == 403
    # Behind our proxy (itself on a private address), the rightmost hop is the client.
    proxied = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="127.0.0.1, 203.0.113.7")
    with override_settings(PERFUSE_TRUSTED_PROXIES=["10.0.0.2"]):
        assert proxied.get("/metrics").status_code == 403
    with override_settings(PERFUSE_METRICS_ALLOWED_NETS=["203.0.113.0/24"], PERFUSE_TRUSTED_PROXIES=["10.0.0.0/24"]):
        assert proxied.get("/metrics").status_code == 200


def test_metrics_only_answer_get():
    response = Client().post("/metrics")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_renderer_escapes_label_values():
    family = GaugeMetricFamily("x", "help", labels=["a"])
    family.add_metric(['q"b\\c\nd'], 1.5)
    registry = CollectorRegistry()
    registry.register(_Fixed(family))
    series, _ = parse_exposition(generate_latest(registry).decode())
    assert value(series, "x", a='q"b\\c\nd') == 1.5


@pytest.mark.django_db
def test_openapi_describes_the_operational_endpoints():
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert set(paths["/metrics"]["get"]["responses"]) == {"200", "403", "405"}
    assert "/healthz" in paths
    assert "/api/v1/ingest/readings" in paths  # the other hook still runs


# ---- the WebSocket gauge -----------------------------------------------------------------------


class _Accepting(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()


class _Refusing(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.close(code=4403)


@pytest.mark.django_db  # Channels closes stale database connections around each message
async def test_websocket_gauge_counts_open_connections_by_route_kind():
    route = "demo_patients"
    start = metrics.current(metrics.WEBSOCKETS_OPEN, route=route)
    opened = metrics.current(metrics.WEBSOCKETS_OPENED, route=route)
    app = metrics.WebSocketGauge(_Accepting.as_asgi())
    first = WebsocketCommunicator(app, f"/ws/{route}/p-secret/live")
    second = WebsocketCommunicator(app, f"/ws/{route}/p-other/live")
    assert (await first.connect())[0] and (await second.connect())[0]
    assert metrics.current(metrics.WEBSOCKETS_OPEN, route=route) == start + 2
    await first.disconnect()
    assert metrics.current(metrics.WEBSOCKETS_OPEN, route=route) == start + 1
    await second.disconnect()
    assert metrics.current(metrics.WEBSOCKETS_OPEN, route=route) == start
    assert metrics.current(metrics.WEBSOCKETS_OPENED, route=route) == opened + 2

    refused = WebsocketCommunicator(metrics.WebSocketGauge(_Refusing.as_asgi()), f"/ws/{route}/x/live")
    assert not (await refused.connect())[0]
    await refused.wait()
    assert metrics.current(metrics.WEBSOCKETS_OPENED, route=route) == opened + 2


def test_websocket_route_never_keeps_an_identifier():
    assert metrics.websocket_route("/ws/patients/p-0001/live") == "patients"
    assert metrics.websocket_route("/ws/session") == "session"
    assert metrics.websocket_route("/ws/Weird-Thing/x") == "other"
    assert metrics.websocket_route("/elsewhere") == "other"


def test_the_asgi_application_counts_websockets():
    from config.asgi import application

    assert isinstance(application.app.application_mapping["websocket"], metrics.WebSocketGauge)
