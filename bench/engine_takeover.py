"""Engine partitions: how long a SIGKILLed engine's partitions stay without an owner.

    .venv/bin/python bench/engine_takeover.py [--engines 3] [--rounds 5] [--partitions 16]

Starts a throwaway PostgreSQL cluster (tests/process_support.py), migrates it, runs `--engines`
`run_engine` processes (rollups only: the takeover is about locks, not processors) and, once they
share the partitions, SIGKILLs one per round. The takeover time runs from the SIGKILL to the moment
pg_locks (polled every 10 ms) shows every partition owned by the survivors; the killed engine is
then started again and the bench waits for the shares to settle before the next round. A reading
committed meanwhile then flows to its new owner at once (docs/storage.md "Partitions"). Prints
each round and the median and max.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.process_support import WAIT, Managed, cluster_started, manage  # noqa: E402

CLASS = 0x7065_7202  # telemetry.engine.PARTITION_LOCK_CLASS (not imported: no Django here)
_OWNERS = (
    "SELECT a.application_name, l.objid::int FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.classid = %s::oid AND l.objsubid = 2 AND l.granted"
)


def owners(conn: psycopg.Connection[tuple[str, int]]) -> dict[int, str]:
    return {p: name for name, p in conn.execute(_OWNERS, [CLASS]).fetchall()}


def wait_for(conn: psycopg.Connection[tuple[str, int]], ok: object, what: str) -> float:
    started = time.monotonic()
    while not ok(owners(conn)):  # type: ignore[operator]
        if time.monotonic() - started > WAIT:
            raise SystemExit(f"timed out: {what} ({owners(conn)})")
        time.sleep(0.01)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=16)
    args = parser.parse_args()
    with cluster_started() as cluster, tempfile.TemporaryDirectory() as logs:
        base = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.dev",
            "DATABASE_URL": cluster.url,
            "PERFUSE_ENGINE_PARTITIONS": str(args.partitions),
            "PERFUSE_ENGINE_PROCESSORS": "telemetry.engine.RollupProcessor",
        }
        manage(["migrate", "--noinput"], env=base)

        def engine(i: int) -> Managed:
            env = {**base, "PGAPPNAME": f"engine-{i}"}
            return Managed(["run_engine"], env=env, log=Path(logs) / f"engine-{i}.log").start()

        engines = [engine(i) for i in range(args.engines)]
        times = []
        try:
            with psycopg.connect(cluster.url, autocommit=True) as conn:

                def settled(o: dict[int, str]) -> bool:
                    return len(o) == args.partitions and len(set(o.values())) == args.engines

                wait_for(conn, settled, "the engines share the partitions")
                for r in range(args.rounds):
                    victim = r % args.engines
                    name = f"engine-{victim}"
                    held = sorted(p for p, n in owners(conn).items() if n == name)
                    started = time.monotonic()
                    engines[victim].kill()
                    wait_for(
                        conn,
                        lambda o, name=name: len(o) == args.partitions and name not in o.values(),
                        "takeover",
                    )
                    took = time.monotonic() - started
                    times.append(took)
                    print(f"round {r + 1}: {name} held {len(held)} partitions, taken over in {took * 1000:.0f} ms")
                    engines[victim] = engine(victim)
                    wait_for(conn, settled, "the shares settle again")
        finally:
            for e in engines:
                e.terminate()
        print(
            f"takeover after SIGKILL ({args.engines} engines, {args.partitions} partitions, {args.rounds} rounds): "
            f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
