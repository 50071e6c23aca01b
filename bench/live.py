"""Live fan-out benchmark: commit → WebSocket frame latency and server memory per client.

    .venv/bin/python bench/live.py [--devices 1000] [--clients 200] [--duration 60] [--send-interval 10]

Uses DATABASE_URL / REDIS_URL when set (a fresh database `<name>_bench_live` is created on that
server), otherwise starts a throwaway PostgreSQL and Redis with scripts/lib.sh. Starts Daphne
(config.asgi) on loopback, provisions a ward of N devices each assigned to its own patient and a
clinician with an OTP-verified session, then:

1. Memory: Daphne's RSS before and after opening C patient sockets (snapshot received, idle):
   (RSS after - RSS before) / C.
2. Latency: every device samples tissue O2 at 1 Hz and uploads its samples every
   --send-interval seconds as one signed batch through the real ingest endpoint (devices start
   staggered, so requests are spread evenly). C sockets (one per patient, the first C patients)
   record when each point arrives. After the run each received point is matched with its row's
   `ingest_time` (PostgreSQL `now()` of the inserting transaction, i.e. its start: slightly
   before the commit, so the figure is an upper bound of commit → frame). Same host, same clock.

Figures are printed, not asserted. The HTTP and WebSocket clients are minimal asyncio ones (keep-
alive HTTP/1.1, RFC 6455 framing) so the load generator spends little of the machine's 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import os
import random
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.servers import free_port, start_services  # noqa: E402

# ---- services ------------------------------------------------------------------------------


def fresh_database(url: str, suffix: str = "bench_live") -> str:
    import psycopg

    parsed = urlparse(url)
    name = f"{parsed.path.lstrip('/') or 'perfuse'}_{suffix}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return parsed._replace(path="/" + name).geturl()


# ---- fixtures in the database --------------------------------------------------------------


@dataclass
class Fleet:
    devices: list[tuple[str, str, Any]]  # device_id, key_id, private key
    pseudonyms: list[str]
    session_key: str


def provision(n_devices: int) -> Fleet:
    import django

    django.setup()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import Group, User
    from django.contrib.sessions.backends.db import SessionStore
    from django.db import transaction
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from audit.models import StaffProfile
    from telemetry.models import Assignment, Device, DeviceKey, Patient, Ward

    now = dt.datetime.now(dt.UTC)
    keys = [Ed25519PrivateKey.generate() for _ in range(n_devices)]
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    with transaction.atomic():
        ward = Ward.objects.create(code="bench", name="Bench ward")
        devices = Device.objects.bulk_create([Device(device_id=f"bench-{i:04d}", ward=ward) for i in range(n_devices)])
        DeviceKey.objects.bulk_create(
            [
                DeviceKey(key_id=f"k-bench-{i:04d}", device=d, public_key=k.public_key().public_bytes(*raw))
                for i, (d, k) in enumerate(zip(devices, keys, strict=True))
            ]
        )
        patients = Patient.objects.bulk_create(
            [Patient(pseudonym=f"pb-{i:04d}", ward=ward, admitted_at=now) for i in range(n_devices)]
        )
        Assignment.objects.bulk_create(
            [
                Assignment(device=d, patient=p, start=now - dt.timedelta(hours=1))
                for d, p in zip(devices, patients, strict=True)
            ]
        )
        user = User.objects.create_user("bench-clinician", password=secrets.token_urlsafe(16))
        user.groups.add(Group.objects.get_or_create(name="clinician")[0])
        StaffProfile.objects.create(user=user).wards.set([ward])
        totp = TOTPDevice.objects.create(user=user, name="bench", confirmed=True)
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session[DEVICE_ID_SESSION_KEY] = totp.persistent_id
        session.save()
    return Fleet(
        devices=[(d.device_id, f"k-bench-{i:04d}", k) for i, (d, k) in enumerate(zip(devices, keys, strict=True))],
        pseudonyms=[p.pseudonym for p in patients],
        session_key=session.session_key or "",
    )


# ---- minimal clients -----------------------------------------------------------------------


class Http:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        status, _ = await self.request(path, body, headers)
        return status

    async def request(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """POST; the status and the answer's body."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status = int((await self.reader.readuntil(b"\r\n")).split()[1])
        length, chunked = 0, False
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value:
                chunked = True
        answer = b""
        if chunked:
            while (size := int((await self.reader.readuntil(b"\r\n")).strip(), 16)) != 0:
                answer += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")
        else:
            answer = await self.reader.readexactly(length)
        return status, answer


