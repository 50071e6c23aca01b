"""The stream engine under fleet load: its CPU per reading and per wake, and its lag.

    .venv/bin/python bench/engine_load.py [--patients 1000] [--commit-ms 50] [--share 20]
        [--duration 30] [--warmup 8] [--profile FILE]

Throwaway PostgreSQL (fsync off) and Redis (bench/servers.py) and a fresh database; N devices,
each assigned to its own patient (bench/live.py `provision`), and one `manage.py run_engine`
process with the configured processors. The load generator stores readings through the real
ingest path (telemetry.ingest.group.group_handle: signatures, rate limit, validation, one
transaction, provenance, live frames) as group commit does at 1 Hz: every --commit-ms one
transaction holding one signed tissue-O2 message for each of 1/--share of the devices, in
turn, so every device sends one reading every commit-ms times share (50 ms by 20 = 1 s by default;
`--commit-ms 2 --share 500` is closer to HTTP's transaction per request). One device in a
hundred dips below the critical threshold for 20 s of every 45 s, so alarms are raised and
cleared as the run goes.

After --warmup seconds (every patient's evaluator is built by then), for --duration seconds:

- the engine process's CPU (and that of its PostgreSQL backends, found by application_name)
  per 1,000 readings and per batch;
- batches/s: how often the engine's cursor moved (a monitor thread polls the cursors every 2 ms);
- lag: from the return of an ingest commit to the first poll that sees every partition's cursor
  past that transaction (the batch holding its rollups and alarm decisions committed), p50/p99;
- alarms raised during the run (a sanity figure: the same load decides the same).

With --profile FILE the engine runs under cProfile and writes its stats to FILE on exit.
Figures are printed, not asserted. Run it under the shared lock: `flock /tmp/perfuse-bench.lock …`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.live import cpu_seconds, fresh_database, pct, provision  # noqa: E402
from bench.servers import start_services  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
APP_NAME = "perfuse-engine-load"
DIP_EVERY, DIP_FOR = 45.0, 20.0  # seconds: an alarm patient's cycle and how long it reads critical


class Monitor(threading.Thread):
    """Polls the lowest engine cursor; records when it first passed each position."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.moves: list[tuple[float, int | None]] = []  # (monotonic, lowest position) at each change
        self.stop = threading.Event()

    def run(self) -> None:
        last = None
        while not self.stop.is_set():
            row = self.conn.execute("SELECT min(position) FROM telemetry_enginecursor").fetchone()
            position = row[0] if row else None
            if position != last:
                self.moves.append((time.monotonic(), position))
                last = position
            time.sleep(0.002)

    def passed(self, txid: int, after: float) -> float | None:
        """When the lowest cursor first passed `txid` (positions only grow)."""
        for at, position in self.moves:
            if position is not None and position > txid and at >= after:
                return at
        return None


def _message(device: tuple[str, str, Any], seq: int, value: float, at: float) -> Any:
    """A device's signed message of one reading sampled (and sent) at `at` (epoch seconds)."""
    from telemetry.ingest.group import Message

    device_id, key_id, private = device
    reading = {
        "seq": seq,
        "sample_time": dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z"),
        "metric": "tissue_o2",
        "value": value,
        "unit": "%",
        "signal_quality": 0.95,
    }
    body = orjson.dumps({"schema": "perfuse.readings/1", "device_id": device_id, "readings": [reading]})
    stamp = str(int(at))
    signature = base64.b64encode(private.sign(stamp.encode() + b"\n" + body)).decode()
    headers = {"x-perfuse-key": key_id, "x-perfuse-timestamp": stamp, "x-perfuse-signature": signature}
    return Message(body, headers, door="mqtt")


def schedule(args: argparse.Namespace, devices: list[Any], start: float) -> list[list[Any]]:
    """Every commit's messages, signed ahead (the load generator's own CPU stays out of the way):
    commit k at start + k * commit_ms holds slice k mod share of the devices."""
    rng = random.Random(7)
    dipping = set(range(0, len(devices), 100))
    slices = [list(range(i, len(devices), args.share)) for i in range(args.share)]
    step = args.commit_ms / 1000.0
    commits = []
    for k in range(int((args.warmup + args.duration) / step) + 1):
        at = start + k * step
        messages = []
        for i in slices[k % args.share]:
            low = i in dipping and (at - start + i) % DIP_EVERY < DIP_FOR
            messages.append(_message(devices[i], k + 1, 20.0 if low else round(rng.gauss(62, 3), 2), at))
        commits.append(messages)
    return commits


