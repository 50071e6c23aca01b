"""The fleet benchmark's load generator (bench/fleet.py, phases `mqtt`, `gateway-mqtt` and
`gateway-http`), run in worker processes so that thousands of Ed25519 signatures a second do not
share one asyncio loop with the patient sockets and the alarm console whose arrival times are
measured.

Each worker (`shard_main`, forked before any event loop runs) holds a slice of the gateways and
their devices, and a slice of the directly connected devices, and serves phases sent to it over
a pipe.

Directly connected devices (phase `mqtt`): one mutual-TLS MQTT 5 connection per device (the
broker's ACL lets a device publish only under its own certificate's CN), made once before the
first phase (`connect`), with telemetry/mqtt_wire.py's client on the worker's event loop — paho
driven from asyncio, as the simulator's transport does it, cost the generator 0.9-1.3 ms of CPU a
message, so at 1,000 devices the generator, not the server, fell behind. Every device samples once
a second at its own phase within the second, on its own clock: its `sample_time` is the scheduled
instant, exactly a second after the last (a sensor's timer), so a worker that makes the message
late adds that to the measured latencies rather than hiding it. It signs the one-reading batch
with its own key and publishes it at once at QoS 1 (its credentials as user properties, a 10 s
Message Expiry Interval: the ack timeout), on schedule whether or not its previous sample was
acknowledged yet, as a device with an in-flight window does. Its ack (matched by `batch_id`)
gives the answer time and status; after the sampling ends the workers wait up to `drain` seconds
for the acks still due. How late the worker made samples against the schedule is recorded, as
for gateways.

Gateways (phases `gateway-mqtt`, `gateway-http`). In a phase:

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

from bench.live import Http
from telemetry.mqtt_wire import Client, Endpoint, Incoming

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
    identities: dict[str, Any] = field(default_factory=dict)  # gateway or device id → transport.Identity
    devices: list[Member] = field(default_factory=list)  # connected directly (phase mqtt)


CONNECT = "connect"  # a PhaseSpec door: connect the direct devices, no sampling
DIRECT = "device-mqtt"  # a PhaseSpec door: the direct devices sample and publish


@dataclass(frozen=True)
class PhaseSpec:
    door: str  # gateways: "mqtt" or "http"; the direct devices: DIRECT (or CONNECT)
    base_seq: int
    start: float
    stop_at: float
    subscribed: frozenset[int]  # device indexes whose patients have a socket open
    dips: Dips
    drain: float = 20.0


_Due = tuple[Member, int, float, float]  # a sample to make: member, seq, due, now


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
    direct: Direct | None = None
    try:
        while (spec := await loop.run_in_executor(None, conn.recv)) is not None:
            if spec.door in ("mqtt", CONNECT) and transport is None:
                from telemetry.simulator.transport import MqttTransport

                transport = MqttTransport(
                    shard.broker_url, ca_file=shard.ca_file, identities=shard.identities, ack_timeout=10.0
                )
            if spec.door == CONNECT:
                direct = direct or Direct(shard, transport)
                conn.send(await direct.connect())
            elif spec.door == DIRECT:
                assert direct is not None, "the direct devices are connected first"
                conn.send(await direct.phase(spec))
            else:
                conn.send(await _phase(shard, spec, transport))
    finally:
        if direct is not None:
            await direct.close()
        if transport is not None:
            await transport.close()


class Direct:
    """This worker's directly connected devices: one mqtt_wire client each, acks matched by batch id."""

    def __init__(self, shard: Shard, transport: Any) -> None:
        from urllib.parse import urlsplit

        from telemetry.mqtt_bridge import acks_topic

        target = urlsplit(shard.broker_url)
        host, port = target.hostname or "127.0.0.1", target.port or 8883
        self.members = shard.devices
        self.stop = asyncio.Event()
        self.subscribed: set[str] = set()
        self.all_subscribed = asyncio.Event()
        self.waiting: dict[str, float] = {}  # batch id → perf_counter when published
        self.result = ShardResult()
        self.clients: dict[str, Client] = {}
        for member in self.members:
            endpoint = Endpoint(
                host,
                port,
                transport.context(member.device_id),  # its certificate and key (files: ssl loads only those)
                client_id=member.device_id,
                keepalive=60,
                session_expiry=3600,  # acks published while it was cut off still reach it
                receive_maximum=100,
                subscriptions=((acks_topic(member.device_id), 1),),
            )
            self.clients[member.device_id] = Client(
                endpoint,
                on_message=self._on_ack(member.device_id),
                on_subscribe=self._on_subscribe(member.device_id),
            )
        self.tasks: list[asyncio.Task[None]] = []

    def _on_subscribe(self, device_id: str) -> Callable[[bool], None]:
        def subscribed(granted: bool) -> None:
            if granted:
                self.subscribed.add(device_id)
                if len(self.subscribed) == len(self.clients):
                    self.all_subscribed.set()

        return subscribed

    def _on_ack(self, device_id: str) -> Callable[[Incoming], None]:
        def ack(incoming: Incoming) -> None:
            client = self.clients[device_id]
            if incoming.qos:
                client.puback(incoming.mid, client.generation)
            try:
                answer = orjson.loads(incoming.payload)
            except orjson.JSONDecodeError:
                return
            published = self.waiting.pop(str(answer.get("batch_id")), None) if isinstance(answer, dict) else None
            if published is None:
                return  # an ack of an earlier phase, or its twin
            result = self.result
            result.answer_ms.append((time.perf_counter() - published) * 1000)
            status = answer.get("status")
            if status == 200:
                result.acknowledged += 1
            else:
                result.codes[str(status)] += 1

        return ack

    async def connect(self, timeout: float = 300.0) -> ShardResult:
        """Every device connected and subscribed to its acks (a few at a time: each is a TLS handshake)."""
        gate = asyncio.Semaphore(50)

        async def one(client: Client) -> None:
            async with gate:
                self.tasks.append(asyncio.create_task(client.run(self.stop)))
                while client.generation == 0 and not self.stop.is_set():
                    await asyncio.sleep(0.01)

        if self.clients:
            await asyncio.wait_for(asyncio.gather(*(one(c) for c in self.clients.values())), timeout)
            await asyncio.wait_for(self.all_subscribed.wait(), timeout)
        return ShardResult()

    async def phase(self, spec: PhaseSpec) -> ShardResult:
        from telemetry.mqtt_bridge import readings_topic

        self.result = result = ShardResult()
        self.waiting.clear()
        async for member, seq, due, now in _schedule(self.members, spec, result):
            # The sample is taken at its scheduled instant (a sensor's timer), sent when made.
            body = body_for(member.device_id, seq, due, spec.dips.value(member.index, due))
            stamp = str(int(now))
            signature = base64.b64encode(member.private.sign(stamp.encode() + b"\n" + body)).decode()
            self.waiting[f"{member.device_id}-{seq}"] = time.perf_counter()
            self.clients[member.device_id].publish(
                readings_topic(member.device_id),
                body,
                expiry=10,  # the ack timeout: the broker drops a copy nobody waits for any more
                user_properties=(
                    ("x-perfuse-key", member.key_id),
                    ("x-perfuse-timestamp", stamp),
                    ("x-perfuse-signature", signature),
                ),
            )
            if member.index in spec.subscribed:
                result.sent[(member.pseudonym, seq)] = due
            if spec.dips.crossing(member.index, due):
                result.crossings.setdefault(member.pseudonym, due)
        deadline = spec.stop_at + spec.drain
        while self.waiting and time.time() < deadline:
            await asyncio.sleep(0.05)
        result.unacknowledged = len(self.waiting)
        result.finished = time.time()
        return result

    async def close(self) -> None:
        self.stop.set()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=10)


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


