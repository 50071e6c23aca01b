"""Three `run_engine` processes share the stream; one is SIGKILLed mid-stream and the two others
take its partitions over. In effect nothing changes: the rollups equal the raw counts per bucket,
the HL7 outbox partials equal them too and were all closed by the timers (whose owner may be the
victim), and every patient's alarms are those a single engine (run in the test's process)
raises over the same input. A
sampler watches pg_locks all along: no partition ever has two owners."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction
from django.test import override_settings

from alerts.models import Alarm
from alerts.services import rule_ensure_ward_default
from config.live import publish_flush
from telemetry.engine import PARTITION_LOCK_CLASS, Engine, load_processors
from telemetry.models import Device, Patient
from telemetry.services import patient_admit
from tests import factories
from tests.process_support import WAIT, Managed
from tests.readings import Row, insert_readings

pytestmark = pytest.mark.django_db(transaction=True)

P = 16
PATIENTS = 8  # per run
SECONDS = 160  # of readings per patient, one a second
PER_BATCH = 8  # readings per ingest transaction
ORU_ENV = {"PERFUSE_HL7_ORU_TARGET": "127.0.0.1:9"}  # the engine fills the outbox; nothing sends it here

_OWNERS_SQL = """
    SELECT a.application_name, l.objid::int FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.classid = %s::oid AND l.objsubid = 2 AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def _conninfo() -> dict[str, Any]:
    params = connection.get_connection_params()
    return {k: v for k, v in params.items() if k not in {"cursor_factory", "context"} and v not in (None, "")}


def _env(name: str) -> dict[str, str]:
    s = connection.settings_dict
    return {
        **os.environ,
        **ORU_ENV,
        "DATABASE_URL": f"postgres://{s['USER']}:{s['PASSWORD']}@{s['HOST']}:{s['PORT']}/{s['NAME']}",
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "PERFUSE_ENGINE_PARTITIONS": str(P),
        "PGAPPNAME": name,  # libpq: shows in pg_stat_activity, so the test knows whose lock is whose
    }


