"""The engine's partitions in one process: disjoint owners process every reading once, the
partition of a reading is its patient's (its device's while unassigned), and the cursors move
from the single-engine cursor (or another partition count) without skipping or repeating work."""

from __future__ import annotations

import datetime as dt
import importlib
import threading
import time
from collections import Counter
from types import SimpleNamespace

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.test import override_settings

from telemetry import engine as engine_module
from telemetry.engine import (
    ADVISORY_LOCK_KEY,
    PARTITION_LOCK_CLASS,
    Engine,
    ReadingRow,
    RollupProcessor,
    engine_batch,
    partition_cursors_ensure,
)
from telemetry.selectors import engine_cursor_name, engine_lag, engine_positions, partition_of
from tests.readings import Row, insert_readings

pytestmark = pytest.mark.django_db(transaction=True)

NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
P = 16


class Recorder:
    def __init__(self) -> None:
        self.seen: Counter[tuple[int, str, int]] = Counter()
        self.rows: list[ReadingRow] = []
        self.ticks = 0
        self.local_ticks = 0
        self.forgotten = 0

    def process(self, rows: list[ReadingRow], *, now: dt.datetime) -> None:
        keys = [(r.device_id, r.metric, r.seq) for r in rows]
        kept = list(rows)
        transaction.on_commit(lambda: (self.seen.update(keys), self.rows.extend(kept)))

    def tick(self, *, now: dt.datetime) -> None:
        self.ticks += 1

    def tick_local(self, *, now: dt.datetime) -> None:
        self.local_ticks += 1

    def forget(self) -> None:
        self.forgotten += 1


def _conninfo() -> dict[str, object]:
    params = connection.get_connection_params()
    return {k: v for k, v in params.items() if k not in {"cursor_factory", "context"} and v not in (None, "")}


def _stream(devices: range, *, patient: bool = True, first_seq: int = 1, count: int = 20) -> int:
    """One transaction per device, `count` readings each; returns how many were stored."""
    stored = 0
    for device in devices:
        rows = [
            Row(
                device,
                device * 7 if patient else None,
                "tissue_o2",
                first_seq + i,
                NOW + dt.timedelta(seconds=i),
                60.0,
                0.9,
            )
            for i in range(count)
        ]
        with transaction.atomic(), connection.cursor() as cursor:
            stored += insert_readings(cursor, rows)
    return stored


def _drain(processors: list[Recorder | RollupProcessor], partitions: list[int] | None) -> None:
    while not engine_batch(processors, now=NOW, limit=3, partitions=partitions).caught_up:
        pass


def _cursors() -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, position FROM telemetry_enginecursor ORDER BY name")
        return dict(cursor.fetchall())


def test_disjoint_owners_process_each_reading_exactly_once_by_patient_partition() -> None:
    stored = _stream(range(1, 25)) + _stream(range(25, 31), patient=False)
    low, high = Recorder(), Recorder()
    _drain([RollupProcessor(), low], list(range(0, 8)))
    stored += _stream(range(1, 25), first_seq=1000)  # more after the first owner caught up
    _drain([RollupProcessor(), high], list(range(8, 16)))
    _drain([RollupProcessor(), low], list(range(0, 8)))
    assert set(low.seen.values()) == set(high.seen.values()) == {1}
    assert not set(low.seen) & set(high.seen)
    assert sum(low.seen.values()) + sum(high.seen.values()) == stored == 54 * 20
    for recorder, owned in ((low, range(0, 8)), (high, range(8, 16))):
        assert recorder.rows and {
            partition_of(patient_id=r.patient_id, device_id=r.device_id, partitions=P) for r in recorder.rows
        } <= set(owned)
    with connection.cursor() as cursor:
        cursor.execute("SELECT sum(n) FROM telemetry_rollup_1m")
        assert cursor.fetchone()[0] == stored
    assert engine_lag().transactions == 0


def test_a_partition_taken_over_behind_the_others_catches_up_without_repeats() -> None:
    _stream(range(1, 17))
    first = Recorder()
    _drain([first], [p for p in range(P) if p != 3])  # partition 3's owner died before its first batch
    _stream(range(1, 17), first_seq=500)
    second = Recorder()
    _drain([second], list(range(P)))  # the survivor owns everything now
    both = first.seen + second.seen
    assert set(both.values()) == {1} and sum(both.values()) == 32 * 20
    assert {partition_of(patient_id=r.patient_id, device_id=r.device_id, partitions=P) for r in second.rows} == set(
        range(P)
    )
    positions = engine_positions(connection.cursor())
    assert len(set(positions)) == 1  # every partition at the same horizon again


