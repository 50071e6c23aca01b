"""Alarm latency: commit of the reading that completes a rule's delay → `alarm.transition` frame at
a subscribed alarm console, under a fleet of N devices at F Hz through the real ingest API.

    .venv/bin/python bench/alarms.py --devices 1000 --hz 1 --duration 120

Starts Daphne and `manage.py run_engine` as subprocesses against the given database (migrated
here; the engine cursor is moved to the present), provisions a bench ward with N devices and
fresh patients, subscribes one on-call console to `WS /ws/alarms/live`, and streams signed
readings: every device samples at F Hz and posts its readings every --batch-seconds (a
gateway's rhythm, staggered over the period). P probe devices desaturate once each, at staggered
times, to 20 % for longer than the critically-low delay (10 s); around the dip they post every
reading at once, so the reading at onset + delay — the one that crosses the rule — is committed
at its sample time. The clock starts at that reading's commit (pg_xact_commit_timestamp of its
ingest transaction; the server needs track_commit_timestamp = on, else the request's send time
is used, an upper bound) and stops when the `raised` frame of that patient's critical_low alarm
arrives at the console. Prints p50/p99/max, split into commit→engine decision and decision→frame.

Secondary notification beside it: the bench runs an SMTP server (aiosmtpd) and a webhook receiver
(http.server, checking the HMAC signature) in this process and `manage.py run_notifier` as a third
subprocess, pointed at them. A critically-low raise is high priority, so its email (to the bench
on-call user) and its webhook are written to the outbox in the raising transaction; the clock
starts at that transaction's commit (the `alarm.transition` commit; without commit timestamps,
at the engine's decision time, an earlier start) and stops when the SMTP server accepts the
message (end of DATA) and when the receiver has the signed POST. Prints p50/p99/max of each.

Runs against throwaway PostgreSQL and Redis of its own unless DATABASE_URL names a database
(bench/servers.py), never against `make run`'s demo database.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import logging
import os
import random
import re
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

# Throwaway PostgreSQL and Redis unless DATABASE_URL names a database (bench/servers.py).
from bench.servers import own_services_unless_given  # noqa: E402

OWN_SERVICES = own_services_unless_given()

CRITICAL_DELAY_S = 10
DIP_SECONDS = 14


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup(n_devices: int, ward_code: str) -> tuple[list[dict[str, Any]], str]:
    """Provision the fleet (fresh keys each run) and an on-call session; returns devices, cookie."""
    import django

    django.setup()
    from cryptography.hazmat.primitives import serialization
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from django.db import connection
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from audit.access.staff import staff_upsert
    from telemetry.models import Assignment, Ward
    from telemetry.services import device_provision, patient_admit

    call_command("migrate", verbosity=0)
    Ward.objects.get_or_create(code=ward_code, defaults={"name": "Alarm bench"})
    # Fresh subjects each run: earlier runs' episodes (some never evaluated, the engine cursor is
    # moved to the present below) must not turn a probe's raise into a recurrence.
    run_tag = time.strftime("%H%M%S")
    devices = []
    for i in range(n_devices):
        if i % 100 == 0:
            print(f"  provisioning {i}/{n_devices}", file=sys.stderr)
        device_id = f"bench-alarm-{i:04d}"
        provisioned = device_provision(device_id=device_id, ward_code=ward_code)
        assert provisioned.private_key_pem is not None
        key = serialization.load_pem_private_key(provisioned.private_key_pem.encode(), password=None)
        pseudonym = f"bench-{run_tag}-{i:04d}"
        patient_admit(pseudonym=pseudonym, ward_code=ward_code, device_id=device_id)
        devices.append({"device_id": device_id, "key_id": provisioned.key.key_id, "key": key, "patient": pseudonym})
    password = os.environ.get("BENCH_PASSWORD", "bench-only-password-not-secret")
    # Monitoring starts with the stream, not when setup began (else every patient is "no data").
    Assignment.objects.filter(device__device_id__startswith="bench-alarm-", end__isnull=True).update(
        start=dt.datetime.now(dt.UTC)
    )
    # The engine starts at the present: earlier bench runs' readings are not re-evaluated. One
    # cursor at the present, which the engine turns into its partitions' cursors at start.
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM telemetry_enginecursor WHERE name LIKE 'engine:%%'")
        cursor.execute(
            "INSERT INTO telemetry_enginecursor (name, position, updated_at) "
            "VALUES ('engine', pg_snapshot_xmin(pg_current_snapshot())::text::bigint, now()) "
            "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()"
        )
    account = staff_upsert(username="bench-oncall", role="oncall", ward_codes=[ward_code], password=password)
    user = account.user
    user.email = "bench-oncall@example.org"  # the raise's email goes to the ward's on-call staff
    user.save(update_fields=["email"])
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session[DEVICE_ID_SESSION_KEY] = TOTPDevice.objects.get(user=user, confirmed=True).persistent_id
    session.save()
    return devices, f"sessionid={session.session_key}"


class Console:
    """An alarm console over WS /ws/alarms/live: a minimal RFC 6455 client on asyncio streams
    (text frames from the server, pings answered), enough to timestamp frames on arrival."""

    def __init__(self) -> None:
        self.raised: dict[str, float] = {}
        self.decided: dict[str, float] = {}  # the engine's `now` for the raise (transition.at)
        self.frames = 0
        self.ready = asyncio.Event()

    async def connect(self, port: int, cookie: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /ws/alarms/live HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://127.0.0.1:{port}\r\nCookie: {cookie}\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"websocket handshake refused: {head[:80]!r}")
        self._task = asyncio.create_task(self._read(reader, writer))
        await asyncio.wait_for(self.ready.wait(), 15)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            b0, b1 = await reader.readexactly(2)
            length = b1 & 0x7F
            if length == 126:
                length = int.from_bytes(await reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await reader.readexactly(8), "big")
            payload = await reader.readexactly(length)
            opcode = b0 & 0x0F
            if opcode == 8:
                print(f"console socket closed: {payload[:2].hex()}", file=sys.stderr)
                return
            if opcode == 9:  # ping → masked pong
                mask = os.urandom(4)
                writer.write(
                    bytes([0x8A, 0x80 | len(payload)]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
                )
                continue
            if opcode == 1:
                self._frame(orjson.loads(payload), time.time())

    def _frame(self, frame: dict[str, Any], now: float) -> None:
        self.frames += 1
        if frame.get("type") == "alarm.snapshot":
            self.ready.set()
        elif (
            frame.get("type") == "alarm.transition"
            and frame["transition"]["cause"] == "raised"
            and frame["alarm"]["kind"] == "critical_low"
        ):
            self.raised.setdefault(frame["patient"], now)
            at = frame["transition"]["at"].replace("Z", "+00:00")
            self.decided.setdefault(frame["patient"], dt.datetime.fromisoformat(at).timestamp())


class Receivers:
    """The far ends of secondary notification, timestamping the first message of each alarm's
    raise on arrival: an SMTP server (accepted = end of DATA) and a webhook receiver."""

    SUBJECT = re.compile(rb"Subject: \[Perfuse\] alarm (\d+) raised")

    def __init__(self) -> None:
        self.secret = secrets.token_hex(16)
        self.email: dict[int, float] = {}
        self.webhook: dict[int, float] = {}
        self.bad_signatures = 0
        self.smtp_port = _free_port()
        self._smtp = Controller(self, hostname="127.0.0.1", port=self.smtp_port)
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        found = self.SUBJECT.search(envelope.content)
        if found:
            self.email.setdefault(int(found.group(1)), now)
        return "250 accepted"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receivers = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.time()
                parts = dict(
                    p.split("=", 1) for p in self.headers.get("X-Perfuse-Signature", "").split(",") if "=" in p
                )
                expected = hmac.new(
                    receivers.secret.encode(), f"{parts.get('t', '')}.".encode() + body, hashlib.sha256
                ).hexdigest()
                if not hmac.compare_digest(expected, parts.get("v1", "")):
                    receivers.bad_signatures += 1
                    self.send_response(401)
                else:
                    data = orjson.loads(body)
                    if data["type"] == "perfuse.alarm.raised":
                        receivers.webhook.setdefault(int(data["alarm"]["alarm"]), now)
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler

    def start(self) -> dict[str, str]:
        """Start both; returns the notifier's environment pointing at them."""
        self._smtp.start()
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return {
            "PERFUSE_SMTP_HOST": "127.0.0.1",
            "PERFUSE_SMTP_PORT": str(self.smtp_port),
            "PERFUSE_SMTP_SECURITY": "none",
            "PERFUSE_WEBHOOK_URL": f"http://127.0.0.1:{self._http.server_address[1]}/perfuse",
            "PERFUSE_WEBHOOK_SECRET": self.secret,
        }

    def stop(self) -> None:
        self._smtp.stop()
        self._http.shutdown()


