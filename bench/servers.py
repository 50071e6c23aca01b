"""Throwaway servers for the benchmarks: every bench runs against PostgreSQL and Redis of its own
unless told otherwise (DATABASE_URL given), never against `make run`'s demo database, which is
what Django's default settings would reach."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_services(tmp: Path) -> tuple[str, str, list[str]]:
    """PostgreSQL (fsync off) and Redis under `tmp`: their URLs and the command that stops them."""
    pg, redis = free_port(), free_port()
    script = (
        f"source {ROOT}/scripts/lib.sh; chmod 755 {tmp}; PG_FSYNC=off start_postgres {tmp}/pg {pg}; "
        f"start_redis {tmp}/redis {redis} no"
    )
    subprocess.run(["bash", "-c", script], check=True)
    stop = f"source {ROOT}/scripts/lib.sh; stop_postgres {tmp}/pg; stop_redis {tmp}/redis {redis}"
    return f"postgres://perfuse@127.0.0.1:{pg}/perfuse", f"redis://127.0.0.1:{redis}/0", ["bash", "-c", stop]


def own_services_unless_given() -> bool:
    """Unless DATABASE_URL is set, start throwaway PostgreSQL and Redis, point DATABASE_URL and
    REDIS_URL at them (before Django reads its settings) and stop them when the process exits.
    True when they are the bench's own (and empty: the caller migrates)."""
    if os.environ.get("DATABASE_URL"):
        return False
    tmp = Path(tempfile.mkdtemp(prefix="perfuse-bench-"))
    database, redis, stop = start_services(tmp)
    os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = database, redis

    def stopped() -> None:
        subprocess.run(stop, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(stopped)
    return True