async def load(args: argparse.Namespace, devices: list[Any], url: str, monitor: Monitor) -> dict[str, Any]:
    import psycopg

    from telemetry import db
    from telemetry.ingest.group import group_handle, message_prepare

    step = args.commit_ms / 1000.0
    lead = 2.0 + len(devices) * (args.warmup + args.duration) / step / args.share / 20_000  # signing time
    wall = time.time() + lead
    planned = schedule(args, devices, wall)
    await asyncio.sleep(max(0.0, wall - time.time()))
    probe = await psycopg.AsyncConnection.connect(url, autocommit=True)
    started = time.monotonic()
    measure_from, measure_to = started + args.warmup, started + args.warmup + args.duration
    turn, readings, refused = 0, 0, 0
    commits: list[tuple[float, int]] = []  # (commit returned, txid) during the measured window
    cpu: dict[str, float] = {}
    due = started
    while True:
        now = time.monotonic()
        if now >= measure_to:
            break
        if "start" not in cpu and now >= measure_from:
            cpu["start"] = now
            cpu["engine0"], cpu["backends0"] = args.cpu()
            readings = 0
        in_window = "start" in cpu
        if turn >= len(planned):
            break
        messages = planned[turn]
        turn += 1
        answers = await group_handle([message_prepare(m) for m in messages])
        done = time.monotonic()
        refused += sum(1 for a in answers if a.status != 200)
        if in_window:
            readings += sum(a.body.get("accepted", 0) for a in answers if a.status == 200)
            row = await (await probe.execute("SELECT max(txid) FROM telemetry_ingest_log")).fetchone()
            assert row is not None
            commits.append((done, int(row[0])))
        due += step
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    ended = time.monotonic()
    engine1, backends1 = args.cpu()
    await probe.close()
    await db.close_clients()
    time.sleep(1.0)  # let the engine finish the last commits
    monitor.stop.set()
    monitor.join()
    lags = []
    missed = 0
    for at, txid in commits:
        seen = monitor.passed(txid, at - 0.01)
        if seen is None:
            missed += 1
        else:
            lags.append(max(0.0, (seen - at) * 1000))
    window = ended - cpu["start"]
    moves = [m for m in monitor.moves if cpu["start"] <= m[0] <= ended]
    return {
        "window": window,
        "readings": readings,
        "refused": refused,
        "commits": len(commits),
        "engine_cpu": engine1 - cpu["engine0"],
        "backend_cpu": backends1 - cpu["backends0"],
        "batches": len(moves),
        "lags": lags,
        "missed": missed,
    }


async def prime(devices: list[Any]) -> None:
    """One reading of every device before the engine starts, so none starts out silent (its
    no-data alarm would be raised at the engine's first timer tick)."""
    from telemetry import db
    from telemetry.ingest.group import group_handle, message_prepare

    for start in range(0, len(devices), 500):
        await group_handle([message_prepare(_message(d, 0, 62.0, time.time())) for d in devices[start : start + 500]])
    await db.close_clients()