async def _schedule(members: list[Member], spec: PhaseSpec, result: ShardResult) -> AsyncIterator[_Due]:
    """Every member once a second at its own phase within the second until the sampling ends:
    (member, its next seq, when the sample was due, now). Counts the samples and records how late
    every tenth was made against the schedule."""
    n = len(members)
    # Device k of the fleet samples at phase (k * golden ratio) mod 1: spread evenly, and unrelated
    # to its gateway's sending phase.
    order = sorted(members, key=lambda m: (m.index * 0.6180339887) % 1.0)
    phases = [(m.index * 0.6180339887) % 1.0 for m in order]
    seqs = {m.index: spec.base_seq for m in order}
    cycle, i = spec.start, 0
    while n:
        due = cycle + phases[i]
        if due >= spec.stop_at:
            return
        now = time.time()
        if due > now:
            await asyncio.sleep(max(due - now, 0.002))  # a few ms at a time, not one wake-up per device
            continue
        member = order[i]
        seqs[member.index] += 1
        result.samples += 1
        if result.samples % 10 == 0:
            result.late_ms.append((now - due) * 1000)
        yield member, seqs[member.index], due, now
        i += 1
        if i == n:
            i, cycle = 0, cycle + 1.0
        if i % 50 == 0:
            await asyncio.sleep(0)  # let the senders and the acks in between signatures


async def _sample(shard: Shard, spec: PhaseSpec, queues: dict[str, list[Part]], result: ShardResult) -> None:
    """Every device once a second at its own phase: sample (at the wall clock), sign, queue at its gateway."""
    gateway_of = {m.index: hub.gateway_id for hub in shard.hubs for m in hub.members}
    members = [m for hub in shard.hubs for m in hub.members]
    async for member, seq, _due, now in _schedule(members, spec, result):
        body = body_for(member.device_id, seq, now, spec.dips.value(member.index, now))
        stamp = str(int(now))
        signature = member.private.sign(stamp.encode() + b"\n" + body)
        entry = {
            "key": member.key_id,
            "timestamp": int(stamp),
            "signature": base64.b64encode(signature).decode(),
            "body": base64.b64encode(body).decode(),
        }
        queues[gateway_of[member.index]].append(Part(member, seq, entry))
        if member.index in spec.subscribed:
            result.sent[(member.pseudonym, seq)] = now
        if spec.dips.crossing(member.index, now):
            result.crossings.setdefault(member.pseudonym, now)


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
