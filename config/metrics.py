"""The counters, gauges and histograms of `/metrics`, kept by prometheus_client.

One Daphne process (the default): the metrics live in this process's memory and each process is
scraped on its own (Prometheus sums across targets). Several Daphnes on one host
(`PROMETHEUS_MULTIPROC_DIR` set, the same directory for all of them, emptied before the first
starts: deploy/systemd does both): prometheus_client keeps every value in a memory-mapped file
per process in that directory, and a scrape of ANY of the processes answers the sums over all
of them — counters and histograms summed (a stopped process's counts stay in the total, as a
counter must), the open-WebSocket gauge as `livesum` (processes alive only). A process removes
its live-gauge files at exit (`mark_process_dead`), and a scrape also removes those of processes
that died without exiting cleanly, so a SIGKILLed Daphne's sockets do not stay "open".

Figures that must be the same whichever process answers (engine lag, alarms, audit chain) are
read from PostgreSQL at scrape time instead (config/ops.py). Everything here is aggregate: no
label ever carries a patient, a pseudonym, a device id or a user — label values come from small
fixed sets (status codes, rejection codes, WebSocket route kinds), anything else folded into
"other".

The API other modules call:

- `ingest_observe(status=..., accepted=..., duplicates=..., rejected_codes=..., seconds=...)`
  once per ingest request (telemetry/api.py, telemetry/asgi.py).
- `websocket_opened(route)` / `websocket_closed(route)`: called by `WebSocketGauge`
  (config/asgi.py) for every accepted WebSocket, so consumers need not call them.
- `mqtt_bridge_subscribed(bool)`: the MQTT bridge's subscription state (telemetry/mqtt_bridge.py).
- `this_process()`: the Collector config/ops.py puts on the page: these metrics (this process's,
  or every process's in multiprocess mode) and the process_*/python_* runtime figures of the
  process answering the scrape.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# The 0.0.4 page has had no `_created` series; OpenMetrics-only noise for our scrapers.
cast(Callable[[], None], disable_created_metrics)()

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")

# Label values from code paths are fixed words; anything else is folded into "other" so a
# surprise can never grow the number of series (or carry an identifier into a label).
_WORD = re.compile(r"[a-z][a-z0-9_]{0,39}")


def _word(value: str) -> str:
    return value if _WORD.fullmatch(value) else "other"


# registry=None: nothing here lands in prometheus_client's global REGISTRY; the page is built
# from `this_process()` (in multiprocess mode from the files of every process instead).
INGEST_REQUESTS = Counter(
    "perfuse_ingest_requests",
    "Device ingest requests answered, by HTTP status.",
    ["status"],
    registry=None,
)
INGEST_READINGS = Counter(
    "perfuse_ingest_readings",
    "Readings in ingest requests answered: accepted (stored) or duplicate (already stored).",
    ["outcome"],
    registry=None,
)
INGEST_REJECTED = Counter(
    "perfuse_ingest_readings_rejected",
    "Readings rejected item by item, by rejection code.",
    ["code"],
    registry=None,
)
# 0.15 s is the ingest p99 target (docs/benchmarks.md), so it is a bucket bound.
INGEST_SECONDS = Histogram(
    "perfuse_ingest_request_duration_seconds",
    "Time from the ingest view's start to its answer, in seconds.",
    buckets=[0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0],
    registry=None,
)
# livesum: the sockets open now in the processes alive now (a dead process holds none).
WEBSOCKETS_OPEN = Gauge(
    "perfuse_websocket_connections",
    "WebSocket connections accepted and still open, by route kind.",
    ["route"],
    registry=None,
    multiprocess_mode="livesum",
)
WEBSOCKETS_OPENED = Counter(
    "perfuse_websocket_connections_opened",
    "WebSocket connections accepted since start, by route kind.",
    ["route"],
    registry=None,
)
# Set by the MQTT bridge (telemetry/mqtt_bridge.py), a process of its own: only a shared
# multiprocess directory brings its value to a Daphne's page, so the gauge is left off the page
# of a lone process (where it could only say 0) and, in multiprocess mode, every process starts
# it at 0 so the family is there (sum 0) when no bridge is up.
MQTT_BRIDGES_SUBSCRIBED = Gauge(
    "perfuse_mqtt_bridges_subscribed",
    "MQTT ingest bridges connected to the broker with their shared subscription granted (processes alive).",
    registry=None,
    multiprocess_mode="livesum",
)

PERFUSE_METRICS: list[Collector] = [
    INGEST_REQUESTS,
    INGEST_READINGS,
    INGEST_REJECTED,
    INGEST_SECONDS,
    WEBSOCKETS_OPEN,
    WEBSOCKETS_OPENED,
]
# process_* (CPU, memory, file descriptors, start time) and python_* (GC, version) of the
# process answering: prometheus_client's own collectors, left out of the global REGISTRY when
# multiprocess mode is on, so they are listed here rather than taken from it.
RUNTIME_COLLECTORS: list[Collector] = [PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR]


def ingest_observe(
    *, status: int, accepted: int, duplicates: int, rejected_codes: Iterable[str], seconds: float
) -> None:
    """Count one answered ingest request (any status) and its readings."""
    INGEST_REQUESTS.labels(status=str(status)).inc()
    if accepted:
        INGEST_READINGS.labels(outcome="accepted").inc(accepted)
    if duplicates:
        INGEST_READINGS.labels(outcome="duplicate").inc(duplicates)
    for code in rejected_codes:
        INGEST_REJECTED.labels(code=_word(code)).inc()
    INGEST_SECONDS.observe(seconds)


View = TypeVar("View", bound=Callable[..., Awaitable[Any]])


def ingest_observed(view: View) -> View:
    """Decorator for the async ingest view: times it and feeds its answer to `ingest_observe`.

    Counts come from the JSON answer itself (only a 200 carries them), so what is counted is what
    the device was told; a view that raises is counted as a 500."""

    @functools.wraps(view)
    async def observed(request: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        status, body = 500, {}
        try:
            response = await view(request, *args, **kwargs)
            status = response.status_code
            if status == 200:
                body = orjson.loads(response.content)
            return response
        finally:
            ingest_observe(
                status=status,
                accepted=body.get("accepted", 0),
                duplicates=body.get("duplicates", 0),
                rejected_codes=[item.get("code", "") for item in body.get("rejected", ())],
                seconds=time.perf_counter() - started,
            )

    return cast(View, observed)


def websocket_opened(route: str) -> None:
    WEBSOCKETS_OPEN.labels(route=route).inc()
    WEBSOCKETS_OPENED.labels(route=route).inc()


def websocket_closed(route: str) -> None:
    WEBSOCKETS_OPEN.labels(route=route).dec()


def mqtt_bridge_subscribed(subscribed: bool) -> None:
    MQTT_BRIDGES_SUBSCRIBED.set(1 if subscribed else 0)


def websocket_route(path: str) -> str:
    """The route kind of a socket path: "/ws/patients/<pseudonym>/live" -> "patients". Only the
    segment after /ws/ is kept, so a pseudonym or ward code never becomes a label."""
    parts = path.split("/")
    return _word(parts[2]) if len(parts) > 2 and parts[1] == "ws" else "other"


ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[Any]]


class WebSocketGauge:
    """ASGI middleware counting WebSockets from their accept to the end of the connection.

    A Channels consumer's application call returns once the connection is over (disconnect
    received, StopConsumer), so the gauge goes down in `finally` however the socket ended; a
    handshake refused before accept is never counted."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> Any:
        route = websocket_route(str(scope.get("path", "")))
        accepted = False

        async def counting_send(message: Any) -> None:
            nonlocal accepted
            await send(message)
            if message.get("type") == "websocket.accept" and not accepted:
                accepted = True
                websocket_opened(route)

        try:
            return await self.app(scope, receive, counting_send)
        finally:
            if accepted:
                websocket_closed(route)


