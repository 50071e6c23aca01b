"""In-process metrics of one Daphne process, rendered in the Prometheus text format (0.0.4).

Counters, gauges and histograms live in this process's memory: each Daphne process is scraped
on its own (Prometheus sums across targets). Figures that must be the same whichever process
answers (engine lag, alarms, audit chain) are read from PostgreSQL at scrape time instead
(config/ops.py). Everything here is aggregate: no label ever carries a patient, a pseudonym, a
device id or a user — label values come from small fixed sets (status codes, rejection codes,
WebSocket route kinds).

The API other modules call:

- `ingest_observe(status=..., accepted=..., duplicates=..., rejected_codes=..., seconds=...)`
  once per ingest request (telemetry/api.py).
- `websocket_opened(route)` / `websocket_closed(route)`: called by `WebSocketGauge`
  (config/asgi.py) for every accepted WebSocket, so consumers need not call them.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import orjson

Labels = tuple[str, ...]
# Label values from code paths are fixed words; anything else is folded into "other" so a
# surprise can never grow the number of series (or carry an identifier into a label).
_WORD = re.compile(r"[a-z][a-z0-9_]{0,39}")


def _word(value: str) -> str:
    return value if _WORD.fullmatch(value) else "other"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def sample_line(name: str, labels: dict[str, str], value: float) -> str:
    if not labels:
        return f"{name} {format_value(value)}"
    inner = ",".join(f'{key}="{_escape_label(str(val))}"' for key, val in labels.items())
    return f"{name}{{{inner}}} {format_value(value)}"


def family_header(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} {kind}"]


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help_text = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[name]) for name in self.labelnames)

    def _labels(self, key: Labels) -> dict[str, str]:
        return dict(zip(self.labelnames, key, strict=True))

    def render(self) -> list[str]:
        raise NotImplementedError


class _Sum(_Metric):
    """One float per label set, added to; counters and gauges differ only in sign and naming."""

    sample_suffix = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[Labels, float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def _add(self, amount: float, labels: dict[str, str]) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        lines = family_header(self.name, self.kind, self.help_text)
        sample = f"{self.name}{self.sample_suffix}"
        lines += [sample_line(sample, self._labels(key), value) for key, value in items]
        return lines


class Counter(_Sum):
    kind = "counter"
    sample_suffix = "_total"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._add(amount, labels)


class Gauge(_Sum):
    kind = "gauge"

    def add(self, amount: float, **labels: str) -> None:
        self._add(amount, labels)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text)
        self.bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self.bounds) + 1)  # the last slot is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        slot = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))
        with self._lock:
            self._counts[slot] += 1
            self._sum += value

    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def render(self) -> list[str]:
        with self._lock:
            counts = list(self._counts)
            total_sum = self._sum
        lines = family_header(self.name, self.kind, self.help_text)
        cumulative = 0
        for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
            cumulative += count
            lines.append(sample_line(f"{self.name}_bucket", {"le": format_value(bound)}, cumulative))
        lines.append(sample_line(f"{self.name}_sum", {}, total_sum))
        lines.append(sample_line(f"{self.name}_count", {}, cumulative))
        return lines


INGEST_REQUESTS = Counter(
    "perfuse_ingest_requests", "Device ingest requests answered by this process, by HTTP status.", ["status"]
)
INGEST_READINGS = Counter(
    "perfuse_ingest_readings",
    "Readings in ingest requests answered by this process: accepted (stored) or duplicate (already stored).",
    ["outcome"],
)
INGEST_REJECTED = Counter(
    "perfuse_ingest_readings_rejected", "Readings rejected item by item, by rejection code.", ["code"]
)
# 0.15 s is the ingest p99 target (docs/benchmarks.md), so it is a bucket bound.
INGEST_SECONDS = Histogram(
    "perfuse_ingest_request_duration_seconds",
    "Time from the ingest view's start to its answer, in seconds.",
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0],
)
WEBSOCKETS_OPEN = Gauge(
    "perfuse_websocket_connections", "WebSocket connections accepted and still open, by route kind.", ["route"]
)
WEBSOCKETS_OPENED = Counter(
    "perfuse_websocket_connections_opened", "WebSocket connections accepted since start, by route kind.", ["route"]
)

PROCESS_METRICS: list[_Metric] = [
    INGEST_REQUESTS,
    INGEST_READINGS,
    INGEST_REJECTED,
    INGEST_SECONDS,
    WEBSOCKETS_OPEN,
    WEBSOCKETS_OPENED,
]


def ingest_observe(
    *, status: int, accepted: int, duplicates: int, rejected_codes: Iterable[str], seconds: float
) -> None:
    """Count one answered ingest request (any status) and its readings."""
    INGEST_REQUESTS.inc(status=str(status))
    if accepted:
        INGEST_READINGS.inc(accepted, outcome="accepted")
    if duplicates:
        INGEST_READINGS.inc(duplicates, outcome="duplicate")
    for code in rejected_codes:
        INGEST_REJECTED.inc(code=_word(code))
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
    WEBSOCKETS_OPEN.add(1, route=route)
    WEBSOCKETS_OPENED.inc(route=route)


def websocket_closed(route: str) -> None:
    WEBSOCKETS_OPEN.add(-1, route=route)


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


def render_process_metrics() -> list[str]:
    lines: list[str] = []
    for metric in PROCESS_METRICS:
        lines += metric.render()
    return lines