def sql_costs(server_log: str, top: int) -> None:
    """The engine's statements by total duration (literals blanked so that one shape is one line)."""
    totals: dict[str, list[float]] = {}
    entry = r"duration: ([0-9.]+) ms  (?:statement|execute [^:]*|bind [^:]*|parse [^:]*): (.*?)(?=\n\S|\Z)"
    for match in re.finditer(entry, server_log, re.S):
        shape = re.sub(r"'[^']*'|\b\d+(\.\d+)?\b", "?", " ".join(match.group(2).split()))
        totals.setdefault(shape[:160], []).append(float(match.group(1)))
    print(f"the engine's statements, {top} costliest by total server time:")
    for shape, durations in sorted(totals.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"  {sum(durations):9.1f} ms {len(durations):7d}x  {shape}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--commit-ms", type=float, default=50.0, help="one ingest transaction this often")
    parser.add_argument("--share", type=int, default=20, help="each transaction holds 1/share of the devices")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--profile", default="", help="run the engine under cProfile, stats to this file")
    parser.add_argument(
        "--sql-log", type=int, default=0, help="log the engine's statements and print this many costliest"
    )
    args = parser.parse_args()

    with open("/proc/loadavg") as f:
        load_before = " ".join(f.read().split()[:3])
    tmp = Path(tempfile.mkdtemp(prefix="perfuse-bench-engine-"))
    database, redis, stop = start_services(tmp)
    os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = database, redis
    url = fresh_database(database, "bench_engine")
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    os.environ.setdefault("PERFUSE_CHANNEL_PREFIX", f"bench{os.getpid()}")
    # Every device sends one reading a second: keep the rate limit out of the way of the burst
    # at start, as a deployment sized for its fleet would.
    os.environ.setdefault("PERFUSE_INGEST_POOL_SIZE", "4")
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)
    fleet = provision(args.patients)
    asyncio.run(prime(fleet.devices))
    import psycopg

    env = {**os.environ, "LOG_LEVEL": "WARNING", "PGAPPNAME": APP_NAME}
    if args.sql_log:
        env["PGOPTIONS"] = "-c log_min_duration_statement=0"
    command = [PY, "manage.py", "run_engine"]
    if args.profile:
        command = [PY, "-m", "cProfile", "-o", str(Path(args.profile).resolve()), "manage.py", "run_engine"]
    log = open(tmp / "engine.log", "wb")  # noqa: SIM115
    engine = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    admin = psycopg.connect(url, autocommit=True)

    def cpu() -> tuple[float, float]:
        pids = [
            row[0] for row in admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [APP_NAME])
        ]
        backends = 0.0
        for pid in pids:
            with contextlib.suppress(FileNotFoundError):  # a backend that just ended
                backends += cpu_seconds(pid)
        return cpu_seconds(engine.pid), backends

    args.cpu = cpu
    try:
        time.sleep(3.0)  # the engine's start (imports, cursors, first loop)
        monitor = Monitor(url)
        monitor.start()
        result = asyncio.run(load(args, fleet.devices, url, monitor))
        alarms = admin.execute("SELECT kind, count(*) FROM alerts_alarm GROUP BY kind ORDER BY kind").fetchall()
    finally:
        engine.terminate()
        engine.wait(timeout=30)
        admin.close()
        if args.sql_log:
            sql_costs((tmp / "pg" / "server.log").read_text(errors="replace"), args.sql_log)
        subprocess.run(stop, check=False)
        log.close()
        errors = [line for line in (tmp / "engine.log").read_text(errors="replace").splitlines() if "Error" in line]
        if errors:
            print(f"the engine logged {len(errors)} error lines, e.g. {errors[-1][:200]}")
        shutil.rmtree(tmp, ignore_errors=True)
    with open("/proc/loadavg") as f:
        load_after = " ".join(f.read().split()[:3])
    r = result
    per_k = 1000.0 / max(1, r["readings"])
    lags = r["lags"]
    print(f"load average before {load_before}, after {load_after}")
    print(
        f"{args.patients} patients, a commit every {args.commit_ms:g} ms of {args.patients // args.share} readings; "
        f"measured {r['window']:.1f} s: {r['commits']} commits, {r['readings']} readings "
        f"({r['readings'] / r['window']:.0f}/s), {r['refused']} messages refused"
    )
    print(
        f"engine CPU: {r['engine_cpu'] * 1000 * per_k:.1f} ms per 1,000 readings "
        f"({r['engine_cpu'] / r['window']:.2f} cores), its PostgreSQL backends "
        f"{r['backend_cpu'] * 1000 * per_k:.1f} ms per 1,000 ({r['backend_cpu'] / r['window']:.2f} cores)"
    )
    batches = max(1, r["batches"])
    print(
        f"batches: {r['batches'] / r['window']:.1f}/s, {r['readings'] / batches:.0f} readings and "
        f"{r['engine_cpu'] * 1000 / batches:.2f} ms engine CPU "
        f"(+{r['backend_cpu'] * 1000 / batches:.2f} ms PostgreSQL) each"
    )
    if lags:
        print(
            f"lag commit → engine cursor past it: p50 {statistics.median(lags):.1f} ms  p99 {pct(lags, 0.99):.1f} ms  "
            f"max {max(lags):.1f} ms  ({r['missed']} commits not seen processed)"
        )
    print(f"alarms raised: {alarms}")


if __name__ == "__main__":
    main()
