"""Extra real Redis servers for the tests of several servers (tests/config/test_redis_servers.py):
each on a free loopback port, in memory only, killed with SIGKILL and started again on the same
port as a crash and a supervisor's restart would; optionally cluster-enabled."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.process_support import WAIT, free_port


@dataclass
class RedisServer:
    directory: Path
    port: int = field(default_factory=free_port)
    cluster: bool = False
    # A cluster node also listens on a bus port, port + 10000 unless told: beyond 65535 for
    # half of the free ports, so it gets a free port of its own.
    bus_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)]
        command += ["--save", "", "--appendonly", "no", "--logfile", str(self.directory / "redis.log")]
        if self.cluster:
            command += ["--cluster-enabled", "yes", "--cluster-port", str(self.bus_port)]
            command += ["--cluster-config-file", str(self.directory / "nodes.conf")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.ConnectionError:
                assert self.process.poll() is None, (self.directory / "redis.log").read_text()
                assert time.monotonic() < deadline, f"redis on port {self.port} did not start"
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to connected clients."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=WAIT)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.kill()