def test_the_single_engine_cursor_becomes_one_cursor_per_partition_at_its_position() -> None:
    _stream(range(1, 9))
    with connection.cursor() as cursor:
        cursor.execute("SELECT max(txid) + 1 FROM telemetry_ingest_log")
        (done,) = cursor.fetchone()
        cursor.execute(
            "INSERT INTO telemetry_enginecursor (name, position, updated_at) VALUES ('engine', %s, now())", [done]
        )
    _stream(range(1, 9), first_seq=100)  # what the old engine had not processed
    recorder = Recorder()
    _drain([recorder], None)
    assert sum(recorder.seen.values()) == 8 * 20 and {seq for _, _, seq in recorder.seen} == set(range(100, 120))
    cursors = _cursors()
    assert "engine" not in cursors and set(cursors) == {engine_cursor_name(p, P) for p in range(P)}


def test_the_migration_starts_every_partition_at_the_old_position() -> None:
    migration = importlib.import_module("telemetry.migrations.0010_engine_partition_cursors")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM telemetry_enginecursor")
        cursor.execute("INSERT INTO telemetry_enginecursor (name, position, updated_at) VALUES ('engine', 4242, now())")
    with psycopg.connect(**_conninfo(), autocommit=True) as old_engine:  # an engine of the previous version
        old_engine.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        with pytest.raises(RuntimeError, match="stop every run_engine"):
            migration.forwards(None, SimpleNamespace(connection=connection))
    assert _cursors() == {"engine": 4242}
    migration.forwards(None, SimpleNamespace(connection=connection))
    assert _cursors() == {engine_cursor_name(p, P): 4242 for p in range(P)}
    migration.backwards(None, SimpleNamespace(connection=connection))
    assert _cursors() == {"engine": 4242}


def test_changing_the_partition_count_is_exact_or_refused() -> None:
    _stream(range(1, 5))
    _drain([Recorder()], list(range(0, 8)))  # half the partitions ahead, with log rows between
    with override_settings(PERFUSE_ENGINE_PARTITIONS=4), pytest.raises(ImproperlyConfigured, match="caught up"):
        engine_batch([Recorder()], now=NOW)
    assert set(_cursors()) == {engine_cursor_name(p, P) for p in range(P)}  # refused: nothing changed
    _drain([Recorder()], list(range(8, 16)))  # every partition caught up: the old positions agree
    recorder = Recorder()
    with override_settings(PERFUSE_ENGINE_PARTITIONS=4):
        with transaction.atomic(), connection.cursor() as cursor:
            partition_cursors_ensure(cursor, 4)
        _stream(range(1, 5), first_seq=300)
        _drain([recorder], None)
        assert set(_cursors()) == {engine_cursor_name(p, 4) for p in range(4)}
    assert sum(recorder.seen.values()) == 4 * 20 and min(seq for _, _, seq in recorder.seen) == 300


def test_two_engines_in_one_process_split_the_partitions_and_one_runs_the_timers(monkeypatch) -> None:
    monkeypatch.setattr(engine_module, "REBALANCE_EVERY_SECONDS", 0.05)
    recorders = [Recorder(), Recorder()]
    engines = [Engine([r], interval=0.05) for r in recorders]
    threads = [threading.Thread(target=e.run, daemon=True) for e in engines]
    threads[0].start()
    try:
        deadline = time.monotonic() + 30
        while len(engines[0].owned) < P:  # alone: every partition
            assert time.monotonic() < deadline
            time.sleep(0.02)
        threads[1].start()
        while sorted(len(e.owned) for e in engines) != [8, 8]:
            assert time.monotonic() < deadline, [sorted(e.owned) for e in engines]
            time.sleep(0.02)
        stored = _stream(range(1, 33))
        while sum(sum(r.seen.values()) for r in recorders) < stored:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid AND objsubid = 2 "
                "AND granted",
                [PARTITION_LOCK_CLASS],
            )
            assert cursor.fetchone()[0] == P
    finally:
        for e in engines:
            e.stop()
        for t in threads:
            t.join(timeout=30)
    assert not set(recorders[0].seen) & set(recorders[1].seen)
    assert sum(sum(r.seen.values()) for r in recorders) == stored
    assert sorted(e.timer_owner for e in engines) == [False, True]
    timers, other = sorted(recorders, key=lambda r: r.ticks, reverse=True)
    assert timers.ticks > 0 and other.ticks == 0 and other.local_ticks > 0
    assert recorders[0].forgotten >= 1 and engines[0].timer_owner  # the first gave half its partitions up