def current(metric: Collector, **labels: str) -> float:
    """This process's own value of one series of a metric above (a counter's `_total`, a
    histogram's `_count`), whatever the mode: for tests and benchmarks."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.labels == labels and sample.name.endswith(("_total", "_count", family.name)):
                return float(sample.value)
    return 0.0


# ---- multiprocess mode ---------------------------------------------------------------------

# prometheus_client's multiprocess module is untyped; these are the signatures used here.
_mark_process_dead = cast(Callable[[int, str], None], multiprocess.mark_process_dead)
_MultiProcessCollector = cast(Callable[[None, str], Collector], multiprocess.MultiProcessCollector)
_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def forget_dead_processes(directory: str) -> list[int]:
    """Remove the live-gauge files of processes that are gone (a SIGKILL or OOM kill skips the
    `atexit` below); counter and histogram files stay, their counts belong in the totals."""
    dead = sorted(
        {
            int(match.group(1))
            for entry in os.listdir(directory)
            if (match := _LIVE_FILE.fullmatch(entry)) and not _alive(int(match.group(1)))
        }
    )
    for pid in dead:
        _mark_process_dead(pid, directory)
    return dead


def _mark_this_process_dead() -> None:
    _mark_process_dead(os.getpid(), MULTIPROC_DIR)


class _ThisProcess(Collector):
    """What this process contributes to the page (see the module docstring)."""

    def collect(self) -> Iterator[Metric]:
        if MULTIPROC_DIR:
            forget_dead_processes(MULTIPROC_DIR)
            yield from _MultiProcessCollector(None, MULTIPROC_DIR).collect()
        else:
            for metric in PERFUSE_METRICS:
                yield from metric.collect()
        for collector in RUNTIME_COLLECTORS:
            yield from collector.collect()

    def describe(self) -> list[Metric]:
        return []  # unchecked names: registering must not collect (and scan the directory)


def this_process() -> Collector:
    return _ThisProcess()


def scrape_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry for one scrape: this process's metrics, then `collectors` in order."""
    registry = CollectorRegistry()
    registry.register(this_process())
    for collector in collectors:
        registry.register(collector)
    return registry


if MULTIPROC_DIR:
    if not Path(MULTIPROC_DIR).is_dir():
        raise ImproperlyConfigured(f"PROMETHEUS_MULTIPROC_DIR={MULTIPROC_DIR} is not a directory")
    atexit.register(_mark_this_process_dead)
    MQTT_BRIDGES_SUBSCRIBED.set(0)
