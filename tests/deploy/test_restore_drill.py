"""The restore drill (issue 12 item 7, docs/backup.md): back up, lose, restore to a point in time.

A private cluster archives its WAL with scripts/wal-archive.sh (configured by `scripts/backup.sh
configure`) and has the project's schema and database roles, as a deployment: migrated as the
owner role, hardened, the application connecting as perfuse_app. During a hot base backup
(`scripts/backup.sh base-backup`) real service functions write audit events and a signed,
anchored checkpoint; then a real Daphne takes signed batches of readings. The target time T is
read from the server after every answer before it came back; then more readings are
acknowledged and more is audited and anchored. `scripts/restore.sh` restores to T into a new
data directory on another port, and the drill proves: exactly the readings acknowledged before
T are there (none acknowledged after), the audit trail ends where it stood at T, the restored
chain fails against the old anchor — the restore erased an anchored checkpoint, as the verifier
must say — and verifies with `manage.py audit_verify` against the anchor cut at T (`audit_anchor_cut`).

`make restore-drill` runs this test alone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from audit.hardening import hardening_sql
from tests import factories
from tests.process_support import ROOT, WAIT, Cluster, Managed, cluster_started, daphne_spawn, free_port, manage

OWNER, APP = "perfuse_owner", "perfuse_app"  # scripts/lib.sh DB_OWNER_ROLE, DB_APP_ROLE
BATCHES, PER_BATCH = 4, 25  # readings acknowledged on each side of T

# Before T: a device and its key, a patient admitted with it, a checkpoint (anchored), and one
# more admission that only the restore's copy of the WAL holds after that checkpoint.
BEFORE = """
import datetime as dt, json
from audit.services import audit_checkpoint
from telemetry.models import Ward
from telemetry.services import device_provision
from telemetry.stays import patient_admit
Ward.objects.get_or_create(code="drill", defaults={"name": "Drill", "site": "main"})
p = device_provision(device_id="drill-1", ward_code="drill")
patient_admit(pseudonym="drill-p1", ward_code="drill", device_id="drill-1",
              at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
cp = audit_checkpoint()
patient_admit(pseudonym="drill-p2", ward_code="drill")
print(json.dumps({"key_id": p.key.key_id, "private_key_pem": p.private_key_pem, "checkpoint": cp.seq}))
"""
AFTER = """
import json
from audit.services import audit_checkpoint
from telemetry.stays import patient_admit
patient_admit(pseudonym="drill-p3", ward_code="drill")
print(json.dumps({"checkpoint": audit_checkpoint().seq}))
"""


def _run(args: list[str], *, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=WAIT * 4, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _last_json(output: str) -> Any:
    return json.loads(output.strip().splitlines()[-1])


def _finished(managed: Managed) -> Any:
    """Wait for a `manage.py` child that must succeed; the JSON it printed last."""
    output = managed.output(timeout=WAIT * 4)
    assert managed.process is not None and managed.process.returncode == 0, managed.log.read_text()[-3000:]
    return _last_json(output)


def _url(role: str, port: int) -> str:
    return f"postgres://{role}@127.0.0.1:{port}/perfuse"


def _deployed(cluster: Cluster, env: dict[str, str]) -> None:
    """The roles of scripts/lib.sh, migrated as the owner, then hardened (as scripts/run.sh does)."""
    _run(["bash", "-c", 'source scripts/lib.sh && ensure_db_roles "$1" perfuse', "_", str(cluster.port)])
    manage(["migrate", "--noinput"], env={**env, "DATABASE_URL": _url(OWNER, cluster.port)})
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(hardening_sql(app_role=APP, owner_role=OWNER))


@contextmanager
def _daphne(env: dict[str, str], log: Path) -> Iterator[str]:
    process, port = daphne_spawn(env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert process.poll() is None, f"daphne exited: {log.read_text()[-2000:]}"
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)  # noqa: S310
                break
            except OSError:
                assert time.monotonic() < deadline, f"daphne did not start: {log.read_text()[-2000:]}"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=WAIT)


def _acknowledged(url: str, device: factories.SimDevice, first_seq: int) -> set[int]:
    """Send BATCHES signed batches through the real ingest door; the seqs acknowledged (a 200
    whose `accepted` counts them: contract section 1a)."""
    acked: set[int] = set()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    for batch in range(BATCHES):
        seq = first_seq + batch * PER_BATCH
        readings = factories.series(seq, PER_BATCH, start=start + dt.timedelta(seconds=seq))
        body = factories.batch_body(device, readings)
        request = urllib.request.Request(  # noqa: S310
            url + "/api/v1/ingest/readings",
            data=body,
            headers={"Content-Type": "application/json", **device.sign(body)},
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as answer:  # noqa: S310
                status, result = answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"ingest refused: {exc.code} {exc.read()[:300]!r}") from exc
        assert status == 200 and result["accepted"] == PER_BATCH and result["rejected"] == [], result
        acked.update(r["seq"] for r in readings)
    return acked


def _wal_archived(cluster: Cluster) -> None:
    """Close the current WAL segment and wait until the archiver has it (what restore replays)."""
    ((segment,),) = cluster.query("SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + WAIT
    while True:
        ((archived, failed),) = cluster.query("SELECT last_archived_wal, failed_count FROM pg_stat_archiver")
        assert failed == 0, "archive_command failed (see the server log)"
        if archived is not None and str(archived) >= str(segment):
            return
        assert time.monotonic() < deadline, f"segment {segment} not archived"
        time.sleep(0.05)


def _check(backup_env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [str(ROOT / "scripts/backup.sh"), "check", "300"], env=backup_env, capture_output=True, text=True, check=False
    )
    return done.returncode, json.loads(done.stdout)


def _overwrite_refused(cluster: Cluster, archive: Path, backup_env: dict[str, str]) -> dict[str, Any]:
    """Plant other bytes under the name of the segment the server is writing, close it: the
    archive_command must refuse to overwrite them, and `backup.sh check` must say it fails.
    The planted file goes afterwards (the segment is after everything the restore replays)."""
    # Some WAL first: right after a switch the insert position is the very start of the next
    # segment, which pg_walfile_name names as the previous (archived) one.
    cluster.query("SELECT txid_current()")
    ((segment,),) = cluster.query("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
    planted = archive / "wal" / str(segment)
    with planted.open("xb") as out:  # never over a file the archive holds
        out.write(b"not this segment")
    cluster.query("SELECT pg_switch_wal()")
    deadline = time.monotonic() + WAIT
    while cluster.query("SELECT failed_count FROM pg_stat_archiver") == [(0,)]:
        assert time.monotonic() < deadline, "the archiver did not fail on an existing file"
        time.sleep(0.05)
    health = _check(backup_env)
    intact = planted.read_bytes() == b"not this segment"
    planted.unlink()
    return {"health": health, "intact": intact}


def _seqs(cluster: Cluster) -> set[int]:
    rows = cluster.query(
        "SELECT r.seq FROM telemetry_reading r JOIN telemetry_device d ON d.id = r.device_id "
        "WHERE d.device_id = 'drill-1'"
    )
    return {int(seq) for (seq,) in rows}  # type: ignore[call-overload]


def _audit_head(cluster: Cluster) -> tuple[int, int]:
    ((count, last),) = cluster.query("SELECT count(*), coalesce(max(id), 0) FROM audit_auditevent")
    return int(count), int(last)  # type: ignore[call-overload]


def _device(answer: dict[str, Any]) -> factories.SimDevice:
    private = serialization.load_pem_private_key(answer["private_key_pem"].encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return factories.SimDevice("drill-1", answer["key_id"], private, "drill")


@dataclass
class Drill:
    work: Path
    archive: Path
    anchor: Path
    target: str  # T, as the origin server wrote its clock
    backups: list[str]  # the base backups taken, oldest first (the second one after T)
    before: set[int]  # seqs acknowledged before T
    after: set[int]  # and after
    on_origin: set[int]  # seqs the origin stored in the end
    audit_at_target: tuple[int, int]  # (events, last id) on the origin at T
    audit_on_origin: tuple[int, int]  # and in the end
    first_signed: int  # the last event checkpoint 1 signed (the checkpoint before T)
    health: tuple[int, dict[str, Any]]  # `backup.sh check`: exit status, JSON
    overwrite: dict[str, Any]  # a planted file under the next segment's name (_overwrite_refused)
    restored: Cluster
    verified: dict[str, Any]  # _verified


def _origin_run(work: Path, origin: Cluster) -> dict[str, Any]:
    """Everything that happens on the server before it is lost; what the drill later compares."""
    archive, anchor = work / "archive", work / "anchor.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _url(APP, origin.port),
        "REDIS_URL": settings.REDIS_URL,
        "PERFUSE_AUDIT_ANCHOR": anchor.as_uri(),
    }
    backup_env = {**os.environ, "PGPORT": str(origin.port)}
    backup = [str(ROOT / "scripts/backup.sh")]
    _run([*backup, "configure", str(archive)], env=backup_env)
    origin.stop()  # archive_mode takes a restart
    origin.start()
    _deployed(origin, env)
    # A hot base backup: taken while Daphne starts and the first audited acts commit.
    base = subprocess.Popen([*backup, "base-backup", str(archive)], env=backup_env, stdout=subprocess.PIPE, text=True)
    acts = Managed(["shell", "-c", BEFORE], env=env, log=work / "before.log").start()
    with _daphne(env, work / "daphne.log") as url:
        out, _ = base.communicate(timeout=WAIT * 4)
        assert base.returncode == 0, "base backup failed"
        backups = [out.strip()]
        device = _device(_finished(acts))
        before = _acknowledged(url, device, first_seq=1)
        ((target,),) = origin.query("SELECT clock_timestamp()::text")
        audit_at_target = _audit_head(origin)
        ((first_signed,),) = origin.query("SELECT event_id FROM audit_auditcheckpoint WHERE seq = 1")
        acts = Managed(["shell", "-c", AFTER], env=env, log=work / "after.log").start()
        after = _acknowledged(url, device, first_seq=1 + BATCHES * PER_BATCH)
        assert _finished(acts)["checkpoint"] == 2
    _wal_archived(origin)  # the commits after T too: recovery stops at the first of them
    health = _check(backup_env)
    backups.append(_run([*backup, "base-backup", str(archive)], env=backup_env).strip())
    overwrite = _overwrite_refused(origin, archive, backup_env)
    return {
        "archive": archive,
        "anchor": anchor,
        "target": str(target),
        "backups": [Path(b).name for b in backups],
        "before": before,
        "after": after,
        "on_origin": _seqs(origin),
        "audit_at_target": audit_at_target,
        "audit_on_origin": _audit_head(origin),
        "first_signed": int(first_signed),  # type: ignore[call-overload]
        "health": health,
        "overwrite": overwrite,
        "env": env,
    }


def _verified(work: Path, env: dict[str, str], seen: dict[str, Any]) -> dict[str, Any]:
    """`audit_verify --json` on the restored database against the old anchor, and (after
    `audit_anchor_cut`, run meanwhile) against the new one: each (exit status, JSON)."""
    new_env = {**env, "PERFUSE_AUDIT_ANCHOR": (work / "anchor-restored.log").as_uri()}
    old = Managed(["audit_verify", "--json"], env=env, log=work / "verify-old.log").start()
    cut_args = ["audit_anchor_cut", "--source", seen["anchor"].as_uri(), "--until", seen["target"], "--json"]
    cut = _last_json(manage(cut_args, env=new_env))
    new = Managed(["audit_verify", "--json"], env=new_env, log=work / "verify-new.log").start()
    results: dict[str, Any] = {"cut": cut}
    for name, verify in (("old_anchor", old), ("new_anchor", new)):
        output = verify.output(timeout=WAIT * 4)
        assert verify.process is not None
        results[name] = (verify.process.returncode, json.loads(output))
    return results


@pytest.fixture(scope="module")
def drill() -> Iterator[Drill]:
    """Run the origin, lose it, restore it to T on another port (once for the module)."""
    work = Path(tempfile.mkdtemp(prefix="perfuse-restore-drill-"))
    work.chmod(0o755)  # the database service user writes the archive and the restored cluster here
    restored: Cluster | None = None
    try:
        with cluster_started() as origin:
            seen = _origin_run(work, origin)
        env = seen.pop("env")
        port = free_port()
        restore = [str(ROOT / "scripts/restore.sh"), str(seen["archive"]), str(work / "restored")]
        # fsync=off as every test cluster (tests/process_support.py): no start-up sync of the copy
        _run([*restore, "--target-time", seen["target"], "--start", str(port), "--server-options", "-c fsync=off"])
        restored = Cluster(work / "restored", port)
        restored_env = {**env, "DATABASE_URL": _url(APP, port)}
        yield Drill(work=work, restored=restored, verified=_verified(work, restored_env, seen), **seen)
    finally:
        if restored is not None:
            restored.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_the_restored_database_has_exactly_the_readings_acknowledged_before_the_target_time(drill: Drill) -> None:
    assert drill.on_origin == drill.before | drill.after  # the origin had them all
    assert drill.restored.query("SELECT pg_is_in_recovery()") == [(False,)]  # promoted, a primary
    stored = _seqs(drill.restored)
    assert stored == drill.before, (
        f"missing {sorted(drill.before - stored)[:10]}, extra {sorted(stored - drill.before)[:10]}"
    )
    assert not stored & drill.after


def test_the_restored_audit_trail_ends_at_the_target_and_the_old_anchor_reports_the_erasure(drill: Drill) -> None:
    assert _audit_head(drill.restored) == drill.audit_at_target
    assert drill.audit_on_origin[1] > drill.audit_at_target[1]  # the restore did cut audit events off
    # Against the anchor of the old server the restore is an erasure, and is reported as one:
    # checkpoint 2 (after T) is anchored but gone, and the verifier names the first event it
    # vouched for (the first after checkpoint 1), from where the chain is no longer proven.
    code, result = drill.verified["old_anchor"]
    assert code == 1 and result["ok"] is False
    assert result["first_bad"] == drill.first_signed + 1


def test_the_restored_audit_chain_verifies_against_the_anchor_cut_at_the_target(drill: Drill) -> None:
    assert drill.verified["cut"] == {"copied": 1, "dropped": 1, "last_seq": 1}  # checkpoint 2 was signed after T
    code, result = drill.verified["new_anchor"]
    assert (code, result) == (0, {"events": drill.audit_at_target[0], "ok": True, "first_bad": None})


def test_archiver_health_backup_choice_and_pruning(drill: Drill) -> None:
    code, health = drill.health
    assert code == 0 and health["ok"] is True and health["failed_count"] == 0 and health["waiting_segments"] == 0
    # The archive_command never overwrites an archived name, and the check turns red at once.
    assert drill.overwrite["intact"] is True
    code, health = drill.overwrite["health"]
    assert code == 1 and health["ok"] is False and health["failed_count"] >= 1
    # The second base backup ended after T: the restore took the first, the one before T.
    first, second = drill.backups
    assert (
        f"base backup {first}, target {drill.target}" in (drill.restored.directory / "postgresql.auto.conf").read_text()
    )

    wal = drill.archive / "wal"
    label = (drill.archive / "base" / second / "backup_label").read_text()
    start = label.split("(file ", 1)[1].split(")", 1)[0]
    segments = sorted(p.name for p in wal.iterdir() if len(p.name) == 24)
    assert segments[0] < start  # WAL only the first backup needs
    _run([str(ROOT / "scripts/backup.sh"), "prune", str(drill.archive), "1"])
    assert sorted(p.name for p in (drill.archive / "base").iterdir()) == [second, f"{second}.done"]
    kept = sorted(p.name for p in wal.iterdir() if len(p.name) == 24)
    assert kept and kept[0] == start and kept == [s for s in segments if s >= start]
