"""Read replicas (issue 12.5, docs/replica.md) against real servers: a private primary and a hot
standby made from it with `pg_basebackup -R`, streaming over loopback.

Django runs in a child process (tests/config/replica_driver.py) configured like a deployment,
DATABASE_URL and DATABASE_REPLICA_URL in its environment. The proof of which server answered
is the data itself: with the standby's replay paused, a reading committed since is missing from
what the replica serves and present in what the primary serves. The driver also reports each
alias's SQL and `pg_is_in_recovery()` on its connection.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.conf import settings

from tests.process_support import ROOT, WAIT, Cluster, cluster_started, manage, replica_started

WARD, DEVICE, PATIENT = "icu-r", "lumee-r1", "rp-one"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


class Driver:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        with log.open("ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.config.replica_driver"],
                env=env,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.log = log

    def __call__(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the driver died:\n{self.log.read_text()[-3000:]}"
        answer: dict[str, Any] = json.loads(line)
        assert "error" not in answer, f"{op} {args}: {answer['error']}"
        return answer

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=WAIT)


@dataclass
class Servers:
    primary: Cluster
    standby: Cluster
    driver: Driver


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("replica")
    with cluster_started() as primary:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": primary.url,
            "REDIS_URL": settings.REDIS_URL,
            "PERFUSE_AUDIT_ANCHOR": (tmp / "anchor.log").as_uri(),
        }
        manage(["migrate", "--noinput"], env=env)
        with replica_started(primary) as standby:
            env |= {
                "DATABASE_REPLICA_URL": standby.url,
                "PERFUSE_REPLICA_RETRY_SECONDS": "1",
                "PERFUSE_REPLICA_MAX_LAG_SECONDS": "",  # no bound: a paused standby keeps answering
                "PERFUSE_REPLICA_CATCH_UP_SECONDS": "0.2",
            }
            driver = Driver(env, tmp / "driver.log")
            try:
                driver("setup", ward=WARD, pseudonym=PATIENT, device=DEVICE)
                yield Servers(primary, standby, driver)
            finally:
                driver.close()


def _caught_up(servers: Servers) -> None:
    """Wait until the standby has replayed everything the primary wrote so far."""
    ((lsn,),) = servers.primary.query("SELECT pg_current_wal_lsn()::text")
    deadline = time.monotonic() + WAIT
    while not servers.standby.query(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")[0][0]:
        assert time.monotonic() < deadline, "the standby did not replay the primary's WAL"
        time.sleep(0.02)


def _insert(servers: Servers, seq: int, *, device: str = DEVICE, pseudonym: str = PATIENT) -> None:
    t = (NOW - dt.timedelta(minutes=30) + dt.timedelta(seconds=seq)).isoformat()
    assert servers.driver("insert", device=device, pseudonym=pseudonym, seq=seq, t=t, value=60.0 + seq)["stored"] == 1


def _span() -> dict[str, str]:
    return {"start": (NOW - dt.timedelta(hours=1)).isoformat(), "end": (NOW + dt.timedelta(minutes=5)).isoformat()}


def _series(servers: Servers, pseudonym: str = PATIENT) -> tuple[list[float], dict[str, Any]]:
    answer = servers.driver("get", who="clinician", url=f"/api/v1/patients/{pseudonym}/series?{urlencode(_span())}")
    assert answer["status"] == 200, answer["body"]
    return [p["value"] for p in json.loads(answer["body"])["points"]], answer


def _fhir_total(servers: Servers) -> tuple[int, dict[str, Any]]:
    span = _span()
    query = urlencode([("patient", PATIENT), ("date", f"ge{span['start']}"), ("date", f"lt{span['end']}")])
    answer = servers.driver("get", who="clinician", url=f"/fhir/R4/Observation?{query}")
    assert answer["status"] == 200, answer["body"]
    return int(json.loads(answer["body"])["total"]), answer


def _touches(answer: dict[str, Any], alias: str, table: str) -> bool:
    return any(table in sql for sql in answer["sql"][alias])


def _reads_readings(answer: dict[str, Any], alias: str) -> bool:
    return any("telemetry_reading" in sql and not sql.lstrip().startswith("INSERT") for sql in answer["sql"][alias])


def _writes(answer: dict[str, Any], alias: str) -> bool:
    return any(sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")) for sql in answer["sql"][alias])


def test_history_and_fhir_searches_are_answered_by_the_replica_and_access_by_the_primary(servers: Servers) -> None:
    _insert(servers, 1)
    _caught_up(servers)
    values, answer = _series(servers)
    assert values == [61.0]
    assert answer["in_recovery"] == {"default": False, "replica": True}
    assert _reads_readings(answer, "replica") and not _reads_readings(answer, "default")
    # The access decision and its audit event were the primary's; the replica only read.
    assert _touches(answer, "default", "audit_auditevent") and _writes(answer, "default")
    assert not _writes(answer, "replica")

    servers.standby.query("SELECT pg_wal_replay_pause()")
    try:
        _insert(servers, 2)
        # Committed on the primary, not replayed on the standby: what the history API and the
        # FHIR search serve is the replica's view.
        values, answer = _series(servers)
        assert values == [61.0]
        total, answer = _fhir_total(servers)
        assert total == 1 and _reads_readings(answer, "replica") and not _reads_readings(answer, "default")

        # A patient admitted since the pause: the access check sees it (primary), the history of
        # it is the replica's (nothing yet), and the read's audit event is on the primary only.
        servers.driver("admit", ward=WARD, pseudonym="rp-two", device="lumee-r2")
        _insert(servers, 3, device="lumee-r2", pseudonym="rp-two")
        values, answer = _series(servers, "rp-two")
        assert values == []
        audited = "SELECT count(*) FROM audit_auditevent WHERE subject = 'rp-two' AND action = 'series.read'"
        assert servers.primary.query(audited) == [(1,)]
        assert servers.standby.query(audited) == [(0,)]

        # Further behind than PERFUSE_REPLICA_MAX_LAG_SECONDS: the primary answers.
        servers.driver("configure", PERFUSE_REPLICA_MAX_LAG_SECONDS=0.0)
        values, answer = _series(servers)
        assert values == [61.0, 62.0]
        assert _reads_readings(answer, "default") and not _reads_readings(answer, "replica")
        servers.driver("configure", PERFUSE_REPLICA_MAX_LAG_SECONDS=None)

        # An audit export reads the replica only once it holds the export's own audit event:
        # paused, it does not, and the primary serves the export.
        answer = servers.driver("get", who="officer", url="/audit/export.csv")
        assert answer["status"] == 200
        assert _exported_ids(answer)[-1] == _newest_event(servers.primary)
        assert not _lists_events(answer, "replica") and _lists_events(answer, "default")

        # A bulk export's readings come from the replica only once it holds the job: paused, it
        # does not, and the engine reads them from the primary (all three readings).
        answer = servers.driver("bulk_export", ward=WARD, replayed=False)
        assert answer["counts"]["Observation"] == 3
        assert not _reads_readings(answer, "replica")

        # The research cohort is the replica's (one reading of one patient so far), the export
        # and its audit events are written on the primary.
        servers.driver("configure", PERFUSE_RESEARCH_MIN_PATIENTS=1)
        answer = servers.driver("research", ward=WARD)
        assert (answer["rows"], answer["patients"]) == (1, 1)
        assert _reads_readings(answer, "replica") and not _writes(answer, "replica") and _writes(answer, "default")
    finally:
        servers.standby.query("SELECT pg_wal_replay_resume()")
    _caught_up(servers)
    values, answer = _series(servers)
    assert values == [61.0, 62.0] and _reads_readings(answer, "replica")
    answer = servers.driver("get", who="officer", url="/audit/export.csv")
    assert _lists_events(answer, "replica") and not _lists_events(answer, "default")
    assert _exported_ids(answer)[-1] == _newest_event(servers.primary)
    answer = servers.driver("bulk_export", ward=WARD, replayed=True)
    assert answer["counts"]["Observation"] == 3
    assert _reads_readings(answer, "replica") and not _writes(answer, "replica")
    answer = servers.driver("research", ward=WARD)
    assert (answer["rows"], answer["patients"]) == (3, 2) and _reads_readings(answer, "replica")


def _newest_event(cluster: Cluster) -> int:
    ((newest,),) = cluster.query("SELECT max(id) FROM audit_auditevent")
    return int(newest)  # type: ignore[call-overload]


def _exported_ids(answer: dict[str, Any]) -> list[int]:
    return [int(line.split(",", 1)[0]) for line in answer["body"].splitlines()[1:]]


def _lists_events(answer: dict[str, Any], alias: str) -> bool:
    """Whether the export's rows were read on `alias` (neither the replica's look-up of one event
    by id, which decides whether it may answer, nor the audit write's look-up of the chain head,
    newest first, is a listing)."""
    return any('FROM "audit_auditevent" ORDER BY "audit_auditevent"."id" ASC' in sql for sql in answer["sql"][alias])


def test_a_replica_connection_lost_midway_through_a_read_is_answered_by_the_primary(servers: Servers) -> None:
    span = urlencode(_span())
    answer = servers.driver("get", who="clinician", url=f"/api/v1/patients/{PATIENT}/series?{span}", sabotage=True)
    assert answer["status"] == 200
    assert [p["value"] for p in json.loads(answer["body"])["points"]] == [61.0, 62.0]
    # Tried on the replica (its connection died under the read), answered by the primary.
    assert _reads_readings(answer, "replica") and _reads_readings(answer, "default")
    assert servers.driver("state")["down"]
    _picked_again(servers)


def _picked_again(servers: Servers) -> None:
    """Wait out PERFUSE_REPLICA_RETRY_SECONDS until the replica is chosen again."""
    deadline = time.monotonic() + WAIT
    while servers.driver("state")["pick"] != "replica":
        assert time.monotonic() < deadline, "the replica was not used again"
        time.sleep(0.1)


def test_a_stopped_replica_falls_back_to_the_primary_and_is_used_again_once_back(servers: Servers) -> None:
    servers.standby.stop()
    try:
        _insert(servers, 4)
        values, answer = _series(servers)
        assert values == [61.0, 62.0, 64.0]
        assert _reads_readings(answer, "default") and answer["in_recovery"]["replica"] is None
        assert servers.driver("state")["down"]
        # Remembered: the next reads do not try the dead replica at all.
        total, answer = _fhir_total(servers)
        assert total == 3 and answer["sql"]["replica"] == [] and _reads_readings(answer, "default")
    finally:
        servers.standby.start()
    _picked_again(servers)
    _caught_up(servers)
    values, answer = _series(servers)
    assert values == [61.0, 62.0, 64.0] and _reads_readings(answer, "replica")


def test_a_promoted_replica_is_not_read_from(servers: Servers) -> None:
    """Out of recovery (failed over, or a URL naming another primary) it may diverge from the
    writer: passed over. Last in the module: the standby does not come back."""
    servers.standby.query("SELECT pg_promote()")
    deadline = time.monotonic() + WAIT
    while servers.standby.query("SELECT pg_is_in_recovery()") != [(False,)]:
        assert time.monotonic() < deadline, "the standby was not promoted"
        time.sleep(0.05)
    _insert(servers, 5)  # on the primary only, now that the two have parted
    values, answer = _series(servers)
    assert values == [61.0, 62.0, 64.0, 65.0] and not _reads_readings(answer, "replica")
    assert "not a standby" in servers.driver("state")["down"]