class Sampler:
    """Polls the partition owners; fails the test if a partition ever has two."""

    def __init__(self) -> None:
        self.samples = 0
        self.doubles: list[dict[str, list[str]]] = []
        self.latest: dict[int, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(**_conninfo(), autocommit=True) as conn:
            while not self.stop.is_set():
                owners: dict[int, list[str]] = defaultdict(list)
                for name, partition in conn.execute(_OWNERS_SQL, [PARTITION_LOCK_CLASS]).fetchall():
                    owners[partition].append(name)
                self.doubles += [{str(p): names} for p, names in owners.items() if len(names) > 1]
                self.latest = {p: names[0] for p, names in owners.items()}
                self.samples += 1
                self.stop.wait(0.02)

    def wait(self, predicate: Any, what: str, timeout: float = WAIT) -> float:
        started = time.monotonic()
        while not predicate(dict(self.latest)):
            assert time.monotonic() - started < timeout, f"{what}: owners {self.latest}"
            time.sleep(0.02)
        return time.monotonic() - started


def _patients(prefix: str, admitted: dt.datetime) -> list[tuple[Patient, Device]]:
    ward = factories.ward()
    rule_ensure_ward_default(ward=ward)
    made = []
    for i in range(PATIENTS):
        dev = factories.device(ward.code)
        patient_admit(pseudonym=f"{prefix}-{i}", ward_code=ward.code, device_id=dev.device_id, at=admitted)
        made.append((Patient.objects.get(pseudonym=f"{prefix}-{i}"), Device.objects.get(device_id=dev.device_id)))
    publish_flush()
    return made


def _value(i: int, t: int) -> float:
    """One episode per patient: a 50 s fall to 30 % (low) or a 20 s one to 20 % (critical)."""
    onset = 60 + 5 * i
    if i % 2 == 0:
        return 30.0 if onset <= t < onset + 50 else 62.0
    return 20.0 if onset <= t < onset + 20 else 62.0


def _batches(made: list[tuple[Patient, Device]], start: dt.datetime) -> list[list[Row]]:
    """The stream, interleaved as devices send it: batch k of every device, then batch k + 1."""
    out = []
    for k in range(SECONDS // PER_BATCH):
        for i, (patient, device) in enumerate(made):
            out.append(
                [
                    Row(device.pk, patient.pk, "tissue_o2", t + 1, start + dt.timedelta(seconds=t), _value(i, t), 0.9)
                    for t in range(k * PER_BATCH, (k + 1) * PER_BATCH)
                ]
            )
    return out


def _commit(batch: list[Row]) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        insert_readings(cursor, batch)


def _settled(patients: list[Patient]) -> bool:
    """Every partition past the last ingest transaction, every outbox interval closed, and the
    no-data timer done for these patients (their devices never report a sample time)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT min(position) FROM telemetry_enginecursor WHERE name LIKE %s) "
            "> (SELECT max(txid) FROM telemetry_ingest_log), "
            "NOT EXISTS (SELECT 1 FROM telemetry_orupartial WHERE n > sent_n)",
            [f"engine:%/{P}"],
        )
        caught_up, closed = cursor.fetchone()
    no_data = Alarm.objects.filter(patient__in=patients, kind="no_data").count()
    return bool(caught_up and closed and no_data == len(patients))


def _wait_settled(patients: list[Patient], logs: list[Path]) -> None:
    deadline = time.monotonic() + WAIT
    while not _settled(patients):
        assert time.monotonic() < deadline, "\n".join(p.read_text()[-3000:] for p in logs)
        time.sleep(0.1)


def _alarms(patients: list[Patient]) -> list[list[tuple[str, dt.datetime]]]:
    return [
        sorted(Alarm.objects.filter(patient=p).values_list("kind", "condition_started_at").order_by()) for p in patients
    ]


def _buckets_match_raw() -> None:
    with connection.cursor() as cursor:
        for resolution, width in (("1m", "1 minute"), ("1h", "1 hour")):
            cursor.execute(
                f"SELECT patient_id, device_id, metric, bucket, n FROM telemetry_rollup_{resolution} "
                "ORDER BY 1, 2, 3, 4"
            )
            rolled = cursor.fetchall()
            cursor.execute(
                "SELECT patient_id, device_id, metric, date_bin(%s::interval, sample_time, "
                "'2000-01-01 00:00:00+00'), count(*) FROM telemetry_reading GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
                [width],
            )
            assert rolled == cursor.fetchall() and rolled
        cursor.execute(
            "SELECT patient_id, interval_start, metric, device_id, n FROM telemetry_orupartial ORDER BY 1, 2, 3, 4"
        )
        partials = cursor.fetchall()
        cursor.execute(
            "SELECT patient_id, date_bin('1 minute', sample_time, '2000-01-01 00:00:00+00'), metric, device_id, "
            "count(*) FROM telemetry_reading GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        )
        assert partials == cursor.fetchall() and partials


def test_three_engines_one_killed_mid_stream_match_a_single_engine(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    admitted, start = now - dt.timedelta(days=2), now - dt.timedelta(minutes=20)
    shared, solo = _patients("pshare", admitted), _patients("psolo", admitted)
    sampler = Sampler()
    sampler.thread.start()
    names = [f"perfuse-engine-{n}" for n in range(3)]
    logs = [tmp_path / f"{name}.log" for name in names]
    engines = [
        Managed(["run_engine", "--interval", "0.05"], env=_env(name), log=log)
        for name, log in zip(names, logs, strict=True)
    ]
    try:
        for engine in engines:
            engine.start()
        sampler.wait(
            lambda owners: len(owners) == P and len(set(owners.values())) == 3, "three engines share the partitions"
        )
        stream = _batches(shared, start)
        half = len(stream) // 2
        for batch in stream[:half]:
            _commit(batch)
        victim = names[0]
        held = sorted(p for p, name in sampler.latest.items() if name == victim)
        assert held
        engines[0].kill()  # SIGKILL, mid-stream: its batch in flight rolls back with its backend
        takeover = sampler.wait(
            lambda owners: len(owners) == P and victim not in owners.values(), "the survivors take over", timeout=60
        )
        for batch in stream[half:]:
            _commit(batch)
        _wait_settled([p for p, _ in shared], logs)
        for engine in engines[1:]:
            engine.terminate()
        assert all(e.process is not None and e.process.returncode == 0 for e in engines[1:])

        # The reference: one engine alone, in this process (the same loop `run_engine` runs).
        with override_settings(**ORU_ENV):
            single = Engine(load_processors(), interval=0.05)
            worker = threading.Thread(target=single.run, daemon=True)
            worker.start()
            try:
                for batch in _batches(solo, start):
                    _commit(batch)
                _wait_settled([p for p, _ in solo], [])
                assert len(single.owned) == P and single.timer_owner
            finally:
                single.stop()
                worker.join(timeout=WAIT)
    finally:
        for engine in engines:
            engine.terminate()
        sampler.stop.set()
        sampler.thread.join(timeout=WAIT)

    assert sampler.doubles == [] and sampler.samples > 10
    assert takeover < 60, takeover  # an upper bound for a loaded machine; bench/engine_takeover.py measures it
    _buckets_match_raw()
    expected = _alarms([p for p, _ in solo])
    assert _alarms([p for p, _ in shared]) == expected
    kinds = {kind for alarms in expected for kind, _ in alarms}
    assert {"low", "critical_low", "no_data"} <= kinds
    assert Alarm.objects.count() == 2 * sum(len(a) for a in expected)