def _body(dev: dict[str, Any], readings: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps({"schema": "perfuse.readings/1", "device_id": dev["device_id"], "readings": readings})
    stamp = str(int(time.time()))
    signature = dev["key"].sign(stamp.encode() + b"\n" + body)
    return body, {
        "Content-Type": "application/json",
        "X-Perfuse-Key": dev["key_id"],
        "X-Perfuse-Timestamp": stamp,
        "X-Perfuse-Signature": base64.b64encode(signature).decode(),
    }


def _reading(seq: int, t: float, value: float) -> dict[str, Any]:
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"
    return {"seq": seq, "sample_time": iso, "metric": "tissue_o2", "value": value, "unit": "%", "signal_quality": 0.95}


class HttpPool:
    """A lean HTTP/1.1 keep-alive client: N connections, each a worker taking requests from a
    queue. (httpx's pool spent more CPU than the server under thousands of queued requests.)
    `on_sent` is called when a request's bytes are written, which is where the clock starts."""

    def __init__(self, port: int, size: int) -> None:
        self.port, self.size = port, size
        self.queue: asyncio.Queue[tuple[bytes, dict[str, str], Any, asyncio.Future[tuple[int, bytes]]]] = (
            asyncio.Queue()
        )
        self.workers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for _ in range(self.size):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.workers.append(asyncio.create_task(self._work(reader, writer)))

    async def _work(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body, headers, on_sent, future = await self.queue.get()
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(
                (
                    f"POST /api/v1/ingest/readings HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                    f"Content-Length: {len(body)}\r\n{head}\r\n"
                ).encode()
                + body
            )
            on_sent()
            try:
                status_head = await reader.readuntil(b"\r\n\r\n")
                lines = status_head.decode("latin-1").split("\r\n")
                length = next(
                    int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"
                )
                payload = await reader.readexactly(length)
                future.set_result((int(lines[0].split()[1]), payload))
            except (OSError, asyncio.IncompleteReadError, StopIteration) as exc:
                future.set_exception(exc)
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)

    def post(self, body: bytes, headers: dict[str, str], on_sent: Any) -> asyncio.Future[tuple[int, bytes]]:
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((body, headers, on_sent, future))
        return future


async def run(args: argparse.Namespace, devices: list[dict[str, Any]], port: int, console: Console) -> dict[str, Any]:
    rng = random.Random(7)
    probes = devices[: args.probes]
    background = devices[args.probes :]
    start = time.time() + 2
    # Probe i dips at a staggered time, after a warm-up that lets the engine see a normal baseline.
    span = max(args.duration - args.warmup - DIP_SECONDS - 10, 1)
    step = 1.0 / args.hz
    # Aligned to the sample clock, so the reading at onset + delay is exactly one sample.
    dip_at = {
        d["device_id"]: start + round((args.warmup + span * i / max(len(probes), 1)) / step) * step
        for i, d in enumerate(probes)
    }
    crossing_sent: dict[str, float] = {}
    crossing_reading: dict[str, tuple[str, int]] = {}  # patient -> (device, seq) of the crossing reading
    seqs = {d["device_id"]: int(time.time()) * 10 for d in devices}
    pending: dict[str, list[dict[str, Any]]] = {d["device_id"]: [] for d in background}
    pending_probe: dict[str, list[dict[str, Any]]] = {d["device_id"]: [] for d in probes}
    stats: dict[str, Any] = {"requests": 0, "readings": 0, "errors": 0, "statuses": {}, "backlog_max": 0}
    # Probes get their own connections: a backlog of background batches in this client must not
    # delay a probe's send (the clock starts at the send, so it would not count anyway).
    probe_pool, bulk_pool = HttpPool(port, 8), HttpPool(port, args.connections)
    await probe_pool.start()
    await bulk_pool.start()
    tasks: set[asyncio.Task[None]] = set()

    async def post(pool: HttpPool, dev: dict[str, Any], readings: list[dict[str, Any]], crossing: bool) -> None:
        body, headers = _body(dev, readings)
        sent: list[float] = []
        try:
            status, payload = await pool.post(body, headers, lambda: sent.append(time.time()))
        except (OSError, asyncio.IncompleteReadError, StopIteration):
            stats["errors"] += 1
            return
        stats["requests"] += 1
        stats["statuses"][status] = stats["statuses"].get(status, 0) + 1
        if status == 200:
            stats["readings"] += orjson.loads(payload)["accepted"]
            if crossing:
                crossing_sent[dev["patient"]] = sent[0]
                crossing_reading[dev["patient"]] = (dev["device_id"], readings[-1]["seq"])

    def spawn(coro: Any) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    every = max(int(args.batch_seconds * args.hz), 1)
    tick = 0
    while True:
        t = start + tick * step
        if t > start + args.duration:
            break
        await asyncio.sleep(max(0.0, t - time.time()))
        stats["backlog_max"] = max(stats["backlog_max"], bulk_pool.queue.qsize())
        for j, dev in enumerate(probes):
            seqs[dev["device_id"]] += 1
            since = t - dip_at[dev["device_id"]]
            dipping = 0 <= since < DIP_SECONDS
            value = 20.0 + rng.uniform(-1, 1) if dipping else 62.0 + rng.uniform(-2, 2)
            queued = pending_probe[dev["device_id"]]
            queued.append(_reading(seqs[dev["device_id"]], t, value))
            # Around its desaturation a probe sends every reading at once (so the crossing reading
            # is committed at its sample time); otherwise it batches like every other device.
            if -2 <= since <= DIP_SECONDS or j % every == tick % every:
                crossing = abs(since - CRITICAL_DELAY_S) < step / 4
                readings, pending_probe[dev["device_id"]] = queued, []
                spawn(post(probe_pool, dev, readings, crossing))
        for i, dev in enumerate(background):
            seqs[dev["device_id"]] += 1
            pending[dev["device_id"]].append(_reading(seqs[dev["device_id"]], t, 62.0 + rng.uniform(-2, 2)))
            # Background devices flush in a rolling order so the load is even across the batch period.
            if i % every == tick % every:
                readings, pending[dev["device_id"]] = pending[dev["device_id"]], []
                spawn(post(bulk_pool, dev, readings, False))
        tick += 1
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    await asyncio.sleep(3)  # frames still in flight
    elapsed = time.time() - start
    return {
        "crossing_sent": crossing_sent,
        "crossing_reading": crossing_reading,
        "probes": len(probes),
        "crossings": len(crossing_sent),
        "elapsed": elapsed,
        **stats,
    }


def commit_times(readings: dict[str, tuple[str, int]]) -> dict[str, float]:
    """Commit time of each crossing reading's ingest transaction, when the server tracks commit
    timestamps (track_commit_timestamp = on); else empty."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW track_commit_timestamp")
        if cursor.fetchone()[0] != "on" or not readings:
            return {}
        by_key = {v: k for k, v in readings.items()}
        cursor.execute(
            "SELECT d.device_id, r.seq, pg_xact_commit_timestamp(xid(r.ingest_txid::text::xid8)) "
            "FROM telemetry_reading r JOIN telemetry_device d ON d.id = r.device_id "
            "WHERE r.metric = 'tissue_o2' AND (d.device_id, r.seq) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))",
            [[k[0] for k in by_key], [k[1] for k in by_key]],
        )
        return {by_key[(device, seq)]: t.timestamp() for device, seq, t in cursor.fetchall() if t is not None}


def raise_commit_times(patients: list[str]) -> dict[str, float]:
    """Commit time of the engine transaction that raised each patient's critical_low alarm (the
    `raised` transition row is never updated, so its xmin is that transaction)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.pseudonym, pg_xact_commit_timestamp(t.xmin) FROM alerts_alarmtransition t "
            "JOIN alerts_alarm a ON a.id = t.alarm_id JOIN telemetry_patient p ON p.id = a.patient_id "
            "WHERE t.cause = 'raised' AND a.kind = 'critical_low' AND p.pseudonym = ANY(%s)",
            [patients],
        )
        return {p: t.timestamp() for p, t in cursor.fetchall() if t is not None}