class WebSocket:
    """RFC 6455 client: text messages in, masked pong/close out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, path: str, cookie: str) -> WebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n"
                f"Cookie: sessionid={cookie}\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"handshake refused: {head[:80]!r}")
        return cls(reader, writer)

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def recv(self) -> bytes | None:
        """Next text message, or None when the server closed."""
        message = b""
        while True:
            b1, b2 = await self.reader.readexactly(2)
            n = b2 & 0x7F
            if n == 126:
                n = struct.unpack(">H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", await self.reader.readexactly(8))[0]
            payload = await self.reader.readexactly(n)
            opcode = b1 & 0x0F
            if opcode == 0x8:
                return None
            if opcode == 0x9:
                self._send(0xA, payload[:125])
                continue
            if opcode in (0x1, 0x2, 0x0):
                message += payload
                if b1 & 0x80:
                    return message

    async def close(self) -> None:
        self._send(0x8, struct.pack(">H", 1000))
        self.writer.close()


# ---- the run -------------------------------------------------------------------------------


@dataclass
class Results:
    received: dict[tuple[str, int], float] = field(default_factory=dict)  # (pseudonym, seq) -> time
    frames: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    request_ms: list[float] = field(default_factory=list)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def listen(ws: WebSocket, pseudonym: str, results: Results) -> None:
    while (message := await ws.recv()) is not None:
        now = time.time()
        frame = orjson.loads(message)
        for f in frame["frames"] if frame["type"] == "frames" else [frame]:
            if f["type"] == "reading.batch":
                results.frames += 1
                for p in f["points"]:
                    results.received.setdefault((pseudonym, p["seq"]), now)


async def device_loop(
    port: int, device: tuple[str, str, Any], interval: float, stop_at: float, results: Results, offset: float
) -> None:
    device_id, key_id, private = device
    http = Http(port)
    seq = 1_000_000
    await asyncio.sleep(offset)
    last = time.time()
    while time.time() < stop_at:
        now = time.time()
        n = max(1, round(now - last))
        last = now
        readings = []
        for i in range(n):
            seq += 1
            t = dt.datetime.fromtimestamp(now - (n - 1 - i), dt.UTC)
            readings.append(
                {
                    "seq": seq,
                    "sample_time": t.isoformat().replace("+00:00", "Z"),
                    "metric": "tissue_o2",
                    "value": round(random.gauss(62, 3), 2),
                    "unit": "%",
                    "signal_quality": 0.95,
                }
            )
        body = orjson.dumps({"schema": "perfuse.readings/1", "device_id": device_id, "readings": readings})
        stamp = str(int(now))
        signature = base64.b64encode(private.sign(stamp.encode() + b"\n" + body)).decode()
        headers = {
            "Content-Type": "application/json",
            "X-Perfuse-Key": key_id,
            "X-Perfuse-Timestamp": stamp,
            "X-Perfuse-Signature": signature,
        }
        started = time.perf_counter()
        status = await http.post("/api/v1/ingest/readings", body, headers)
        results.request_ms.append((time.perf_counter() - started) * 1000)
        results.statuses[status] = results.statuses.get(status, 0) + 1
        await asyncio.sleep(max(0.0, last + interval - time.time()))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, fleet: Fleet, port: int, daphne_pid: int, database_url: str) -> None:
    # Warm up: every device once (pools, caches, device state), one socket once.
    warm = Results()
    await asyncio.gather(
        *(device_loop(port, d, 1.0, time.time() + 0.5, warm, 0) for d in fleet.devices[: min(50, len(fleet.devices))])
    )
    ws = await WebSocket.connect(port, f"/ws/patients/{fleet.pseudonyms[0]}/live", fleet.session_key)
    await ws.recv()
    await ws.close()
    await asyncio.sleep(2)

    rss_before = rss_kib(daphne_pid)
    sockets = []
    for pseudonym in fleet.pseudonyms[: args.clients]:
        ws = await WebSocket.connect(port, f"/ws/patients/{pseudonym}/live", fleet.session_key)
        first = orjson.loads(await ws.recv() or b"{}")
        assert first.get("type") == "snapshot", first
        sockets.append((ws, pseudonym))
    await asyncio.sleep(3)
    rss_after = rss_kib(daphne_pid)
    per_client = (rss_after - rss_before) / max(1, len(sockets))

    results = Results()
    listeners = [asyncio.create_task(listen(ws, p, results)) for ws, p in sockets]
    start = time.time()
    cpu_start = cpu_seconds(daphne_pid)
    stop_at = start + args.duration
    n = len(fleet.devices)
    await asyncio.gather(
        *(
            device_loop(port, d, args.send_interval, stop_at, results, args.send_interval * i / n)
            for i, d in enumerate(fleet.devices)
        )
    )
    daphne_cpu = (cpu_seconds(daphne_pid) - cpu_start) / (time.time() - start)
    await asyncio.sleep(2)  # let the last frames arrive
    for task in listeners:
        task.cancel()
    for ws, _ in sockets:
        await ws.close()

    import psycopg

    subscribed = fleet.pseudonyms[: args.clients]
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT p.pseudonym, r.seq, extract(epoch FROM r.ingest_time) FROM telemetry_reading r "
            "JOIN telemetry_patient p ON p.id = r.patient_id WHERE p.pseudonym = ANY(%s) AND r.seq > 1000000 "
            "AND r.ingest_time >= to_timestamp(%s)",
            [subscribed, start],
        ).fetchall()
    latencies = [
        (results.received[(pseudonym, seq)] - float(ingest)) * 1000
        for pseudonym, seq, ingest in rows
        if (pseudonym, seq) in results.received
    ]
    elapsed = args.duration
    print(f"devices {n} at 1 Hz, upload every {args.send_interval:g} s; {len(sockets)} patient sockets; {elapsed} s")
    print(
        f"ingest requests {sum(results.statuses.values())} ({sum(results.statuses.values()) / elapsed:.0f}/s), "
        f"statuses {dict(sorted(results.statuses.items()))}, request p50 {pct(results.request_ms, 0.5):.1f} ms "
        f"p99 {pct(results.request_ms, 0.99):.1f} ms; Daphne CPU {daphne_cpu * 100:.0f}% of one core"
    )
    print(
        f"readings committed for subscribed patients {len(rows)}, received over sockets {len(latencies)}, "
        f"frames {results.frames}"
    )
    if latencies:
        print(
            f"commit -> frame latency: p50 {statistics.median(latencies):.1f} ms  p99 {pct(latencies, 0.99):.1f} ms  "
            f"max {max(latencies):.1f} ms"
        )
    print(
        f"memory: Daphne RSS {rss_before / 1024:.1f} MiB -> {rss_after / 1024:.1f} MiB with {len(sockets)} idle "
        f"sockets: {per_client:.1f} KiB per client"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument("--send-interval", type=float, default=10.0)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="perfuse-bench-live-"))
    stop: list[str] = []
    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        db, redis, stop = start_services(tmp)
        os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = db, redis
    database_url = fresh_database(os.environ["DATABASE_URL"])
    os.environ["DATABASE_URL"] = database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    os.environ.setdefault("PERFUSE_CHANNEL_PREFIX", f"bench{os.getpid()}")
    py = str(ROOT / ".venv" / "bin" / "python")
    subprocess.run([py, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)
    fleet = provision(args.devices)
    port = free_port()
    env = {**os.environ, "LOG_LEVEL": "WARNING", "PERFUSE_INGEST_POOL_SIZE": "16"}
    log = open(tmp / "daphne.log", "wb")  # noqa: SIM115
    daphne = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        asyncio.run(run(args, fleet, port, daphne.pid, database_url))
    finally:
        daphne.terminate()
        daphne.wait(timeout=10)
        if stop:
            subprocess.run(stop, check=False)
        log.close()
        errors = [line for line in (tmp / "daphne.log").read_text(errors="replace").splitlines() if "Error" in line]
        if errors:
            print(f"daphne logged {len(errors)} error lines, e.g. {errors[-1][:200]}")
        if os.environ.get("BENCH_KEEP_LOG"):
            shutil.copy(tmp / "daphne.log", os.environ["BENCH_KEEP_LOG"])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
