"""The stream engine's watermark: restart-safe, exactly once in effect, nothing skipped."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction

from telemetry.engine import ADVISORY_LOCK_KEY, ReadingRow, RollupProcessor, engine_batch, load_processors
from tests.readings import Row, insert_readings
from tests.readings import signal as make_signal

pytestmark = pytest.mark.django_db(transaction=True)

NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
T0 = NOW - dt.timedelta(hours=1)


class Recorder:
    """Counts the readings whose processing committed (what the engine did "in effect")."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: Counter[tuple[int, str, int]] = Counter()

    def process(self, rows: list[ReadingRow], *, now: dt.datetime) -> None:
        keys = [(r.device_id, r.metric, r.seq) for r in rows]
        transaction.on_commit(lambda: self.seen.update(keys))
        if self.fail:
            raise RuntimeError("processor crashed mid-batch")

    def tick(self, *, now: dt.datetime) -> None:
        return None


def _commit(rows: list[Row]) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        insert_readings(cursor, rows)


def _batches(device_id: int, n_batches: int, size: int = 50, first_seq: int = 1) -> list[list[Row]]:
    rows = make_signal(
        device_id=device_id,
        patient_id=device_id * 10,
        start=T0 + dt.timedelta(seconds=first_seq),
        count=n_batches * size,
        step=dt.timedelta(seconds=1),
        seed=device_id,
        first_seq=first_seq,
    )
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _rolled_up_total() -> int:
    with connection.cursor() as cursor:
        # One statement, one snapshot: a running engine may commit between two.
        cursor.execute(
            "SELECT (SELECT coalesce(sum(n), 0) FROM telemetry_rollup_1m), "
            "(SELECT coalesce(sum(n), 0) FROM telemetry_rollup_1h)"
        )
        minute, hour = cursor.fetchone()
    assert minute == hour
    return int(minute)


def test_restart_mid_stream_processes_every_reading_exactly_once() -> None:
    for batch in _batches(1, 5):
        _commit(batch)

    first = Recorder()
    progressed = engine_batch([RollupProcessor(), first], now=NOW, limit=2)
    assert (progressed.transactions, progressed.caught_up) == (2, False)

    # The engine crashes in the middle of the next batch: its rollup writes roll back with it.
    crashing = Recorder(fail=True)
    with pytest.raises(RuntimeError):
        engine_batch([RollupProcessor(), crashing], now=NOW, limit=2)
    assert crashing.seen == Counter()
    assert _rolled_up_total() == 100

    # A new engine process (fresh processors, cursor from the database) takes over.
    for batch in _batches(2, 2):
        _commit(batch)
    second = Recorder()
    while not engine_batch([RollupProcessor(), second], now=NOW, limit=2).caught_up:
        pass

    seen = first.seen + second.seen
    assert len(seen) == 7 * 50
    assert set(seen.values()) == {1}
    assert _rolled_up_total() == 7 * 50
    # Nothing new: another loop processes nothing.
    again = Recorder()
    assert engine_batch([RollupProcessor(), again], now=NOW).readings == 0


def _test_db_conninfo() -> dict[str, Any]:
    params = connection.get_connection_params()
    return {k: v for k, v in params.items() if k not in {"cursor_factory", "context"} and v not in (None, "")}


def test_transaction_in_flight_at_the_horizon_is_processed_when_it_commits() -> None:
    (early,) = _batches(3, 1)
    (later,) = _batches(4, 1)
    with psycopg.connect(**_test_db_conninfo()) as slow:
        # A slow ingest request: it got its transaction id first and commits last.
        insert_readings(slow.cursor(), early)
        _commit(later)
        recorder = Recorder()
        batch = engine_batch([RollupProcessor(), recorder], now=NOW)
        # Its id holds the horizon back: the later, committed transaction waits too.
        assert batch.readings == 0
        assert not recorder.seen
        slow.commit()
    batch = engine_batch([RollupProcessor(), recorder], now=NOW)
    assert batch.readings == 100
    assert len(recorder.seen) == 100 and set(recorder.seen.values()) == {1}
    assert _rolled_up_total() == 100


def test_unknown_processor_is_a_startup_error() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"alerts\.engine\.NoSuchProcessor"):
        load_processors(["telemetry.engine.RollupProcessor", "alerts.engine.NoSuchProcessor"])


def _database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}:{s['PASSWORD']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


class _Lines:
    """Collects a subprocess's stderr lines in a thread so the test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        stream = proc.stderr
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True)
        self.thread.start()

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, f"{text!r} not logged; got {self.lines}"
            time.sleep(0.05)


def test_run_engine_waits_for_the_owner_processes_and_stops_cleanly_on_sigterm() -> None:
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "PERFUSE_ENGINE_PROCESSORS": "telemetry.engine.RollupProcessor",
    }
    with psycopg.connect(**_test_db_conninfo(), autocommit=True) as owner:
        owner.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])  # another engine runs
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "run_engine", "--interval", "0.05"],
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        try:
            lines = _Lines(proc)
            lines.wait_for("another engine holds the stream")
            (batch,) = _batches(5, 1)
            _commit(batch)
            assert _rolled_up_total() == 0  # the waiting engine does not process
            owner.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])
            lines.wait_for("engine started")
            deadline = time.monotonic() + 20
            while _rolled_up_total() < 50:
                assert time.monotonic() < deadline, lines.lines
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            lines.wait_for("engine stopped")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert _rolled_up_total() == 50


class Flaky(Recorder):
    """Fails its first `failures` batches, as a processor bug on a poison batch would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.ticks = 0

    def process(self, rows: list[ReadingRow], *, now: dt.datetime) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("processor bug")
        super().process(rows, now=now)

    def tick(self, *, now: dt.datetime) -> None:
        self.ticks += 1


def test_a_failing_processor_does_not_stop_the_engine_or_its_timers() -> None:
    from telemetry.engine import Engine

    flaky = Flaky(failures=2)
    engine = Engine([flaky], interval=0.01)
    (batch,) = _batches(7, 1)
    _commit(batch)
    worker = threading.Thread(target=engine.run)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while sum(flaky.seen.values()) < 50:
            assert worker.is_alive(), "the engine stopped on a processor exception"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        engine.stop_event.set()
        worker.join(timeout=20)
    assert flaky.failures == 0
    assert flaky.ticks >= 3  # ticks ran during the failed batches too
    assert set(flaky.seen.values()) == {1}  # each reading processed once, after the failures
