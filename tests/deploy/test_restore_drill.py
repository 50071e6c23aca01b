"""The restore drill (issue 12 item 7, docs/backup.md): back up, lose, restore to a point in time.

A private cluster archives its WAL with scripts/wal-archive.sh (configured by `scripts/backup.sh
configure`) and has the project's schema and database roles, as a deployment: migrated as the
owner role, hardened, the application connecting as perfuse_app. After a base backup
(`scripts/backup.sh base-backup`), a real Daphne takes signed batches of readings and real
service functions write audit events and a signed, anchored checkpoint. The target time T is
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
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from audit.hardening import hardening_sql
from tests import factories
from tests.process_support import ROOT, WAIT, Cluster, cluster_started, free_port, manage

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


def _django(code: str, env: dict[str, str]) -> Any:
    """Run `code` in `manage.py shell`; the JSON it printed last."""
    return json.loads(manage(["shell", "-c", code], env=env).strip().splitlines()[-1])


def _url(role: str, port: int) -> str:
    return f"postgres://{role}@127.0.0.1:{port}/perfuse"


def _deployed(cluster: Cluster, env: dict[str, str]) -> None:
    """The roles of scripts/lib.sh, migrated as the owner, then hardened (as scripts/run.sh does)."""
    _run(["bash", "-c", 'source scripts/lib.sh && ensure_db_roles "$1" perfuse', "_", str(cluster.port)])
    manage(["migrate", "--noinput"], env={**env, "DATABASE_URL": _url(OWNER, cluster.port)})
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(hardening_sql(app_role=APP, owner_role=OWNER))  # type: ignore[arg-type]


@contextmanager
def _daphne(env: dict[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
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


def _seqs(cluster: Cluster) -> set[int]:
    rows = cluster.query(
        "SELECT r.seq FROM telemetry_reading r JOIN telemetry_device d ON d.id = r.device_id "
        "WHERE d.device_id = 'drill-1'"
    )
    return {int(seq) for (seq,) in rows}  # type: ignore[call-overload]


def _audit_head(cluster: Cluster) -> tuple[int, int]:
    ((count, last),) = cluster.query("SELECT count(*), coalesce(max(id), 0) FROM audit_auditevent")
    return int(count), int(last)  # type: ignore[call-overload]


def _verify(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "audit_verify", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT * 4,
        check=False,
    )
    return done.returncode, json.loads(done.stdout)


def _device(answer: dict[str, Any]) -> factories.SimDevice:
    private = serialization.load_pem_private_key(answer["private_key_pem"].encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return factories.SimDevice("drill-1", answer["key_id"], private, "drill")


def test_restore_to_a_point_in_time_keeps_exactly_what_was_acknowledged_before_it_and_the_audit_chain_verifies() -> (
    None
):
    work = Path(tempfile.mkdtemp(prefix="perfuse-restore-drill-"))
    work.chmod(0o755)  # the database service user writes the archive and the restored cluster here
    archive, restored_dir = work / "archive", work / "restored"
    anchor, new_anchor = work / "anchor.log", work / "anchor-restored.log"
    restored: Cluster | None = None
    try:
        with cluster_started() as origin:
            env = {
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "config.settings.test",
                "DATABASE_URL": _url(APP, origin.port),
                "REDIS_URL": settings.REDIS_URL,
                "PERFUSE_AUDIT_ANCHOR": anchor.as_uri(),
            }
            backup_env = {**os.environ, "PGPORT": str(origin.port)}
            _run([str(ROOT / "scripts/backup.sh"), "configure", str(archive)], env=backup_env)
            origin.stop()  # archive_mode takes a restart
            origin.start()
            _deployed(origin, env)
            _run([str(ROOT / "scripts/backup.sh"), "base-backup", str(archive)], env=backup_env)

            with _daphne(env, work / "daphne.log") as url:
                device = _device(_django(BEFORE, env))
                before = _acknowledged(url, device, first_seq=1)
                ((target,),) = origin.query("SELECT clock_timestamp()::text")
                audit_at_target = _audit_head(origin)
                ((first_signed,),) = origin.query("SELECT event_id FROM audit_auditcheckpoint WHERE seq = 1")
                after = _acknowledged(url, device, first_seq=1 + BATCHES * PER_BATCH)
                assert _django(AFTER, env)["checkpoint"] == 2
            _wal_archived(origin)  # the commits after T too: recovery stops at the first of them
            assert _seqs(origin) == before | after
            audit_on_origin = _audit_head(origin)

        port = free_port()
        _run(
            [str(ROOT / "scripts/restore.sh"), str(archive), str(restored_dir), "--target-time", str(target)]
            + ["--start", str(port)]
        )
        restored = Cluster(restored_dir, port)
        assert restored.query("SELECT pg_is_in_recovery()") == [(False,)]  # promoted

        stored = _seqs(restored)
        assert stored == before, f"missing {sorted(before - stored)[:10]}, extra {sorted(stored - before)[:10]}"
        assert not stored & after
        assert _audit_head(restored) == audit_at_target
        assert audit_on_origin[1] > audit_at_target[1]  # the restore did cut audit events off

        restored_env = {**env, "DATABASE_URL": _url(APP, port)}
        # Against the anchor of the old server the restore is an erasure, and is reported as one:
        # checkpoint 2 (after T) is anchored but gone, and the verifier names the first event it
        # vouched for (the first after checkpoint 1), from where the chain is no longer proven.
        code, result = _verify(restored_env)
        assert code == 1 and result["ok"] is False
        assert result["first_bad"] == int(first_signed) + 1  # type: ignore[call-overload]

        cut = json.loads(
            manage(
                ["audit_anchor_cut", "--source", anchor.as_uri(), "--until", str(target), "--json"],
                env={**restored_env, "PERFUSE_AUDIT_ANCHOR": new_anchor.as_uri()},
            )
        )
        assert cut == {"copied": 1, "dropped": 1, "last_seq": 1}
        code, result = _verify({**restored_env, "PERFUSE_AUDIT_ANCHOR": new_anchor.as_uri()})
        assert (code, result) == (0, {"events": audit_at_target[0], "ok": True, "first_bad": None})
    finally:
        if restored is not None:
            restored.stop()
        shutil.rmtree(work, ignore_errors=True)