def raised_alarm_ids(patients: list[str]) -> dict[int, str]:
    """The critical_low alarm of each probe patient: alarm id → pseudonym."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.id, p.pseudonym FROM alerts_alarm a JOIN telemetry_patient p ON p.id = a.patient_id "
            "WHERE a.kind = 'critical_low' AND p.pseudonym = ANY(%s)",
            [patients],
        )
        return dict(cursor.fetchall())


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--hz", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of streaming")
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--probes", type=int, default=100, help="devices that desaturate once each")
    parser.add_argument("--batch-seconds", type=float, default=15.0, help="devices post their readings this often")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--ward", default="bench-alarms")
    parser.add_argument("--engine", default="manage.py run_engine", help="engine command (run with this Python)")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # the SMTP server logs every command

    # A SIGTERM (e.g. from `timeout`) must still stop Daphne and the engine in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"setting up {args.devices} devices…", file=sys.stderr)
    devices, cookie = setup(args.devices, args.ward)
    port = _free_port()
    receivers = Receivers()
    env = {**os.environ, **receivers.start()}
    logs = ROOT / ".data" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    venv_bin = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [str(venv_bin / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=open(logs / "daphne.log", "wb"),  # noqa: SIM115 (lives as long as the process)
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [sys.executable, *shlex.split(args.engine)],
            cwd=ROOT,
            env=env,
            stdout=open(logs / "engine.log", "wb"),  # noqa: SIM115 (lives as long as the process)
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [sys.executable, "manage.py", "run_notifier"],
            cwd=ROOT,
            env=env,
            stdout=open(logs / "notifier.log", "wb"),  # noqa: SIM115 (lives as long as the process)
            stderr=subprocess.STDOUT,
        ),
    ]
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        console = Console()

        async def go() -> dict[str, Any]:
            await console.connect(port, cookie)
            return await run(args, devices, port, console)

        result = asyncio.run(go())
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        receivers.stop()
    committed = commit_times(result["crossing_reading"])
    start_of = committed if committed else result["crossing_sent"]
    clock = (
        "commit (pg_xact_commit_timestamp)"
        if committed
        else "request send (upper bound: track_commit_timestamp is off)"
    )
    raised, decided = console.raised, console.decided
    lat = sorted((raised[p] - t0) * 1000 for p, t0 in start_of.items() if p in raised)
    result["engine_ms"] = sorted((decided[p] - t0) * 1000 for p, t0 in start_of.items() if p in decided)
    result["delivery_ms"] = sorted((raised[p] - decided[p]) * 1000 for p in start_of if p in raised)
    engine_commit = raise_commit_times(list(start_of)) if committed else {}
    result["work_ms"] = sorted((engine_commit[p] - decided[p]) * 1000 for p in engine_commit if p in decided)
    result["publish_ms"] = sorted((raised[p] - engine_commit[p]) * 1000 for p in engine_commit if p in raised)
    rate = result["readings"] / result["elapsed"]
    print(
        f"devices={args.devices} hz={args.hz} duration={args.duration:.0f}s "
        f"batch={args.batch_seconds}s probes={args.probes}"
    )
    print(
        f"ingest: {result['requests']} requests, {result['readings']} readings accepted ({rate:.0f}/s), "
        f"statuses {result['statuses']}, errors {result['errors']}, client backlog max {result['backlog_max']}"
    )
    print(
        f"critical_low raises seen at the console: {len(lat)} of {result['crossings']} crossings; "
        f"clock starts at {clock}"
    )
    if lat:
        print(
            "commit→console latency beyond the rule's 10 s delay (ms): "
            f"p50 {statistics.median(lat):.0f}  p99 {_pct(lat, 0.99):.0f}  max {lat[-1]:.0f}  (target p99 < 500)"
        )
        parts = (
            ("reading commit→engine decision (loop wait)", "engine_ms"),
            ("engine decision→console frame", "delivery_ms"),
            ("  of which decision→engine commit (batch work)", "work_ms"),
            ("  of which engine commit→console frame (publish)", "publish_ms"),
        )
        for name, key in parts:
            part = result[key]
            if not part:
                continue
            print(f"  {name} (ms): p50 {statistics.median(part):.0f}  p99 {_pct(part, 0.99):.0f}  max {part[-1]:.0f}")
    _notification_report(receivers, list(start_of), decided, engine_commit)


def _notification_report(
    receivers: Receivers, patients: list[str], decided: dict[str, float], engine_commit: dict[str, float]
) -> None:
    """Raise commit (or decision) → email accepted and → webhook received, per probe alarm."""
    start = engine_commit or decided
    clock = "raise commit (pg_xact_commit_timestamp)" if engine_commit else "engine decision (commit times off)"
    ids = raised_alarm_ids(patients)
    print(f"secondary notification of {len(ids)} critical_low raises; clock starts at {clock}")
    if receivers.bad_signatures:
        print(f"  webhook requests with a bad signature: {receivers.bad_signatures}")
    for name, arrived in (
        ("email accepted by the SMTP server", receivers.email),
        ("webhook received", receivers.webhook),
    ):
        lat = sorted((arrived[a] - start[p]) * 1000 for a, p in ids.items() if a in arrived and p in start)
        if not lat:
            print(f"  alarm.transition commit→{name}: none arrived")
            continue
        print(
            f"  alarm.transition commit→{name} (ms): p50 {statistics.median(lat):.0f}  "
            f"p99 {_pct(lat, 0.99):.0f}  max {lat[-1]:.0f}  ({len(lat)} of {len(ids)})"
        )


if __name__ == "__main__":
    main()
