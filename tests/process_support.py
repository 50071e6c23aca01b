"""Real processes for the fault tests: a private PostgreSQL cluster that a test may SIGKILL, and
`manage.py` commands run as child processes against it.

The suite's own database is shared by every test, so a test that kills PostgreSQL gets a cluster
of its own (initdb, started on a free port, migrated once by `manage.py migrate`). Killing it
kills the postmaster and every backend with SIGKILL at once, as the OOM killer or a power cut of
the process would; `start` then runs PostgreSQL's crash recovery.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
WAIT = 60.0  # seconds a helper waits for a server to come up (an upper bound, not a target)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pg_bindir() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")


def _as_service(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", os.environ.get("PERFUSE_SERVICE_USER", "postgres"), "--", *command]
    return command


@dataclass
class Cluster:
    directory: Path
    port: int
    bindir: Path = field(default_factory=_pg_bindir)

    @property
    def url(self) -> str:
        return f"postgres://perfuse@127.0.0.1:{self.port}/perfuse"

    def start(self) -> None:
        subprocess.run(
            _as_service(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.directory),
                    "-l",
                    str(self.directory / "server.log"),
                    "-w",
                    "-t",
                    str(int(WAIT)),
                    "-o",
                    f"-h 127.0.0.1 -p {self.port} -k {self.directory} -c fsync=off -c max_connections=100",
                    "start",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends at once; wait until they are gone."""
        pid = int((self.directory / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout.split()
        victims = [pid, *(int(c) for c in children)]
        for victim in victims:
            with suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while any(_alive(v) for v in victims):
            assert time.monotonic() < deadline, "PostgreSQL processes survived SIGKILL"
            time.sleep(0.05)
        # The dead postmaster may linger as a zombie (an init that does not reap), whose pid
        # PostgreSQL would take for a running server: its lock files go, as after a power cut.
        for lock in (self.directory / "postmaster.pid", self.directory / f".s.PGSQL.{self.port}.lock"):
            lock.unlink(missing_ok=True)

    def stop(self) -> None:
        subprocess.run(
            _as_service([str(self.bindir / "pg_ctl"), "-D", str(self.directory), "-m", "immediate", "-w", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def query(self, sql: str) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours would count as alive; the postmaster's children are not ours.
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "zombie"


@contextmanager
def cluster_started() -> Iterator[Cluster]:
    """A fresh cluster with an empty `perfuse` database owned by the superuser `perfuse`."""
    directory = Path(tempfile.mkdtemp(prefix="perfuse-faults-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(directory, os.environ.get("PERFUSE_SERVICE_USER", "postgres"))
        directory.chmod(0o700)
        cluster = Cluster(directory, free_port())
        subprocess.run(
            _as_service(
                [str(cluster.bindir / "initdb"), "-D", str(directory), "-U", "perfuse", "--auth=trust", "-E", "UTF8"]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        cluster.start()
        with psycopg.connect(f"postgres://perfuse@127.0.0.1:{cluster.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE perfuse")
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Managed:
    """`manage.py COMMAND …` as a child process, its output in a log file."""

    def __init__(self, args: list[str], *, env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Managed:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), *self.args],
                env=self.env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=out,
            )
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL
        self.process.wait(timeout=WAIT)

    def terminate(self, timeout: float = WAIT) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=WAIT)

    def output(self, timeout: float) -> str:
        """Wait for the process to end by itself; its standard output."""
        assert self.process is not None and self.process.stdout is not None
        out, _ = self.process.communicate(timeout=timeout)
        return out.decode()


def manage(args: list[str], *, env: dict[str, str], timeout: float = 600) -> str:
    """Run `manage.py …` to completion; its standard output (failing loudly on a non-zero exit)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stderr.decode()[-3000:]}"
    return done.stdout.decode()


@contextmanager
def replica_started(primary: Cluster) -> Iterator[Cluster]:
    """A hot standby of `primary`, streaming from it: `pg_basebackup -R` (the recipe of
    docs/replica.md) copies the running cluster and writes standby.signal and primary_conninfo;
    started on a port of its own it replays the primary's WAL and answers read-only queries.
    initdb's pg_hba.conf already trusts replication connections from loopback, and wal_level
    `replica` and max_wal_senders are PostgreSQL's defaults."""
    directory = Path(tempfile.mkdtemp(prefix="perfuse-replica-pg-"))
    replica = Cluster(directory, free_port(), primary.bindir)
    try:
        if os.geteuid() == 0:
            shutil.chown(directory, os.environ.get("PERFUSE_SERVICE_USER", "postgres"))
        directory.chmod(0o700)
        copied = subprocess.run(
            _as_service(
                [
                    str(primary.bindir / "pg_basebackup"),
                    *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "perfuse", "-D", str(directory)),
                    *("-R", "-X", "stream", "-c", "fast"),
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        # (It warns about the primary's socket file in the data directory, which it skips.)
        assert copied.returncode == 0, f"pg_basebackup failed: {copied.stderr}"
        replica.start()
        try:
            yield replica
        finally:
            replica.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def daphne_spawn(
    env: dict[str, str], log: Path, *, extra: tuple[str, ...] = (), append: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    """A real Daphne serving config.asgi on a free loopback port, its output in `log`; the
    process and its port (the caller waits for it as its test needs)."""
    port = free_port()
    daphne = str(Path(sys.executable).parent / "daphne")
    with log.open("ab" if append else "wb") as out:
        process = subprocess.Popen(
            [daphne, "-b", "127.0.0.1", "-p", str(port), *extra, "config.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, port
