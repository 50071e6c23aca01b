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


def start_cluster(root: Path, nodes: int = 3) -> list[RedisServer]:
    """A Redis Cluster of `nodes` primaries, no replicas, every slot assigned (redis-cli
    --cluster create); returned once every node reports cluster_state:ok."""
    servers = [RedisServer(root / f"node-{n}", cluster=True) for n in range(nodes)]
    try:
        for server in servers:
            server.start()
        addresses = [f"127.0.0.1:{server.port}" for server in servers]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=WAIT,
        )
        deadline = time.monotonic() + WAIT
        for server in servers:
            with server.client() as client:
                while client.cluster("info").get("cluster_state") != "ok":
                    assert time.monotonic() < deadline, f"cluster node {server.port} not ok"
                    time.sleep(0.05)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers
