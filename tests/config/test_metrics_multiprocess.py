"""`/metrics` with several processes on one host sharing PROMETHEUS_MULTIPROC_DIR, and the page
checked by Prometheus's own linter (`promtool check metrics`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from tests import factories
from tests.config.test_ops import Series, parse_exposition, value
from tests.process_support import ROOT, WAIT, daphne_spawn

PROMTOOL = "/usr/bin/promtool"  # Debian package `prometheus` (scripts/test.sh installs it)


@dataclass
class Daphne:
    process: subprocess.Popen[bytes]
    url: str

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=WAIT) as answer:  # noqa: S310 (loopback)
                return answer.status, answer.read()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read()

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        request = urllib.request.Request(  # noqa: S310 (loopback)
            self.url + path, data=body, headers={**headers, "Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as answer:  # noqa: S310
                return int(answer.status)
        except urllib.error.HTTPError as refused:
            return int(refused.code)

    def scrape(self) -> Series:
        status, page = self.get("/metrics")
        assert status == 200, page
        return parse_exposition(page.decode())[0]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # a clean exit: atexit runs
            self.process.wait(timeout=WAIT)


def _start_daphne(env: dict[str, str], log: Path) -> Daphne:
    process, port = daphne_spawn(env, log, append=True)
    return Daphne(process, f"http://127.0.0.1:{port}")


def _wait_healthy(daphne: Daphne, log: Path) -> None:
    for _ in range(int(WAIT * 10)):
        try:
            if daphne.get("/healthz")[0] == 200:
                return
        except OSError:
            pass
        assert daphne.process.poll() is None, f"daphne exited:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"daphne did not answer /healthz:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def multiproc_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="perfuse-prom-") as directory:
        yield Path(directory)


def _env(multiproc_dir: Path) -> dict[str, str]:
    db = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
    }


@pytest.fixture(scope="module")
def daphnes(django_db_setup: None, django_db_blocker: object, multiproc_dir: Path) -> Iterator[list[Daphne]]:
    """Two Daphne processes sharing one multiprocess directory, as deploy/systemd runs them."""
    log = multiproc_dir.parent / f"{multiproc_dir.name}-daphne.log"
    started = [_start_daphne(_env(multiproc_dir), log) for _ in range(2)]
    try:
        for daphne in started:
            _wait_healthy(daphne, log)
        yield started
    finally:
        for daphne in started:
            daphne.stop()
        log.unlink(missing_ok=True)


INGEST = "/api/v1/ingest/readings"


@pytest.mark.django_db(transaction=True)  # the Daphnes must see the device
def test_ingest_on_each_process_is_summed_in_one_scrape(daphnes: list[Daphne], multiproc_dir: Path) -> None:
    first, second = daphnes
    dev = factories.device()
    before = first.scrape()
    one = factories.batch_body(dev, factories.series(1, 3))
    two = factories.batch_body(dev, [*factories.series(10, 5), factories.reading(20, value=150.0)])
    assert first.post(INGEST, one, dev.sign(one)) == 200
    assert second.post(INGEST, two, dev.sign(two)) == 200
    assert second.post(INGEST, two, {}) == 401

    def grew(series: Series, name: str, **labels: str) -> float:
        return value(series, name, **labels) - value(before, name, **labels)

    for daphne in daphnes:  # whichever process answers, the page holds both processes' counts
        after = daphne.scrape()
        assert grew(after, "perfuse_ingest_requests_total", status="200") == 2
        assert grew(after, "perfuse_ingest_requests_total", status="401") == 1
        assert grew(after, "perfuse_ingest_readings_total", outcome="accepted") == 8
        assert grew(after, "perfuse_ingest_readings_rejected_total", code="out_of_range") == 1
        assert grew(after, "perfuse_ingest_request_duration_seconds_count") == 3
        assert value(after, "perfuse_database_up") == 1
        assert value(after, "process_resident_memory_bytes") > 0
    # One set of files per process (counters, histograms), named by pid.
    pids = {daphne.process.pid for daphne in daphnes}
    assert {int(f.stem.rsplit("_", 1)[1]) for f in multiproc_dir.glob("counter_*.db")} >= pids

    # A stopped process's counts stay in the totals (a counter never goes down).
    first.stop()
    assert grew(second.scrape(), "perfuse_ingest_readings_total", outcome="accepted") == 8


def test_promtool_accepts_the_page(daphnes: list[Daphne]) -> None:
    running = next(daphne for daphne in daphnes if daphne.process.poll() is None)
    assert running.post(INGEST, b"{}", {}) == 401  # some counts on the page, whatever ran before
    status, page = running.get("/metrics")
    assert status == 200
    assert b"perfuse_ingest_requests_total" in page and b"python_gc_objects_collected_total" in page
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=page, capture_output=True, check=False)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


# ---- the open-WebSocket and MQTT bridge gauges across processes (livesum) -----------------------------------

_OPEN_SOCKETS = """
import os, signal, sys
from config import metrics
for _ in range(int(sys.argv[1])):
    metrics.websocket_opened("patients")
metrics.mqtt_bridge_subscribed(sys.argv[1] == "3")  # the second holder plays an MQTT bridge
print("ready", flush=True)
signal.pause() if sys.argv[2] == "wait" else None
"""
_SCRAPE = """
import sys
from config import metrics
from prometheus_client import generate_latest
sys.stdout.write(generate_latest(metrics.scrape_registry()).decode())
"""


def _python(code: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)


def test_live_gauges_count_live_processes_only() -> None:
    with tempfile.TemporaryDirectory(prefix="perfuse-prom-ws-") as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
        holders = [_python(_OPEN_SOCKETS, str(n), "wait", env=env) for n in (2, 3)]
        exits = _python(_OPEN_SOCKETS, "4", "exit", env=env)
        try:
            for holder in [*holders, exits]:
                assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
            assert exits.wait(timeout=WAIT) == 0  # a clean exit removes its live files at once

            def scraped() -> tuple[float, float]:
                page = _python(_SCRAPE, env=env).communicate(timeout=WAIT)[0]
                series = parse_exposition(page)[0]
                return (
                    value(series, "perfuse_websocket_connections", route="patients"),
                    value(series, "perfuse_websocket_connections_opened_total", route="patients"),
                    series[("perfuse_mqtt_bridges_subscribed", frozenset())],
                )

            assert scraped() == (5, 9, 1)
            holders[1].send_signal(signal.SIGKILL)  # no atexit: the next scrape finds it dead
            holders[1].wait(timeout=WAIT)
            assert scraped() == (2, 9, 0)
            assert not list(Path(directory).glob(f"gauge_livesum_{holders[1].pid}.db"))
        finally:
            for holder in holders:
                holder.kill()
                holder.wait(timeout=WAIT)
