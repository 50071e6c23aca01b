"""Fleet benchmark (issue 10.7): devices sampling at 1 Hz and sending every sample within its
second, over MQTT (the broker, the bridge, group commit) and, for comparison, over HTTP.

    .venv/bin/python bench/fleet.py [--devices 300] [--clients 30] [--duration 30]

Never touches the demo: it starts a throwaway PostgreSQL and Redis (scripts/lib.sh, fsync off as
bench/live.py does), a fresh database, a Mosquitto of its own over mutual TLS with a throwaway
deployment CA (telemetry.mqtt_broker.broker_setup, as `make run`), Daphne, the engine and one
MQTT bridge (`run_mqtt_ingest`). It provisions N devices each on its own patient (bench/live.py)
and a certificate for each device's Ed25519 key, and opens C browser-like WebSockets to the
first C patients' charts. Then, for each door in turn (MQTT first, then HTTP with one keep-alive
connection per device, then HTTP again to a second Daphne whose HTTP door commits through the
group writer, PERFUSE_INGEST_HTTP_GROUP=1, to answer whether HTTP should use it):

- every device takes one tissue-O2 sample a second (its `sample_time` is the load generator's
  clock) and sends it at once, alone in its message, waiting for its ack (MQTT) or answer (HTTP);
- sample -> screen: each point's arrival on a patient socket minus its `sample_time` (same host,
  same clock), p50/p99 over the subscribed patients;
- messages/s acknowledged, and acknowledged vs stored readings of the phase (must be equal);
- CPU per 1,000 messages of each process: broker, bridge, Daphne, engine, PostgreSQL (postmaster
  and backends), the load generator; and the load average.

The CPU of both Daphne processes is counted together (the patient sockets are on the first).
Not measured here: gateways
(issue 10.4, another branch) and the alarm console's latency. Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.live import Http, WebSocket, cpu_seconds, fresh_database, pct, provision, start_services  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
DAPHNE = str(ROOT / ".venv" / "bin" / "daphne")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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


@dataclass
class Phase:
    name: str
    sent: dict[tuple[str, int], float] = field(default_factory=dict)  # (pseudonym, seq) -> sample_time
    arrived: dict[tuple[str, int], float] = field(default_factory=dict)
    acknowledged: int = 0  # messages answered 200 (each one reading)
    failed: dict[str, int] = field(default_factory=dict)
    answer_ms: list[float] = field(default_factory=list)


def body_for(device_id: str, seq: int, t: float) -> bytes:
    reading = {
        "seq": seq,
        "sample_time": dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "metric": "tissue_o2",
        "value": round(random.gauss(62, 3), 2),
        "unit": "%",
        "signal_quality": 0.95,
    }
    return orjson.dumps(
        {
            "schema": "perfuse.readings/1",
            "batch_id": f"{device_id}-{seq}",
            "device_id": device_id,
            "readings": [reading],
        }
    )


def signed(key_id: str, private: Any, body: bytes) -> dict[str, str]:
    stamp = str(int(time.time()))
    return {
        "X-Perfuse-Key": key_id,
        "X-Perfuse-Timestamp": stamp,
        "X-Perfuse-Signature": base64.b64encode(private.sign(stamp.encode() + b"\n" + body)).decode(),
    }


async def device_loop(
    door: str,
    sender: Any,
    device: tuple[str, str, Any],
    pseudonym: str,
    base_seq: int,
    offset: float,
    stop_at: float,
    phase: Phase,
) -> None:
    device_id, key_id, private = device
    await asyncio.sleep(offset)
    t = time.time()
    seq = base_seq
    while t < stop_at:
        seq += 1
        body = body_for(device_id, seq, t)
        headers = signed(key_id, private, body)
        phase.sent[(pseudonym, seq)] = t
        started = time.perf_counter()
        if door == "mqtt":
            reply = await sender.send(device_id, body, headers)
            status = 0 if reply is None else reply.status
        else:
            try:
                status = await sender.post(
                    "/api/v1/ingest/readings", body, {"Content-Type": "application/json", **headers}
                )
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
            key = name.split("-")[0]  # both Daphne processes together
            found[key] = found.get(key, 0.0) + cpu_seconds(pid)
        found["postgresql"] = postgres_cpu(self.pg_dir)
        found["load generator"] = time.process_time()
        return found


async def run_phase(
    door: str,
    args: argparse.Namespace,
    fleet: Any,
    sender: Any,
    procs: Procs,
    phase_of: list[Phase],
    base_seq: int,
    database_url: str,
) -> dict[str, Any]:
    phase = Phase(door)
    phase_of[0] = phase
    n = len(fleet.devices)
    cpu_before, load_before = procs.cpu(), os.getloadavg()
    start = time.time()
    stop_at = start + args.duration
    senders = sender if isinstance(sender, list) else [sender] * n
    await asyncio.gather(
        *(
            device_loop(door, senders[i], d, fleet.pseudonyms[i], base_seq, i / n, stop_at, phase)
            for i, d in enumerate(fleet.devices)
        )
    )
    elapsed = time.time() - start
    cpu_after, load = procs.cpu(), os.getloadavg()
    await asyncio.sleep(3)  # the last frames
    import psycopg

    with psycopg.connect(database_url) as conn:
        ((stored,),) = conn.execute(
            "SELECT count(*) FROM telemetry_reading WHERE seq > %s AND seq <= %s", [base_seq, base_seq + 10_000_000]
        ).fetchall()
    subscribed = set(fleet.pseudonyms[: args.clients])
    latencies = [
        (phase.arrived[key] - t) * 1000
        for key, t in phase.sent.items()
        if key[0] in subscribed and key in phase.arrived
    ]
    expected = sum(1 for key in phase.sent if key[0] in subscribed)
    messages = phase.acknowledged + sum(phase.failed.values())
    per_k = {name: (cpu_after[name] - cpu_before[name]) / max(1, messages) * 1000 * 1000 for name in cpu_after}
    return {
        "door": door,
        "seconds": elapsed,
        "messages_per_s": phase.acknowledged / elapsed,
        "acknowledged": phase.acknowledged,
        "stored": stored,
        "failed": phase.failed,
        "answer_p50_ms": statistics.median(phase.answer_ms) if phase.answer_ms else 0.0,
        "answer_p99_ms": pct(phase.answer_ms, 0.99) if phase.answer_ms else 0.0,
        "screen_points": f"{len(latencies)}/{expected}",
        "screen_p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "screen_p99_ms": pct(latencies, 0.99) if latencies else float("nan"),
        "cpu_ms_per_1000": per_k,
        "cores": {name: (cpu_after[name] - cpu_before[name]) / elapsed for name in cpu_after},
        "load": (load_before, load),
    }


def report(result: dict[str, Any]) -> None:
    print(f"--- {result['door']}: {result['seconds']:.0f} s")
    print(
        f"messages/s acknowledged {result['messages_per_s']:.0f}; acknowledged {result['acknowledged']} vs stored "
        f"{result['stored']}; not answered 200: {result['failed'] or 'none'}; "
        f"answer p50 {result['answer_p50_ms']:.1f} ms p99 {result['answer_p99_ms']:.1f} ms"
    )
    print(
        f"sample -> screen ({result['screen_points']} points of subscribed patients): "
        f"p50 {result['screen_p50_ms']:.0f} ms p99 {result['screen_p99_ms']:.0f} ms"
    )
    cpu = ", ".join(
        f"{name} {ms:.1f} ms ({result['cores'][name]:.2f} cores)" for name, ms in result["cpu_ms_per_1000"].items()
    )
    print(f"CPU per 1,000 messages: {cpu}")
    before, after = result["load"]
    print(f"load average before {before[0]:.2f}, after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")


async def main_async(
    args: argparse.Namespace,
    fleet: Any,
    ports: tuple[int, int],
    procs: Procs,
    broker: Any,
    identities: Any,
    database_url: str,
) -> None:
    from telemetry.simulator.transport import MqttTransport

    port, group_port = ports
    phase_of = [Phase("warm-up")]
    sockets = []
    for pseudonym in fleet.pseudonyms[: args.clients]:
        ws = await socket_open(port, pseudonym, fleet.session_key)
        await ws.recv()  # the snapshot
        sockets.append(asyncio.create_task(listen(ws, pseudonym, phase_of)))
    mqtt = MqttTransport(broker.url, ca_file=str(broker.ca), identities=identities, ack_timeout=10.0)
    # Connect every device and warm the bridge (one message each) before measuring.
    warm = argparse.Namespace(**{**vars(args), "duration": 2})
    await run_phase("mqtt", warm, fleet, mqtt, procs, phase_of, 500_000, database_url)
    results = [await run_phase("mqtt", args, fleet, mqtt, procs, phase_of, 1_000_000, database_url)]
    await mqtt.close()
    https = [Http(port) for _ in fleet.devices]
    await run_phase("http", warm, fleet, https, procs, phase_of, 1_500_000, database_url)
    results.append(await run_phase("http", args, fleet, https, procs, phase_of, 2_000_000, database_url))
    grouped = [Http(group_port) for _ in fleet.devices]
    await run_phase("http", warm, fleet, grouped, procs, phase_of, 2_500_000, database_url)
    results.append(await run_phase("http+group", args, fleet, grouped, procs, phase_of, 3_000_000, database_url))
    for task in sockets:
        task.cancel()
    print(
        f"devices {len(fleet.devices)} at 1 Hz, each sample sent in its own message at once; "
        f"{len(sockets)} patient sockets"
    )
    for result in results:
        report(result)
    mq, http, _ = results
    print(
        f"MQTT / HTTP: sample->screen p99 {mq['screen_p99_ms']:.0f} / {http['screen_p99_ms']:.0f} ms; server CPU per "
        f"1,000 messages (broker+bridge+Daphne+engine+PostgreSQL) "
        f"{sum(v for k, v in mq['cpu_ms_per_1000'].items() if k != 'load generator'):.0f} / "
        f"{sum(v for k, v in http['cpu_ms_per_1000'].items() if k != 'load generator'):.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--duration", type=int, default=30)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="perfuse-bench-fleet-"))
    os.chmod(tmp, 0o755)  # noqa: S103 (the unprivileged PostgreSQL and Mosquitto must reach their dirs)
    # Always our own servers: a benchmark never writes into a demo's database.
    db, redis, stop = start_services(tmp)
    os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = fresh_database(db), redis
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    os.environ.setdefault("PERFUSE_CHANNEL_PREFIX", f"bench{os.getpid()}")
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)
    fleet = provision(args.devices)

    from cryptography.hazmat.primitives import serialization

    from telemetry import pki
    from telemetry.mqtt_broker import broker_setup
    from telemetry.simulator.transport import Identity

    mqtt_port = free_port()
    run_as = "mosquitto" if os.geteuid() == 0 else None
    broker = broker_setup(state=tmp / "mqtt", pki_dir=tmp / "pki", port=mqtt_port, run_as=run_as)
    authority = pki.authority_load(tmp / "pki")
    assert authority is not None
    identities = {}
    for device_id, _key_id, private in fleet.devices:
        certificate = pki.certificate_build(authority, cn=device_id, public_key=private.public_key(), days=1)
        identities[device_id] = Identity(
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
            private_key_pem=private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
        )
    port, group_port = free_port(), free_port()
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
            "bridge": spawn("bridge", [PY, "manage.py", "run_mqtt_ingest"]),
        }
        wait_port(port, "daphne")
        wait_port(group_port, "daphne")
        time.sleep(2)
        asyncio.run(
            main_async(
                args, fleet, (port, group_port), Procs(pids, tmp / "pg"), broker, identities, os.environ["DATABASE_URL"]
            )
        )
    finally:
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
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
