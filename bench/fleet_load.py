"""The fleet benchmark's load generator for edge gateways (bench/fleet.py, phases `gateway-mqtt` and
`gateway-http`), run in worker processes so that 20,000 Ed25519 signatures a second do not share
one asyncio loop with the patient sockets and the alarm console whose arrival times are measured.

Each worker (`shard_main`, forked before any event loop runs) holds a slice of the gateways and
their devices and serves phases sent to it over a pipe. In a phase:

- every device samples tissue O2 once a second at its own phase within the second; the sample's
  `sample_time` is the wall clock when the sample is made (never earlier), and the device signs
  its one-reading part at once with its own key (contract 1c: key, timestamp, signature, body);
  how late the worker made a sample against the device's 1 Hz schedule is recorded, so a load
  generator that cannot keep up shows in its own figure instead of in the server's latency;
- every gateway, at its own phase within the second, sends ONE outer message carrying every part
  its devices made that has not been acknowledged yet (normally each device's newest; after a
  lost or refused answer, the older ones too), signed with the gateway's key, and waits for the
  answer (HTTP) or the ack (MQTT, matched by correlation data) before it sends the next. A part
  answered 200 is done; 429/503 stays queued and goes out again; any other per-device code is
  counted and dropped (the server refused it for good). A gateway whose message got no answer
  (or no ack within its 10 s timeout, which is also the MQTT message's expiry interval) or an
  outer 429/503 waits before its next message as telemetry/simulator/backoff.py says: at least
  the ack's `retry_after`, doubling with each consecutive failure, with jitter. After the phase's sampling ends the
  gateways go on sending what is unacknowledged for up to `drain` seconds, so acknowledged and
  stored can be compared.

The same dip schedule (`Dips`) serves the direct phases in bench/fleet.py: an alarm device's
signal falls below the ward rule's critical threshold at a known time and stays there longer than
the rule's delay.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

from bench.live import Http

GATEWAY_PATH = "/api/v1/ingest/gateway"
# An outer message stays inside contract 1c's 5,000 readings and 1 MiB, with the simulator's
# margins (telemetry/simulator/fleet.py HUB_MAX_*): a gateway's backlog goes out over several
# seconds instead.
MAX_PARTS = 4000
MAX_BODY_BYTES = 600 * 1024


@dataclass(frozen=True)
class Dips:
    """When each alarm device's signal drops (device index → epoch seconds), for how long, to what."""

    starts: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    low: float = 20.0

    def value(self, index: int, t: float) -> float:
        start = self.starts.get(index)
        if start is not None and start <= t < start + self.seconds:
            return round(self.low + random.uniform(-1, 1), 2)
        return round(random.gauss(62, 3), 2)

    def crossing(self, index: int, t: float) -> bool:
        """The sample at `t` is below the threshold (its first such is the episode's onset)."""
        start = self.starts.get(index)
        return start is not None and start <= t < start + self.seconds


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body_for(device_id: str, seq: int, t: float, value: float) -> bytes:
    reading = {
        "seq": seq,
        "sample_time": iso(t),
        "metric": "tissue_o2",
        "value": value,
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


@dataclass
class Member:
    """A device behind a gateway."""

    index: int  # in the fleet (its patient is pseudonyms[index])
    device_id: str
    key_id: str
    private: Any
    pseudonym: str


@dataclass
class Hub:
    gateway_id: str
    key_id: str
    private: Any
    members: list[Member]


@dataclass
class Shard:
    """What a worker holds for its whole life (inherited at fork: keys are not pickled)."""

    hubs: list[Hub]
    http_port: int
    broker_url: str = ""
    ca_file: str = ""
    identities: dict[str, Any] = field(default_factory=dict)  # gateway id → transport.Identity


@dataclass(frozen=True)
class PhaseSpec:
    door: str  # "mqtt" or "http"
    base_seq: int
    start: float
    stop_at: float
    subscribed: frozenset[int]  # device indexes whose patients have a socket open
    dips: Dips
    drain: float = 20.0


@dataclass
class Part:
    member: Member
    seq: int
    entry: dict[str, Any]


@dataclass
class ShardResult:
    sent: dict[tuple[str, int], float] = field(default_factory=dict)  # subscribed: (pseudonym, seq) → sample_time
    crossings: dict[str, float] = field(default_factory=dict)  # alarm patient → first low sample_time
    samples: int = 0
    outer_sent: int = 0
    outer_acknowledged: int = 0
    outer_failed: Counter[str] = field(default_factory=Counter)
    acknowledged: int = 0  # parts (one reading each) answered 200, each once
    codes: Counter[str] = field(default_factory=Counter)  # per-device results not 200
    answer_ms: list[float] = field(default_factory=list)
    backoff_s: list[float] = field(default_factory=list)  # each wait after a failed outer message
    late_ms: list[float] = field(default_factory=list)  # sample made this long after its schedule
    unacknowledged: int = 0  # parts still queued when the drain ended
    finished: float = 0.0  # when the last gateway stopped sending


def shard_main(conn: Connection, shard: Shard) -> None:
    """A worker's life: phases from the pipe, results back, until None."""
    asyncio.run(_serve(conn, shard))


async def _serve(conn: Connection, shard: Shard) -> None:
    loop = asyncio.get_running_loop()
    transport: Any = None
    try:
        while (spec := await loop.run_in_executor(None, conn.recv)) is not None:
            if spec.door == "mqtt" and transport is None:
                from telemetry.simulator.transport import MqttTransport

                transport = MqttTransport(
                    shard.broker_url, ca_file=shard.ca_file, identities=shard.identities, ack_timeout=10.0
                )
            conn.send(await _phase(shard, spec, transport))
    finally:
        if transport is not None:
            await transport.close()


async def _phase(shard: Shard, spec: PhaseSpec, mqtt: Any) -> ShardResult:
    result = ShardResult()
    queues: dict[str, list[Part]] = {hub.gateway_id: [] for hub in shard.hubs}
    sampling = asyncio.create_task(_sample(shard, spec, queues, result))
    senders = [asyncio.create_task(_gateway(shard, hub, spec, queues, result, mqtt)) for hub in shard.hubs]
    await sampling
    await asyncio.gather(*senders)
    result.unacknowledged = sum(len(q) for q in queues.values())
    result.finished = time.time()
    return result


async def _sample(shard: Shard, spec: PhaseSpec, queues: dict[str, list[Part]], result: ShardResult) -> None:
    """Every device once a second at its own phase: sample, sign, queue at its gateway."""
    members = [(hub.gateway_id, m) for hub in shard.hubs for m in hub.members]
    n = len(members)
    # Device k of the fleet samples at phase (k * golden ratio) mod 1: spread evenly, and unrelated
    # to its gateway's sending phase.
    order = sorted(members, key=lambda gm: (gm[1].index * 0.6180339887) % 1.0)
    phases = [(m.index * 0.6180339887) % 1.0 for _, m in order]
    seqs = {m.index: spec.base_seq for _, m in order}
    cycle, i = spec.start, 0
    while n:
        due = cycle + phases[i]
        if due >= spec.stop_at:
            return
        now = time.time()
        if due > now:
            await asyncio.sleep(max(due - now, 0.002))  # a few ms at a time, not one wake-up per device
            continue
        gateway_id, member = order[i]
        seqs[member.index] += 1
        seq = seqs[member.index]
        body = body_for(member.device_id, seq, now, spec.dips.value(member.index, now))
        stamp = str(int(now))
        signature = member.private.sign(stamp.encode() + b"\n" + body)
        entry = {
            "key": member.key_id,
            "timestamp": int(stamp),
            "signature": base64.b64encode(signature).decode(),
            "body": base64.b64encode(body).decode(),
        }
        queues[gateway_id].append(Part(member, seq, entry))
        result.samples += 1
        if member.index in spec.subscribed:
            result.sent[(member.pseudonym, seq)] = now
        if spec.dips.crossing(member.index, now):
            result.crossings.setdefault(member.pseudonym, now)
        if result.samples % 10 == 0:
            result.late_ms.append((now - due) * 1000)
        i += 1
        if i == n:
            i, cycle = 0, cycle + 1.0
        if i % 50 == 0:
            await asyncio.sleep(0)  # let the gateways send between signatures


async def _gateway(
    shard: Shard, hub: Hub, spec: PhaseSpec, queues: dict[str, list[Part]], result: ShardResult, mqtt: Any
) -> None:
    http = Http(shard.http_port) if spec.door == "http" else None
    # Gateway k sends at phase k/G within the second (by its number: hub-bench-NNNN).
    number = int(hub.gateway_id.rsplit("-", 1)[1])
    next_send = spec.start + (number * 0.3819660113) % 1.0
    queue = queues[hub.gateway_id]
    # Here, not at the top: the simulator package loads Django models, and this module is imported
    # before Django is set up (as MqttTransport in _serve).
    from telemetry.simulator.backoff import Backoff

    backoff = Backoff(rng=random.Random(number))
    try:
        while True:
            now = time.time()
            if now >= spec.stop_at and (not queue or now >= spec.stop_at + spec.drain):
                return
            if next_send > now:
                await asyncio.sleep(min(next_send - now, max(0.0, spec.stop_at + spec.drain - now)))
                continue
            next_send = max(next_send + 1.0, time.time())  # one message a second, never a burst
            parts = _within_limits(queue)
            if not parts:
                continue
            failed, retry_after = await _send(hub, parts, queue, result, http, mqtt)
            if failed:
                wait = backoff.failed(retry_after)
                result.backoff_s.append(wait)
                next_send = max(next_send, time.time() + wait)
            else:
                backoff.succeeded()
    finally:
        if http is not None and http.writer is not None:
            http.writer.close()


def _within_limits(queue: list[Part]) -> list[Part]:
    """The oldest queued parts that fit one outer message."""
    size = 0
    for n, part in enumerate(queue[:MAX_PARTS]):
        size += len(part.entry["body"]) + len(part.entry["signature"]) + len(part.entry["key"]) + 50
        if size > MAX_BODY_BYTES:
            return queue[:n]
    return queue[:MAX_PARTS]


async def _send(
    hub: Hub, parts: list[Part], queue: list[Part], result: ShardResult, http: Http | None, mqtt: Any
) -> tuple[bool, float | None]:
    """One outer message: (failed, the server's retry_after if it said one)."""
    body = orjson.dumps(
        {"schema": "perfuse.gateway/1", "gateway_id": hub.gateway_id, "batches": [p.entry for p in parts]}
    )
    headers = signed(hub.key_id, hub.private, body)
    result.outer_sent += 1
    started = time.perf_counter()
    status, answer = await _deliver(hub, body, headers, http, mqtt)
    result.answer_ms.append((time.perf_counter() - started) * 1000)
    if status != 200:
        result.outer_failed[str(status) if status else "no answer"] += 1
        # Every part stays queued: the next message carries it again.
        retry_after = answer.get("retry_after")
        return True, float(retry_after) if isinstance(retry_after, int | float) else (1.0 if status else None)
    result.outer_acknowledged += 1
    done: set[int] = set()
    for item in answer.get("results", []):
        part = parts[item["index"]]
        code = item["status"]
        if code == 200:
            result.acknowledged += 1
        else:
            error = (item.get("error") or {}).get("code", "")
            result.codes[f"{code} {error}".strip()] += 1
            if code in (429, 503):
                continue  # sent again in the next message
        done.add(id(part))
    queue[:] = [p for p in queue if id(p) not in done]
    return False, None


async def _deliver(
    hub: Hub, body: bytes, headers: dict[str, str], http: Http | None, mqtt: Any
) -> tuple[int, dict[str, Any]]:
    if http is not None:
        try:
            status, raw = await http.request(GATEWAY_PATH, body, {"Content-Type": "application/json", **headers})
        except (OSError, asyncio.IncompleteReadError):
            http.writer = None
            return 0, {}
        try:
            answer = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            answer = {}
        return status, answer if isinstance(answer, dict) else {}
    reply = await mqtt.send_gateway(hub.gateway_id, body, headers)
    if reply is None:
        return 0, {}
    return reply.status, reply.body


def merged(results: list[ShardResult]) -> ShardResult:
    """The workers' results as one."""
    total = ShardResult()
    for r in results:
        total.sent.update(r.sent)
        total.crossings.update(r.crossings)
        total.samples += r.samples
        total.outer_sent += r.outer_sent
        total.outer_acknowledged += r.outer_acknowledged
        total.outer_failed.update(r.outer_failed)
        total.acknowledged += r.acknowledged
        total.codes.update(r.codes)
        total.answer_ms.extend(r.answer_ms)
        total.backoff_s.extend(r.backoff_s)
        total.late_ms.extend(r.late_ms)
        total.unacknowledged += r.unacknowledged
        total.finished = max(total.finished, r.finished)
    return total


def late_summary(late_ms: list[float]) -> str:
    if not late_ms:
        return "no samples"
    ordered = sorted(late_ms)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {statistics.median(ordered):.0f} ms p99 {p99:.0f} ms max {ordered[-1]:.0f} ms"
