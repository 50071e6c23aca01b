"""Fleet benchmark (issue 10.7): devices sampling at 1 Hz and sending every sample within its
second, over MQTT (the broker, the bridge, group commit), through edge gateways (MQTT and HTTP)
and, for comparison, over HTTP; with an alarm console watching.

    .venv/bin/python bench/fleet.py [--devices 300] [--clients 30] [--duration 30]
        [--phases mqtt,gateway-mqtt,gateway-http,http,http+group] [--gateways G] [--alarm-devices K]

Never touches the demo: it starts a throwaway PostgreSQL and Redis (scripts/lib.sh, fsync off as
bench/live.py does), a fresh database, a Mosquitto of its own over mutual TLS with a throwaway
deployment CA (telemetry.mqtt_broker.broker_setup, as `make run`), Daphne, the engine and one
MQTT bridge (`run_mqtt_ingest`). It provisions N devices each on its own patient (bench/live.py,
bulk inserts), a certificate for each device's Ed25519 key, G gateways of the devices' ward (the
devices spread over them round robin, contract 1c) with a certificate each, an on-call user with
an OTP-verified session, and opens C browser-like WebSockets to the first C patients' charts and
one alarm console (`WS /ws/alarms/live`). Then, for each selected door in turn (`--phases`, in
this order; each after a 2 s warm-up of its own):

- `mqtt`: every device takes one tissue-O2 sample a second at its own phase within the second
  (its `sample_time` is that scheduled instant) and publishes it at once, alone in its
  message, on its own mutual-TLS connection, whether or not its previous sample was acknowledged
  yet (an in-flight window, as a device has); the devices run in --workers processes of their
  own (bench/fleet_load.py), connected once before the phase's warm-up;
- `gateway-mqtt`, `gateway-http`: every device samples once a second at its own phase and signs
  its one-reading part with its own key when it samples; every gateway sends ONE outer message a
  second carrying every part of its devices not acknowledged yet (normally each one's newest),
  waits for its ack (MQTT, its own mutual-TLS connection) or answer (HTTP, one keep-alive
  connection per gateway), and sends again what was not acknowledged (bench/fleet_load.py). The
  devices and gateways run in --workers processes of their own, forked before any event loop;
- `http`: one keep-alive connection per device, a transaction per request; `http+group`: the same
  to a second Daphne whose HTTP door commits through the group writer
  (PERFUSE_INGEST_HTTP_GROUP=1), to answer whether HTTP should use it.

Measured in each phase:

- sample -> screen: each point's arrival on a patient socket minus its `sample_time` (same host,
  same clock), p50/p99 over the subscribed patients;
- sample -> console: K alarm devices (`--alarm-devices`, 1 % of the fleet by default, at least 5,
  different devices in each phase) drop below the ward's critical-low threshold (its real alarm
  rule, alerts.services.rules.rule_current_ward) for longer than the rule's delay, at staggered
  times; the figure is the arrival of the `alarm.transition` raised frame of that patient's
  critical_low alarm at the console minus (the first low sample's `sample_time` + the rule's
  delay), p50/p99. Beside it the same for rapid_fall, a rule without delay, raised by the first
  low sample itself;
- messages/s acknowledged (gateways: outer messages/s and readings/s), and acknowledged vs stored
  readings of the phase (must be equal); per-device result codes other than 200 (gateways);
- CPU per 1,000 messages (gateways: per 1,000 readings) of each process: broker, bridge, Daphne,
  engine, PostgreSQL (postmaster and backends), the load generator (its main process: sockets and
  console; the HTTP devices) and the generator workers (MQTT devices, gateways); the load
  average; and for the worker phases how late the workers made samples against their schedule
  (when that grows, the load generator is the bound, not the server).

The CPU of both Daphne processes is counted together (the patient sockets are on the first).
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import multiprocessing
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleet_load import (  # noqa: E402
    CONNECT,
    DIRECT,
    Dips,
    Hub,
    Member,
    PhaseSpec,
    Shard,
    body_for,
    late_summary,
    merged,
    shard_main,
    signed,
)
from bench.live import Http, WebSocket, cpu_seconds, fresh_database, pct, provision  # noqa: E402
from bench.servers import start_services  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
DAPHNE = str(ROOT / ".venv" / "bin" / "daphne")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def note(what: str) -> None:
    """Progress on stderr (a large fleet's setup takes minutes)."""
    print(f"{time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def wait_port(port: int, what: str) -> None:
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


def postgres_cpu(pg_dir: Path) -> float:
    """CPU seconds of the postmaster and all its current children."""
    pid = int((pg_dir / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout.split()
    total = 0.0
    for p in [pid, *map(int, children)]:
        with contextlib.suppress(OSError):  # a backend that just exited
            total += cpu_seconds(p)
    return total


PHASES = ("mqtt", "gateway-mqtt", "gateway-http", "http", "http+group")
SEQ_SPAN = 500_000  # a phase's seqs: (base, base + SEQ_SPAN]; its warm-up's lie below the base
WARD = "bench"


@dataclass
class Phase:
    name: str
    sent: dict[tuple[str, int], float] = field(default_factory=dict)  # (pseudonym, seq) -> sample_time
    arrived: dict[tuple[str, int], float] = field(default_factory=dict)
    acknowledged: int = 0  # messages answered 200 (each one reading)
    failed: dict[str, int] = field(default_factory=dict)
    answer_ms: list[float] = field(default_factory=list)
    crossings: dict[str, float] = field(default_factory=dict)  # alarm patient -> first low sample_time


@dataclass(frozen=True)
class Rule:
    """The ward's critical-low rule as the engine applies it."""

    threshold: float
    delay_s: float


class Console:
    """The on-call alarm console (WS /ws/alarms/live): when each patient's raise of each kind arrived."""

    def __init__(self) -> None:
        self.raised: dict[tuple[str, str], float] = {}  # (pseudonym, kind) -> arrival
        self.frames = 0

    async def open(self, port: int, session_key: str) -> asyncio.Task[None]:
        for attempt in range(60):
            try:
                ws = await WebSocket.connect(port, "/ws/alarms/live", session_key)
                break
            except (OSError, asyncio.IncompleteReadError, RuntimeError):
                if attempt == 59:
                    raise
                await asyncio.sleep(0.5)
        first = orjson.loads(await ws.recv() or b"{}")
        if first.get("type") != "alarm.snapshot":
            raise RuntimeError(f"the alarm console did not start with its snapshot: {first}")
        return asyncio.create_task(self._listen(ws))

    async def _listen(self, ws: WebSocket) -> None:
        while (message := await ws.recv()) is not None:
            now = time.time()
            frame = orjson.loads(message)
            for f in frame["frames"] if frame["type"] == "frames" else [frame]:
                self.frames += 1
                if f["type"] == "alarm.transition" and f["transition"]["cause"] == "raised":
                    self.raised.setdefault((f["patient"], f["alarm"]["kind"]), now)


async def device_loop(
    sender: Http,
    device: tuple[str, str, Any],
    index: int,
    pseudonym: str,
    base_seq: int,
    offset: float,
    stop_at: float,
    phase: Phase,
    dips: Dips,
) -> None:
    device_id, key_id, private = device
    await asyncio.sleep(offset)
    t = time.time()
    seq = base_seq
    while t < stop_at:
        seq += 1
        body = body_for(device_id, seq, t, dips.value(index, t))
        headers = signed(key_id, private, body)
        phase.sent[(pseudonym, seq)] = t
        if dips.crossing(index, t):
            phase.crossings.setdefault(pseudonym, t)
        started = time.perf_counter()
        try:
            status = await sender.post("/api/v1/ingest/readings", body, {"Content-Type": "application/json", **headers})
        except (OSError, asyncio.IncompleteReadError):
            status, sender.writer = 0, None
        phase.answer_ms.append((time.perf_counter() - started) * 1000)
        if status == 200:
            phase.acknowledged += 1
        else:
            phase.failed[str(status)] = phase.failed.get(str(status), 0) + 1
        t += 1.0
        await asyncio.sleep(max(0.0, t - time.time()))


async def listen(ws: WebSocket, pseudonym: str, phase_of: list[Phase]) -> None:
    while (message := await ws.recv()) is not None:
        now = time.time()
        frame = orjson.loads(message)
        for f in frame["frames"] if frame["type"] == "frames" else [frame]:
            if f["type"] == "reading.batch":
                for p in f["points"]:
                    phase_of[0].arrived.setdefault((pseudonym, p["seq"]), now)


async def socket_open(port: int, pseudonym: str, session_key: str) -> WebSocket:
    """A patient socket; Daphne on a loaded machine may still be loading Django at first."""
    for attempt in range(60):
        try:
            return await WebSocket.connect(port, f"/ws/patients/{pseudonym}/live", session_key)
        except (OSError, asyncio.IncompleteReadError, RuntimeError):
            if attempt == 59:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


@dataclass
class Procs:
    pids: dict[str, int]
    pg_dir: Path

    def cpu(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for name, pid in self.pids.items():
            key = name.split("-")[0]  # both Daphne processes together, the generator workers together
            found[key] = found.get(key, 0.0) + cpu_seconds(pid)
        found["postgresql"] = postgres_cpu(self.pg_dir)
        found["load generator"] = time.process_time()
        return found


@dataclass
class Bench:
    """What every phase needs."""

    args: argparse.Namespace
    fleet: Any
    procs: Procs
    phase_of: list[Phase]
    database_url: str
    console: Console
    rule: Rule
    alarm_devices: list[list[int]]  # per selected phase, its alarm devices' indexes


def dips_for(bench: Bench, phase_number: int, start: float) -> Dips:
    """The phase's alarm devices drop below the critical threshold at staggered times, each for
    the rule's delay + 4 s, after 5 s of normal signal; aligned to whole seconds after `start`."""
    devices = bench.alarm_devices[phase_number]
    seconds = bench.rule.delay_s + 4
    room = bench.args.duration - 5 - seconds - 3
    if room < 0 or not devices:
        return Dips()
    starts = {index: start + 5 + round(room * k / max(1, len(devices) - 1)) for k, index in enumerate(devices)}
    return Dips(starts, seconds, low=max(0.0, bench.rule.threshold - 5))


def stored_count(database_url: str, base_seq: int) -> int:
    import psycopg

    with psycopg.connect(database_url) as conn:
        ((stored,),) = conn.execute(
            "SELECT count(*) FROM telemetry_reading WHERE seq > %s AND seq <= %s", [base_seq, base_seq + SEQ_SPAN]
        ).fetchall()
    return int(stored)


def figures(
    bench: Bench, phase: Phase, elapsed: float, units: int, cpu: tuple[dict[str, float], dict[str, float]]
) -> dict[str, Any]:
    """What every phase reports: sample -> screen, sample -> console, CPU per 1,000 `units`."""
    subscribed = set(bench.fleet.pseudonyms[: bench.args.clients])
    latencies = [
        (phase.arrived[key] - t) * 1000
        for key, t in phase.sent.items()
        if key[0] in subscribed and key in phase.arrived
    ]
    expected = sum(1 for key in phase.sent if key[0] in subscribed)
    raised = bench.console.raised
    delay = bench.rule.delay_s
    critical = [
        (raised[(p, "critical_low")] - (t + delay)) * 1000
        for p, t in phase.crossings.items()
        if (p, "critical_low") in raised
    ]
    rapid = [(raised[(p, "rapid_fall")] - t) * 1000 for p, t in phase.crossings.items() if (p, "rapid_fall") in raised]
    before, after = cpu
    return {
        "seconds": elapsed,
        "screen_points": f"{len(latencies)}/{expected}",
        "screen_p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "screen_p99_ms": pct(latencies, 0.99) if latencies else float("nan"),
        "console": {
            "crossings": len(phase.crossings),
            "critical_low_ms": sorted(critical),
            "rapid_fall_ms": sorted(rapid),
        },
        "cpu_ms_per_1000": {
            name: (after[name] - before[name]) / units * 1000 * 1000 if units else float("nan") for name in after
        },
        "cores": {name: (after[name] - before[name]) / elapsed for name in after},
    }


async def run_phase(
    door: str, bench: Bench, senders: list[Http], base_seq: int, *, warm: bool = False, number: int = 0
) -> dict[str, Any]:
    """The HTTP door: every device on its own keep-alive connection."""
    args, fleet, procs = bench.args, bench.fleet, bench.procs
    phase = Phase(door)
    bench.phase_of[0] = phase
    n = len(fleet.devices)
    cpu_before, load_before = procs.cpu(), os.getloadavg()
    start = time.time()
    duration = 2 if warm else args.duration
    stop_at = start + duration
    dips = Dips() if warm else dips_for(bench, number, start)
    await asyncio.gather(
        *(
            device_loop(senders[i], d, i, fleet.pseudonyms[i], base_seq, i / n, stop_at, phase, dips)
            for i, d in enumerate(fleet.devices)
        )
    )
    elapsed = time.time() - start
    cpu_after, load = procs.cpu(), os.getloadavg()
    await asyncio.sleep(3)  # the last frames
    messages = phase.acknowledged + sum(phase.failed.values())
    return {
        "door": door,
        "messages_per_s": phase.acknowledged / elapsed,
        "acknowledged": phase.acknowledged,
        "stored": stored_count(bench.database_url, base_seq),
        "failed": phase.failed,
        "answer_p50_ms": statistics.median(phase.answer_ms) if phase.answer_ms else 0.0,
        "answer_p99_ms": pct(phase.answer_ms, 0.99) if phase.answer_ms else 0.0,
        "load": (load_before, load),
        **figures(bench, phase, elapsed, messages, (cpu_before, cpu_after)),
    }


async def run_worker_phase(
    door: str, bench: Bench, workers: list[Connection], base_seq: int, *, warm: bool = False, number: int = 0
) -> dict[str, Any]:
    """Edge gateways over `door` (mqtt or http), or the directly connected MQTT devices (DIRECT),
    run by the generator workers."""
    args = bench.args
    phase = Phase("mqtt" if door == DIRECT else f"gateway-{door}")
    bench.phase_of[0] = phase
    cpu_before, load_before = bench.procs.cpu(), os.getloadavg()
    start = time.time() + 1.0  # the workers are told first
    duration = 2 if warm else args.duration
    dips = Dips() if warm else dips_for(bench, number, start)
    spec = PhaseSpec(door, base_seq, start, start + duration, frozenset(range(args.clients)), dips, args.drain)
    loop = asyncio.get_running_loop()
    for conn in workers:
        conn.send(spec)
    result = merged(await asyncio.gather(*(loop.run_in_executor(None, conn.recv) for conn in workers)))
    cpu_after, load = bench.procs.cpu(), os.getloadavg()
    elapsed = max(result.finished, start + duration) - start
    phase.sent.update(result.sent)
    phase.crossings.update(result.crossings)
    await asyncio.sleep(3)  # the last frames
    both = {
        "door": phase.name,
        "acknowledged": result.acknowledged,
        "unacknowledged": result.unacknowledged,
        "stored": stored_count(bench.database_url, base_seq),
        "answer_p50_ms": statistics.median(result.answer_ms) if result.answer_ms else 0.0,
        "answer_p99_ms": pct(result.answer_ms, 0.99) if result.answer_ms else 0.0,
        "late": late_summary(result.late_ms),
        "load": (load_before, load),
    }
    if door == DIRECT:  # per message sent (one reading each)
        return {
            **both,
            "messages_per_s": result.acknowledged / elapsed,
            "failed": dict(result.codes),
            **figures(bench, phase, elapsed, result.samples, (cpu_before, cpu_after)),
        }
    return {  # per reading acknowledged
        **both,
        "gateway": True,
        "sampling_s": duration,
        "samples_per_s": result.samples / duration,
        "messages_per_s": result.outer_acknowledged / elapsed,
        "readings_per_s": result.acknowledged / elapsed,
        "outer_sent": result.outer_sent,
        "outer_acknowledged": result.outer_acknowledged,
        "failed": dict(result.outer_failed),
        "codes": dict(result.codes),
        "backoffs": len(result.backoff_s),
        "backoff_p50_s": statistics.median(result.backoff_s) if result.backoff_s else 0.0,
        **figures(bench, phase, elapsed, result.acknowledged, (cpu_before, cpu_after)),
    }


async def workers_connect(workers: list[Connection]) -> None:
    """Every worker's direct devices connected and subscribed to their acks."""
    now = time.time()
    spec = PhaseSpec(CONNECT, 0, now, now, frozenset(), Dips())
    loop = asyncio.get_running_loop()
    for conn in workers:
        conn.send(spec)
    await asyncio.gather(*(loop.run_in_executor(None, conn.recv) for conn in workers))


def _ms(values: list[float]) -> str:
    if not values:
        return "none arrived"
    return f"p50 {statistics.median(values):.0f} ms p99 {pct(values, 0.99):.0f} ms max {values[-1]:.0f} ms"


def report(result: dict[str, Any], rule: Rule) -> None:
    if result.get("gateway"):
        print(
            f"--- {result['door']}: {result['seconds']:.0f} s ({result['sampling_s']} s of sampling, then the "
            f"gateways sent what was unacknowledged)"
        )
        print(
            f"samples made {result['samples_per_s']:.0f}/s; outer messages/s acknowledged "
            f"{result['messages_per_s']:.0f} ({result['outer_acknowledged']} of {result['outer_sent']} sent); "
            f"readings/s acknowledged {result['readings_per_s']:.0f}; acknowledged {result['acknowledged']} vs stored "
            f"{result['stored']}, unacknowledged at the end {result['unacknowledged']}"
        )
        print(
            f"outer messages not answered 200: {result['failed'] or 'none'}; per-device results not 200: "
            f"{result['codes'] or 'none'}; answer p50 {result['answer_p50_ms']:.1f} ms "
            f"p99 {result['answer_p99_ms']:.1f} ms; gateways backed off {result['backoffs']} times "
            f"(p50 {result['backoff_p50_s']:.1f} s)"
        )
        print(f"samples made late against the devices' 1 Hz schedule (generator workers): {result['late']}")
    else:
        print(f"--- {result['door']}: {result['seconds']:.0f} s")
        unanswered = f" ({result['unacknowledged']} not answered at the end)" if "unacknowledged" in result else ""
        print(
            f"messages/s acknowledged {result['messages_per_s']:.0f}; acknowledged {result['acknowledged']} vs stored "
            f"{result['stored']}{unanswered}; not answered 200: {result['failed'] or 'none'}; "
            f"answer p50 {result['answer_p50_ms']:.1f} ms p99 {result['answer_p99_ms']:.1f} ms"
        )
        if "late" in result:
            print(f"samples made late against the devices' 1 Hz schedule (generator workers): {result['late']}")
    print(
        f"sample -> screen ({result['screen_points']} points of subscribed patients): "
        f"p50 {result['screen_p50_ms']:.0f} ms p99 {result['screen_p99_ms']:.0f} ms"
    )
    console = result["console"]
    if console["crossings"]:
        print(
            f"sample -> console, critical_low beyond the rule's {rule.delay_s:g} s delay "
            f"({len(console['critical_low_ms'])} raises of {console['crossings']} dips): "
            f"{_ms(console['critical_low_ms'])}; "
            f"rapid_fall (no delay; {len(console['rapid_fall_ms'])}): {_ms(console['rapid_fall_ms'])}"
        )
    unit = "readings" if result.get("gateway") else "messages"
    cpu = ", ".join(
        f"{name} {ms:.1f} ms ({result['cores'][name]:.2f} cores)" for name, ms in result["cpu_ms_per_1000"].items()
    )
    print(f"CPU per 1,000 {unit}: {cpu}")
    before, after = result["load"]
    print(f"load average before {before[0]:.2f}, after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")


def server_ms(result: dict[str, Any]) -> float:
    return float(
        sum(v for k, v in result["cpu_ms_per_1000"].items() if k not in ("load generator", "generator workers"))
    )


async def main_async(
    bench: Bench,
    ports: tuple[int, int],
    workers: list[Connection],
    console_session: str,
) -> None:
    args, fleet = bench.args, bench.fleet
    port, group_port = ports
    note("opening the alarm console and the patient sockets")
    console_task = await bench.console.open(port, console_session)
    sockets = []
    for pseudonym in fleet.pseudonyms[: args.clients]:
        ws = await socket_open(port, pseudonym, fleet.session_key)
        await ws.recv()  # the snapshot
        sockets.append(asyncio.create_task(listen(ws, pseudonym, bench.phase_of)))
    results = []
    for number, name in enumerate(p for p in PHASES if p in args.phases):
        base = (PHASES.index(name) + 1) * 1_000_000
        note(f"phase {name}")
        if name == "mqtt":
            # Connect every device, then warm the bridge (2 s of samples) before measuring.
            began = time.time()
            await workers_connect(workers)
            note(f"{len(fleet.devices)} devices connected over mutual TLS in {time.time() - began:.0f} s")
            await run_worker_phase(DIRECT, bench, workers, base - SEQ_SPAN, warm=True)
            results.append(await run_worker_phase(DIRECT, bench, workers, base, number=number))
        elif name.startswith("gateway-"):
            door = name.removeprefix("gateway-")
            await run_worker_phase(door, bench, workers, base - SEQ_SPAN, warm=True)
            results.append(await run_worker_phase(door, bench, workers, base, number=number))
        else:
            https = [Http(group_port if name == "http+group" else port) for _ in fleet.devices]
            await run_phase("http", bench, https, base - SEQ_SPAN, warm=True)
            result = await run_phase("http", bench, https, base, number=number)
            results.append({**result, "door": name})
            for client in https:
                if client.writer is not None:
                    client.writer.close()
    for task in [*sockets, console_task]:
        task.cancel()
    print(
        f"devices {len(fleet.devices)} at 1 Hz, each sample sent in its own message at once (gateways: "
        f"{args.gateways}, one outer message a second each); {len(sockets)} patient sockets, one alarm console; "
        f"ward rule critical_low below {bench.rule.threshold:g} % for {bench.rule.delay_s:g} s"
    )
    for result in results:
        report(result, bench.rule)
    by_door = {r["door"]: r for r in results}
    if "mqtt" in by_door and "http" in by_door:
        mq, http = by_door["mqtt"], by_door["http"]
        print(
            f"MQTT / HTTP: sample->screen p99 {mq['screen_p99_ms']:.0f} / {http['screen_p99_ms']:.0f} ms; server CPU "
            f"per 1,000 messages (broker+bridge+Daphne+engine+PostgreSQL) "
            f"{server_ms(mq):.0f} / {server_ms(http):.0f} ms"
        )
    for name in ("gateway-mqtt", "gateway-http"):
        if name in by_door:
            gw = by_door[name]
            print(
                f"{name}: sample->screen p99 {gw['screen_p99_ms']:.0f} ms; server CPU per 1,000 readings "
                f"{server_ms(gw):.0f} ms"
            )


def mqtt_identity(authority: Any, cn: str, private: Any) -> Any:
    """A device's or gateway's MQTT TLS identity: its Ed25519 key and a one-day client certificate
    for it from the bench's deployment CA."""
    from cryptography.hazmat.primitives import serialization

    from telemetry import pki
    from telemetry.simulator.transport import Identity

    certificate = pki.certificate_build(authority, cn=cn, public_key=private.public_key(), days=1)
    return Identity(
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        private_key_pem=private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )


def provision_gateways(fleet: Any, count: int, authority: Any) -> tuple[list[Any], dict[str, Any]]:
    """`count` gateways of the bench ward (bulk inserts in the throwaway database, as the devices),
    each with an Ed25519 key and a client certificate; the devices spread over them round robin.
    Returns the hubs and the gateways' MQTT identities."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from telemetry.models import Gateway, GatewayKey, Ward

    ward = Ward.objects.get(code=WARD)
    keys = [Ed25519PrivateKey.generate() for _ in range(count)]
    ids = [f"hub-{WARD}-{g:04d}" for g in range(count)]
    gateways = Gateway.objects.bulk_create([Gateway(gateway_id=i, ward=ward, scope=Gateway.Scope.WARD) for i in ids])
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    GatewayKey.objects.bulk_create(
        [
            GatewayKey(key_id=f"g-{WARD}-{g:04d}", gateway=gw, public_key=k.public_key().public_bytes(*raw))
            for g, (gw, k) in enumerate(zip(gateways, keys, strict=True))
        ]
    )
    members: list[list[Member]] = [[] for _ in range(count)]
    for i, ((device_id, key_id, private), pseudonym) in enumerate(zip(fleet.devices, fleet.pseudonyms, strict=True)):
        members[i % count].append(Member(i, device_id, key_id, private, pseudonym))
    hubs = [Hub(ids[g], f"g-{WARD}-{g:04d}", keys[g], members[g]) for g in range(count)]
    identities = {
        gateway_id: mqtt_identity(authority, gateway_id, private) for gateway_id, private in zip(ids, keys, strict=True)
    }
    return hubs, identities


def console_session() -> str:
    """An on-call nurse of the bench ward with an OTP-verified session; its session key."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from audit.access.staff import staff_upsert

    account = staff_upsert(
        username="bench-oncall", role="oncall", ward_codes=[WARD], password=secrets.token_urlsafe(16)
    )
    session = SessionStore()
    session[SESSION_KEY] = str(account.user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = account.user.get_session_auth_hash()
    session[DEVICE_ID_SESSION_KEY] = TOTPDevice.objects.get(user=account.user, confirmed=True).persistent_id
    session.save()
    return session.session_key or ""


def ward_rule() -> Rule:
    from alerts.services.rules import rule_current_ward
    from telemetry.models import Ward

    rule = rule_current_ward(Ward.objects.get(code=WARD))
    return Rule(float(rule.critical_threshold), float(rule.critical_delay_s))


def alarm_devices(args: argparse.Namespace, phases: int) -> list[list[int]]:
    """K devices per selected phase, distinct across phases (a second dip of the same patient would
    be a recurrence of its open alarm, not a raise), none of them a subscribed patient's."""
    k = args.alarm_devices
    if args.devices - args.clients < k * phases:
        raise SystemExit(f"--alarm-devices {k} x {phases} phases do not fit beside {args.clients} subscribed patients")
    return [list(range(args.devices - (p + 1) * k, args.devices - p * k)) for p in range(phases)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma list among {', '.join(PHASES)}")
    parser.add_argument("--gateways", type=int, default=0, help="default: one per 100 devices")
    parser.add_argument(
        "--alarm-devices", type=int, default=0, help="per phase; default: 1 %% of the devices, at least 5"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="processes running the MQTT devices, the gateways and their devices"
    )
    parser.add_argument("--drain", type=float, default=20.0, help="seconds gateways may resend after sampling ends")
    parser.add_argument("--profile-bridge", default="", help="write a cProfile of the bridge to this file")
    args = parser.parse_args()
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose among {', '.join(PHASES)}")
    args.gateways = args.gateways or max(1, args.devices // 100)
    args.alarm_devices = args.alarm_devices or max(5, args.devices // 100)
    args.clients = min(args.clients, args.devices)
    return args


def fork_workers(
    args: argparse.Namespace,
    hubs: list[Any],
    devices: list[Member],
    port: int,
    broker: Any,
    identities: dict[str, Any],
) -> tuple[list[Connection], list[int]]:
    """The generator workers, each with every `workers`-th gateway and every `workers`-th directly
    connected device, forked before any event loop and with no database connection open (the
    parent's would be shared)."""
    from django.db import connections

    connections.close_all()
    context = multiprocessing.get_context("fork")
    conns, pids = [], []
    for w in range(min(args.workers, max(len(hubs), len(devices)))):
        mine, direct = hubs[w :: args.workers], devices[w :: args.workers]
        owners = [h.gateway_id for h in mine] + [d.device_id for d in direct]
        shard = Shard(mine, port, broker.url, str(broker.ca), {o: identities[o] for o in owners}, direct)
        parent, child = context.Pipe()
        process = context.Process(target=shard_main, args=(child, shard), daemon=True)
        process.start()
        conns.append(parent)
        pids.append(process.pid or 0)
    return conns, pids


def main() -> None:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="perfuse-bench-fleet-"))
    os.chmod(tmp, 0o755)  # noqa: S103 (the unprivileged PostgreSQL and Mosquitto must reach their dirs)
    # Always our own servers: a benchmark never writes into a demo's database.
    db, redis, stop = start_services(tmp)
    os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = fresh_database(db), redis
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    os.environ.setdefault("PERFUSE_CHANNEL_PREFIX", f"bench{os.getpid()}")
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)
    began = time.time()
    fleet = provision(args.devices)
    rule, session = ward_rule(), console_session()
    from telemetry.models import Assignment

    # Monitoring starts now, not an hour ago as bench/live.py's assignments do: the engine would
    # otherwise raise a no-data alarm for every patient at its start (and escalate them all through
    # the run), and with thousands of them the console's snapshot exceeds Daphne's 1 MiB frame.
    Assignment.objects.filter(device__ward__code=WARD, end__isnull=True).update(start=dt.datetime.now(dt.UTC))

    from telemetry import pki
    from telemetry.mqtt_broker import broker_setup

    mqtt_port = free_port()
    run_as = "mosquitto" if os.geteuid() == 0 else None
    broker = broker_setup(state=tmp / "mqtt", pki_dir=tmp / "pki", port=mqtt_port, run_as=run_as)
    authority = pki.authority_load(tmp / "pki")
    assert authority is not None
    devices = fleet.devices if "mqtt" in args.phases else []
    identities = {device_id: mqtt_identity(authority, device_id, private) for device_id, _key_id, private in devices}
    direct = [
        Member(i, device_id, key_id, private, fleet.pseudonyms[i])
        for i, (device_id, key_id, private) in enumerate(devices)
    ]
    gateway_phases = any(p.startswith("gateway-") for p in args.phases)
    hubs, hub_identities = provision_gateways(fleet, args.gateways, authority) if gateway_phases else ([], {})
    note(f"provisioned {args.devices} devices, {len(hubs)} gateways, their certificates in {time.time() - began:.0f} s")
    port, group_port = free_port(), free_port()
    workers, worker_pids = (
        fork_workers(args, hubs, direct, port, broker, {**identities, **hub_identities})
        if gateway_phases or direct
        else ([], [])
    )
    env = {
        **os.environ,
        "LOG_LEVEL": "WARNING",
        "PERFUSE_INGEST_POOL_SIZE": "16",
        "MQTT_URL": broker.url,
        "MQTT_CA_FILE": str(broker.ca),
        "MQTT_CERT_FILE": str(broker.bridge_cert),
        "MQTT_KEY_FILE": str(broker.bridge_key),
        "MQTT_CLIENT_ID": "perfuse-bridge-bench",
    }
    logs = open(tmp / "processes.log", "wb")  # noqa: SIM115
    children: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, command: list[str], **extra: str) -> int:
        process = subprocess.Popen(command, cwd=ROOT, env={**env, **extra}, stdout=logs, stderr=subprocess.STDOUT)
        children.append(process)
        return process.pid

    # cProfile of the bridge's asyncio thread (the pipeline; paho's network thread is not in it),
    # written when the bridge stops on SIGTERM.
    profiled = ["-m", "cProfile", "-o", args.profile_bridge] if args.profile_bridge else []
    try:
        spawn("broker", ["mosquitto", "-c", str(broker.config)])
        wait_port(mqtt_port, "mosquitto")
        pids = {
            "broker": children[-1].pid,
            "daphne": spawn("daphne", [DAPHNE, "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]),
            "daphne-group": spawn(
                "daphne-group",
                [DAPHNE, "-b", "127.0.0.1", "-p", str(group_port), "config.asgi:application"],
                PERFUSE_INGEST_HTTP_GROUP="1",
            ),
            "engine": spawn("engine", [PY, "manage.py", "run_engine"]),
            "bridge": spawn("bridge", [PY, *profiled, "manage.py", "run_mqtt_ingest"]),
            **{f"generator workers-{w}": pid for w, pid in enumerate(worker_pids)},
        }
        wait_port(port, "daphne")
        wait_port(group_port, "daphne")
        time.sleep(2)
        note("servers listening")
        phases = [p for p in PHASES if p in args.phases]
        bench = Bench(
            args,
            fleet,
            Procs(pids, tmp / "pg"),
            [Phase("warm-up")],
            os.environ["DATABASE_URL"],
            Console(),
            rule,
            alarm_devices(args, len(phases)),
        )
        asyncio.run(main_async(bench, (port, group_port), workers, session))
    finally:
        for conn in workers:
            with contextlib.suppress(OSError):
                conn.send(None)
        for process in reversed(children):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        subprocess.run(stop, check=False)
        logs.close()
        errors = [line for line in (tmp / "processes.log").read_text(errors="replace").splitlines() if "Error" in line]
        if errors:
            print(f"processes logged {len(errors)} error lines, e.g. {errors[-1][:200]}")
        if os.environ.get("BENCH_KEEP_LOG"):
            shutil.copy(tmp / "processes.log", os.environ["BENCH_KEEP_LOG"])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
