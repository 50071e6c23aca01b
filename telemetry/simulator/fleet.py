"""A realistic device fleet that talks to the real ingest API (used by `manage.py simulate_fleet`).

How it works. Provisioning is synchronous and idempotent: the ward, the devices and one patient
per device are created through the registry services, and each device's private key is kept in a
local JSON keyfile so a second run reuses it (a lost, unknown or revoked key is replaced by a newly
provisioned one). Then one asyncio task per device plays a gateway: every `batch_seconds` it samples
its patient's tissue-O2 signal (signals.py: drifting baseline, noise, desaturation episodes paced
as tissue O2 changes, artefacts with low signal quality, dropouts) plus occasional skin
temperature and battery readings, queues the batch, and flushes its queue through one shared
keep-alive httpx client, or over MQTT (one persistent connection per device; transport.py).
Gateways misbehave the way real ones do: a lost acknowledgement makes them
retransmit, an unacknowledged batch (no answer, no MQTT ack in time) is sent again, batches
overtake each other, a gateway goes offline for minutes and then flushes
everything late, firmware and calibration change. A 429 or 503 is honoured (Retry-After) and the
batch is sent again; nothing is dropped. With `--demo` the first worn device also plays a scripted
critically low desaturation shortly after the start, so the console sounds a high-priority alarm
within minutes (DEMO_SHOWCASE_S; docs/simulator.md).

With hubs (`simulate_fleet --gateways G`), the devices are spread over G edge gateways of their
wards (contract section 1c): each device still samples and signs its own batches, and its gateway
(`Hub`) forwards everything pending in one outer request signed with the gateway's key, buffers
while offline (the inner batches keep their devices' old timestamps), sends a request again when
its acknowledgement is lost, and re-queues an inner batch answered 429 or 503.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import random
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import httpx
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import transaction

from telemetry import pki
from telemetry.models import Assignment, DeviceKey, GatewayKey, Ward
from telemetry.services import device_provision, gateway_provision, patient_admit
from telemetry.simulator.backoff import Backoff
from telemetry.simulator.signals import PatientSignal, SignalConfig
from telemetry.simulator.transport import GatewayTransport, HttpTransport, Identity, Reply, Transport

DEMO_WARD = "icu-demo"
# The `make run` fleet: (ward, worn devices, spare devices). A second ward shows ward scoping; the
# spare device shows unassigned readings to device administrators.
DEMO_FLEET = [(DEMO_WARD, 8, 1), ("ward-b", 3, 0)]
# The demo's scripted critical desaturation begins this long after the fleet starts: its low alarm
# is raised 5-8 minutes after the start, the high-priority one a minute or so after that.
DEMO_SHOWCASE_S = 60.0


# --- provisioning ------------------------------------------------------------------------------


@dataclass
class FleetDevice:
    device_id: str
    key_id: str
    private_key: Ed25519PrivateKey
    pseudonym: str | None  # None: a spare device nobody wears (its readings are stored unassigned)
    ward: str = ""
    # Its MQTT client certificate for the key (issued by the deployment CA; None without one).
    certificate_pem: str | None = None


def identities(fleet: list[FleetDevice], hubs: list[FleetGateway] | None = None) -> dict[str, Identity]:
    """Each device's (and gateway's) TLS identity for MQTT: its own Ed25519 key and the
    certificate issued for it, by its id (devices and gateways share the broker's name space)."""
    found = {}
    for owner_id, private, certificate in [
        *((d.device_id, d.private_key, d.certificate_pem) for d in fleet),
        *((h.gateway_id, h.private_key, h.certificate_pem) for h in hubs or []),
    ]:
        if certificate is not None:
            pem = private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode()
            found[owner_id] = Identity(certificate_pem=certificate, private_key_pem=pem)
    return found


def device_ids(ward: str, count: int, spares: int = 0) -> list[tuple[str, str | None]]:
    """(device id, patient pseudonym or None for a spare) of the fleet's devices, stable across runs."""
    worn: list[tuple[str, str | None]] = [(f"lumee-{ward}-{i:03d}", f"{ward}-bed-{i:02d}") for i in range(1, count + 1)]
    return worn + [(f"lumee-{ward}-spare-{i:02d}", None) for i in range(1, spares + 1)]


def _load_keys(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_keys(path: Path, keys: dict[str, dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(keys, indent=1, sort_keys=True))
    tmp.chmod(0o600)  # private keys
    tmp.replace(path)


def _usable(entry: dict[str, str] | None, owner_id: str, *, gateway: bool = False) -> Ed25519PrivateKey | None:
    """The kept private key of a device (or gateway), when its key is still registered and active."""
    keys = (
        GatewayKey.objects.filter(gateway__gateway_id=owner_id)
        if gateway
        else DeviceKey.objects.filter(device__device_id=owner_id)
    )
    if not entry or not keys.filter(key_id=entry.get("key_id"), revoked_at__isnull=True).exists():
        return None
    try:
        key = serialization.load_pem_private_key(entry["private_key_pem"].encode(), password=None)
    except (KeyError, ValueError, TypeError):
        return None
    return key if isinstance(key, Ed25519PrivateKey) else None


def provision_fleet(*, ward: str, count: int, keyfile: Path, site: str = "main", spares: int = 0) -> list[FleetDevice]:
    """Create what is missing (ward, devices, keys, patients, assignments); reuse what exists."""
    keys = _load_keys(keyfile)
    fleet = []
    with transaction.atomic():
        # The simulator may run before any seed: it owns its ward when none exists.
        Ward.objects.get_or_create(code=ward, defaults={"name": ward.replace("-", " ").upper(), "site": site})
    authority = pki.authority_load()
    for device_id, pseudonym in device_ids(ward, count, spares):
        private = _usable(keys.get(device_id), device_id)
        if private is None:
            provisioned = device_provision(device_id=device_id, ward_code=ward)
            assert provisioned.private_key_pem is not None
            keys[device_id] = {"key_id": provisioned.key.key_id, "private_key_pem": provisioned.private_key_pem}
            if provisioned.certificate_pem is not None:
                keys[device_id]["certificate_pem"] = provisioned.certificate_pem
            _save_keys(keyfile, keys)
            private = _usable(keys[device_id], device_id)
            assert private is not None
        elif authority is not None and not _certified(keys[device_id].get("certificate_pem"), authority):
            # A key kept from a run before the deployment CA existed (or of another CA): certify it.
            key = DeviceKey.objects.get(key_id=keys[device_id]["key_id"])
            keys[device_id]["certificate_pem"] = pki.certificate_issue(
                cn=device_id, public_key=private.public_key(), key=key
            )
            _save_keys(keyfile, keys)
        current = Assignment.objects.filter(device__device_id=device_id, end__isnull=True).first()
        if pseudonym is not None and (current is None or current.patient.pseudonym != pseudonym):
            patient_admit(pseudonym=pseudonym, ward_code=ward, device_id=device_id)
        certificate = keys[device_id].get("certificate_pem") if authority is not None else None
        fleet.append(FleetDevice(device_id, keys[device_id]["key_id"], private, pseudonym, ward, certificate))
    return fleet


def _certified(pem: str | None, authority: pki.Authority) -> bool:
    """The kept certificate was issued by this CA (a new CA after `.data/pki` was removed: not)."""
    if not pem:
        return False
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return False
    return certificate.issuer == authority.certificate.subject


# --- gateways ----------------------------------------------------------------------------------


@dataclass
class GatewayConfig:
    batch_seconds: float = 1.0
    retransmit: float = 0.02  # acknowledgement lost: the same batch is sent again
    reorder: float = 0.02  # a batch overtakes the one before it
    # About once a device-day a gateway loses its network for half a minute to five minutes (two
    # thirds of them outlast the no-data delay); docs/simulator.md.
    offline_rate: float = 1 / 24  # per device-hour
    offline_seconds: tuple[float, float] = (30.0, 300.0)
    firmware_rate: float = 0.1  # per device-hour
    calibration_rate: float = 0.2  # per device-hour
    temperature_every: float = 30.0
    battery_every: float = 60.0
    # A wearable reader with a pulse oximeter also sends SpO2 (None: a tissue-O2 sensor alone).
    spo2_every: float | None = None


@dataclass
class Stats:
    generated: int = 0  # readings the devices produced (each is sent until the server answers it)
    batches: int = 0
    readings: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    throttled: int = 0
    errors: int = 0
    acknowledged_batches: int = 0  # batches answered 200, each counted once however often sent
    acknowledged_readings: int = 0  # their valid readings (accepted or duplicates): all stored
    retransmits: int = 0
    reordered: int = 0
    offline_periods: int = 0
    late_batches: int = 0
    firmware_changes: int = 0
    calibration_changes: int = 0
    gateway_requests: int = 0  # outer requests of edge gateways (each carries many devices' batches)
    backoffs: int = 0  # waits after no answer or a 429/503 (backoff.py), and their seconds in all
    backoff_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        rate = self.accepted / max(1e-9, time.monotonic() - self.started)
        via = f"  via {self.gateway_requests} gateway requests" if self.gateway_requests else ""
        return (
            f"batches {self.batches}{via}  readings {self.readings}  accepted {self.accepted} ({rate:.0f}/s)  "
            f"duplicates {self.duplicates}  rejected {self.rejected}  429s {self.throttled}  errors {self.errors}"
        )

    def summary(self) -> dict[str, int | float]:
        return {
            name: round(value, 1) if isinstance(value, float) else value
            for name, value in vars(self).items()
            if name != "started"
        }

    async def back_off(self, backoff: Backoff, retry_after: float | None = None) -> None:
        """Wait as `backoff` says after a failed attempt (at least the server's `retry_after`)."""
        seconds = backoff.failed(retry_after)
        self.backoffs += 1
        self.backoff_seconds += seconds
        await asyncio.sleep(seconds)


@dataclass
class Batch:
    body: bytes
    size: int
    created: float
    acknowledged: bool = False


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Gateway:
    """One device and the gateway that forwards its batches."""

    def __init__(
        self, device: FleetDevice, *, hz: float, config: GatewayConfig, signal: SignalConfig, seed: int, stats: Stats
    ) -> None:
        self.device = device
        self.hz = hz
        self.config = config
        self.stats = stats
        self.rng = random.Random(seed)  # noqa: S311 (simulation, not security)
        self.signal = PatientSignal(random.Random(seed + 1), signal)  # noqa: S311
        # Milliseconds since the epoch: seq stays monotonic across runs of the simulator.
        self.seq = int(time.time() * 1000)
        self.firmware = f"fw-2.4.{self.rng.randrange(0, 4)}"
        self.calibration = f"cal-{dt.datetime.now(dt.UTC):%Y%m%d}-{self.rng.randrange(100, 999)}"
        self.temp_unit = "degF" if self.rng.random() < 0.2 else "Cel"
        self.battery_mv = self.rng.uniform(3700, 4100)
        self.next_sample = time.time()
        self.next_temperature = self.next_sample + self.rng.uniform(0, config.temperature_every)
        self.next_battery = self.next_sample + self.rng.uniform(0, config.battery_every)
        self.spo2_baseline = self.rng.uniform(95.0, 99.0)  # a patient on room air, healthy lungs
        self.next_spo2 = self.next_sample + self.rng.uniform(0, config.spo2_every or 0.0)
        self.outbox: deque[Batch] = deque()
        self.offline_until = 0.0
        self.holding = False
        self.pace = config.batch_seconds  # seconds between flushes; a throttle ack can stretch it
        self.backoff = Backoff(rng=random.Random(seed + 2))  # noqa: S311

    def _happens(self, rate_per_hour: float, dt_s: float) -> bool:
        return self.rng.random() < rate_per_hour * dt_s / 3600.0

    def _reading(self, t: float, metric: str, value: float, unit: str, quality: float | None) -> dict[str, Any]:
        self.seq += 1
        item: dict[str, Any] = {"seq": self.seq, "sample_time": _iso(t), "metric": metric, "value": value, "unit": unit}
        if quality is not None:
            item["signal_quality"] = quality
        if metric == "tissue_o2":
            item["calibration_id"] = self.calibration
        return item

    def collect(self, now: float) -> None:
        """Sample everything due up to `now` into one batch on the outbox."""
        c = self.config
        if self._happens(c.firmware_rate, c.batch_seconds):
            major, minor, patch = self.firmware.removeprefix("fw-").split(".")
            self.firmware = f"fw-{major}.{minor}.{int(patch) + 1}"
            self.stats.firmware_changes += 1
        if self._happens(c.calibration_rate, c.batch_seconds):
            self.calibration = f"cal-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{self.rng.randrange(100, 999)}"
            self.stats.calibration_changes += 1
        items = []
        while self.next_sample <= now:
            t = self.next_sample
            sample = self.signal.sample(t)
            if sample is not None:
                items.append(self._reading(t, "tissue_o2", sample[0], "%", sample[1]))
            self.next_sample += 1.0 / self.hz
        if now >= self.next_temperature:
            celsius = self.rng.gauss(36.4, 0.3)
            value = celsius * 9 / 5 + 32 if self.temp_unit == "degF" else celsius
            items.append(self._reading(now, "skin_temp", round(value, 2), self.temp_unit, None))
            self.next_temperature = now + c.temperature_every
        if c.spo2_every is not None and now >= self.next_spo2:
            spo2 = min(100.0, self.rng.gauss(self.spo2_baseline, 0.7))
            items.append(self._reading(now, "spo2", round(spo2), "%", None))
            self.next_spo2 = now + c.spo2_every
        if now >= self.next_battery:
            self.battery_mv -= self.rng.uniform(0, 2)
            items.append(self._reading(now, "battery", round(self.battery_mv), "mV", None))
            self.next_battery = now + c.battery_every
        if items:
            body = orjson.dumps(
                {
                    "schema": "perfuse.readings/1",
                    "batch_id": f"{self.device.device_id}-{items[0]['seq']}",
                    "device_id": self.device.device_id,
                    "firmware": self.firmware,
                    "readings": items,
                }
            )
            self.outbox.append(Batch(body, len(items), now))
            self.stats.generated += len(items)

    def sign(self, body: bytes) -> dict[str, str]:
        stamp = str(int(time.time()))
        signature = self.device.private_key.sign(stamp.encode() + b"\n" + body)
        return {
            "X-Perfuse-Key": self.device.key_id,
            "X-Perfuse-Timestamp": stamp,
            "X-Perfuse-Signature": base64.b64encode(signature).decode(),
        }

    async def post(self, transport: Transport, batch: Batch) -> bool:
        """Send one batch; True once the server has answered it for good (200 or a 4xx)."""
        self.stats.batches += 1
        self.stats.readings += batch.size
        reply = await transport.send(self.device.device_id, batch.body, self.sign(batch.body))
        if reply is None:  # no response, or no ack in time: sent again later, backing off
            self.stats.errors += 1
            await self.stats.back_off(self.backoff)
            return False
        if reply.status in (429, 503):
            self.stats.throttled += reply.status == 429
            self.stats.errors += reply.status == 503
            if reply.suggested_interval_s is not None:
                self.pace = max(self.pace, reply.suggested_interval_s)
            await self.stats.back_off(self.backoff, reply.retry_after)
            return False
        self.backoff.succeeded()
        if reply.status == 200:
            self._answered(batch, reply)
            return True
        self.stats.errors += 1
        return True  # a 4xx will not get better by resending the same bytes

    def _answered(self, batch: Batch, reply: Reply) -> None:
        result = reply.body
        self.stats.accepted += result["accepted"]
        self.stats.duplicates += result["duplicates"]
        self.stats.rejected += len(result["rejected"])
        if not batch.acknowledged:
            batch.acknowledged = True
            self.stats.acknowledged_batches += 1
            self.stats.acknowledged_readings += result["accepted"] + result["duplicates"]

    async def flush(self, client: Transport, now: float, *, final: bool = False) -> None:
        if self.holding and len(self.outbox) >= 2:
            # The held batch is overtaken by the next one: the server sees them out of order.
            self.outbox[-1], self.outbox[-2] = self.outbox[-2], self.outbox[-1]
            self.holding = False
            self.stats.reordered += 1
        elif len(self.outbox) >= 2 and self.rng.random() < self.config.reorder:
            # A backlog flushed over several connections: two batches land the wrong way round.
            self.outbox[0], self.outbox[1] = self.outbox[1], self.outbox[0]
            self.stats.reordered += 1
        elif not final and len(self.outbox) == 1 and self.rng.random() < self.config.reorder:
            self.holding = True
            return
        while self.outbox:
            batch = self.outbox[0]
            if not await self.post(client, batch):
                return
            self.outbox.popleft()
            if now - batch.created > 2 * self.config.batch_seconds + 1:
                self.stats.late_batches += 1
            if self.rng.random() < self.config.retransmit:
                self.stats.retransmits += 1
                await self.post(client, batch)

    async def run(self, client: Transport, stop: asyncio.Event) -> None:
        c = self.config
        await asyncio.sleep(self.rng.uniform(0, c.batch_seconds))  # spread the fleet over the interval
        while not stop.is_set():
            now = time.time()
            self.collect(now)
            if now >= self.offline_until and self._happens(c.offline_rate, c.batch_seconds):
                self.offline_until = now + self.rng.uniform(*c.offline_seconds)
                self.stats.offline_periods += 1
            if now >= self.offline_until:
                await self.flush(client, now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, now + self.pace - time.time()))

    async def drain(self, client: Transport, deadline: float) -> None:
        """At shutdown the gateway comes back online and flushes what it holds."""
        while self.outbox and time.monotonic() < deadline:
            await self.flush(client, time.time(), final=True)


# --- edge gateways (contract section 1c) --------------------------------------------------------

# An outer request stays inside the contract's limits (5,000 readings and 1 MiB in all) with room
# for the envelope and base64's extra third.
HUB_MAX_READINGS = 4000
HUB_MAX_BODY_BYTES = 600 * 1024


@dataclass
class FleetGateway:
    gateway_id: str
    key_id: str
    private_key: Ed25519PrivateKey
    ward: str
    # Its MQTT client certificate for the key (issued by the deployment CA; None without one).
    certificate_pem: str | None = None


def provision_gateways(*, ward: str, count: int, keyfile: Path) -> list[FleetGateway]:
    """Gateways `hub-<ward>-NN` of a ward, keys kept in the fleet's keyfile; idempotent."""
    keys = _load_keys(keyfile)
    authority = pki.authority_load()
    hubs = []
    for gateway_id in (f"hub-{ward}-{i:02d}" for i in range(1, count + 1)):
        private = _usable(keys.get(gateway_id), gateway_id, gateway=True)
        if private is None or (
            authority is not None and not _certified(keys[gateway_id].get("certificate_pem"), authority)
        ):
            # A new key, or one kept from before the deployment CA existed: a (new) certified key.
            provisioned = gateway_provision(gateway_id=gateway_id, ward_code=ward)
            assert provisioned.private_key_pem is not None
            keys[gateway_id] = {"key_id": provisioned.key.key_id, "private_key_pem": provisioned.private_key_pem}
            if provisioned.certificate_pem is not None:
                keys[gateway_id]["certificate_pem"] = provisioned.certificate_pem
            _save_keys(keyfile, keys)
            private = _usable(keys[gateway_id], gateway_id, gateway=True)
            assert private is not None
        certificate = keys[gateway_id].get("certificate_pem") if authority is not None else None
        hubs.append(FleetGateway(gateway_id, keys[gateway_id]["key_id"], private, ward, certificate))
    return hubs


def provision_hubs(fleet: list[FleetDevice], *, count: int, keyfile: Path) -> list[FleetGateway]:
    """`count` gateways over the fleet's wards in proportion to their devices, at least one a ward
    (a gateway carries only devices of its own ward)."""
    per_ward = Counter(d.ward for d in fleet)
    return [
        hub
        for ward, devices in per_ward.items()
        for hub in provision_gateways(ward=ward, count=max(1, round(count * devices / len(fleet))), keyfile=keyfile)
    ]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Hub:
    """An edge gateway forwarding the batches its devices signed: every `batch_seconds` it collects
    each device's batch (signed by the device when made, so a buffered batch keeps its old
    timestamp) and sends everything pending in outer requests signed with its own key. It goes
    offline and flushes late like a device's own link; a lost acknowledgement makes it send the
    request again; an inner batch answered 429 or 503 stays queued and is sent again after
    `retry_after`; nothing is dropped but what the server refused for good (a 4xx)."""

    def __init__(self, gateway: FleetGateway, devices: list[Gateway], *, config: GatewayConfig, seed: int) -> None:
        self.gateway = gateway
        self.devices = devices
        self.config = config
        self.stats = devices[0].stats
        self.rng = random.Random(seed)  # noqa: S311 (simulation, not security)
        self.offline_until = 0.0
        self.backoff = Backoff(rng=random.Random(seed + 1))  # noqa: S311

    def chunks(self) -> list[list[tuple[Gateway, Batch]]]:
        """Everything pending, in order, cut into requests within the limits."""
        chunks: list[list[tuple[Gateway, Batch]]] = [[]]
        readings = size = 0
        for device in self.devices:
            for batch in device.outbox:
                if chunks[-1] and (
                    readings + batch.size > HUB_MAX_READINGS or size + len(batch.body) > HUB_MAX_BODY_BYTES
                ):
                    chunks.append([])
                    readings = size = 0
                chunks[-1].append((device, batch))
                readings += batch.size
                size += len(batch.body)
        return [chunk for chunk in chunks if chunk]

    @staticmethod
    def inner(device: Gateway, batch: Batch) -> dict[str, Any]:
        stamp = str(int(batch.created))
        signature = device.device.private_key.sign(stamp.encode() + b"\n" + batch.body)
        return {
            "key": device.device.key_id,
            "timestamp": int(stamp),
            "signature": _b64(signature),
            "body": _b64(batch.body),
        }

    def sign(self, body: bytes) -> dict[str, str]:
        stamp = str(int(time.time()))
        signature = self.gateway.private_key.sign(stamp.encode() + b"\n" + body)
        return {
            "X-Perfuse-Key": self.gateway.key_id,
            "X-Perfuse-Timestamp": stamp,
            "X-Perfuse-Signature": _b64(signature),
        }

    async def post(self, client: GatewayTransport, chunk: list[tuple[Gateway, Batch]], now: float) -> bool:
        """Send one request; True when every inner batch in it was answered for good."""
        body = orjson.dumps(
            {
                "schema": "perfuse.gateway/1",
                "gateway_id": self.gateway.gateway_id,
                "batches": [self.inner(device, batch) for device, batch in chunk],
            }
        )
        results = await self._send(client, body, chunk)
        if results is None:
            return False
        wait = self._settle(chunk, results, now)
        if self.rng.random() < self.config.retransmit:
            self.stats.retransmits += 1  # the acknowledgement was lost: the same request again
            again = await self._send(client, body, chunk)
            for result in again or []:
                self._count(result)
        if wait is not None:
            await asyncio.sleep(wait + self.rng.random() * 0.2)
            return False
        return True

    async def _send(
        self, client: GatewayTransport, body: bytes, chunk: list[tuple[Gateway, Batch]]
    ) -> list[dict[str, Any]] | None:
        self.stats.gateway_requests += 1
        self.stats.batches += len(chunk)
        self.stats.readings += sum(batch.size for _, batch in chunk)
        reply = await client.send_gateway(self.gateway.gateway_id, body, self.sign(body))
        if reply is None:  # no response, or no ack in time: sent again later, backing off
            self.stats.errors += 1
            await self.stats.back_off(self.backoff)
            return None
        if reply.status in (429, 503):  # an overloaded server: its retry_after, then backing off
            self.stats.errors += 1
            await self.stats.back_off(self.backoff, reply.retry_after)
            return None
        self.backoff.succeeded()
        if reply.status == 200:
            results: list[dict[str, Any]] = reply.body["results"]
            return results
        self.stats.errors += 1
        for device, batch in chunk:  # the whole request was refused for good (a 4xx)
            device.outbox.remove(batch)
        return None

    def _count(self, result: dict[str, Any]) -> None:
        if result["status"] == 200:
            self.stats.accepted += result["accepted"]
            self.stats.duplicates += result["duplicates"]
            self.stats.rejected += len(result["rejected"])
        elif result["status"] == 429:
            self.stats.throttled += 1
        else:
            self.stats.errors += 1

    def _settle(self, chunk: list[tuple[Gateway, Batch]], results: list[dict[str, Any]], now: float) -> float | None:
        """Dequeue what was answered for good; the longest `retry_after` of the rest, if any."""
        wait: float | None = None
        for result in results:
            self._count(result)
            device, batch = chunk[result["index"]]
            if result["status"] in (429, 503):
                wait = max(wait or 0.0, float(result.get("retry_after", 1)))
                continue
            device.outbox.remove(batch)
            if now - batch.created > 2 * self.config.batch_seconds + 1:
                self.stats.late_batches += 1
        return wait

    async def flush(self, client: GatewayTransport, now: float) -> None:
        for chunk in self.chunks():
            if not await self.post(client, chunk, now):
                return

    async def run(self, client: GatewayTransport, stop: asyncio.Event) -> None:
        c = self.config
        await asyncio.sleep(self.rng.uniform(0, c.batch_seconds))
        while not stop.is_set():
            now = time.time()
            for device in self.devices:
                device.collect(now)
            if now >= self.offline_until and self.rng.random() < c.offline_rate * c.batch_seconds / 3600.0:
                self.offline_until = now + self.rng.uniform(*c.offline_seconds)
                self.stats.offline_periods += 1
            if now >= self.offline_until:
                await self.flush(client, now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, now + c.batch_seconds - time.time()))

    async def drain(self, client: GatewayTransport, deadline: float) -> None:
        while any(device.outbox for device in self.devices) and time.monotonic() < deadline:
            await self.flush(client, time.time())


def hubs_spread(devices: list[Gateway], gateways: list[FleetGateway], *, config: GatewayConfig, seed: int) -> list[Hub]:
    """Each device to one gateway of its ward, round robin."""
    by_ward: dict[str, list[FleetGateway]] = defaultdict(list)
    for gateway in gateways:
        by_ward[gateway.ward].append(gateway)
    members: dict[str, list[Gateway]] = defaultdict(list)
    for i, device in enumerate(devices):
        candidates = by_ward.get(device.device.ward)
        if not candidates:
            raise ValueError(f"no gateway for ward {device.device.ward!r} of device {device.device.device_id}")
        members[candidates[i % len(candidates)].gateway_id].append(device)
    return [
        Hub(g, members[g.gateway_id], config=config, seed=seed * 104729 + i)
        for i, g in enumerate(gateways)
        if members[g.gateway_id]
    ]


def device_signals(
    fleet: list[FleetDevice], signal: SignalConfig, *, showcase_after_s: float | None
) -> list[SignalConfig]:
    """Each device's signal model: the first worn device alone plays the scripted episode (one
    high-priority alarm to see and hear, not one per bed)."""
    first = next((i for i, d in enumerate(fleet) if d.pseudonym is not None), None)
    if showcase_after_s is None or first is None:
        return [signal] * len(fleet)
    return [replace(signal, showcase_after_s=showcase_after_s) if i == first else signal for i in range(len(fleet))]


def _runners(
    client: Transport,
    gateways: list[Gateway],
    hubs: list[FleetGateway] | None,
    *,
    config: GatewayConfig,
    seed: int,
) -> tuple[list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]], list[Callable[[float], Awaitable[None]]]]:
    """What runs the fleet and drains it at the end: each device on its own link, or the edge
    gateways `hubs` carrying them."""
    if not hubs:
        return [partial(g.run, client) for g in gateways], [partial(g.drain, client) for g in gateways]
    if not isinstance(client, GatewayTransport):
        raise ValueError(f"{type(client).__name__} cannot carry edge gateways' messages")
    spread = hubs_spread(gateways, hubs, config=config, seed=seed)
    return [partial(h.run, client) for h in spread], [partial(h.drain, client) for h in spread]


async def run_fleet(
    fleet: list[FleetDevice],
    *,
    url: str,
    hz: float,
    duration: float | None,
    gateway: GatewayConfig | None = None,
    signal: SignalConfig | None = None,
    seed: int = 1,
    progress: TextIO | None = sys.stderr,
    transport: httpx.AsyncBaseTransport | None = None,
    stop: asyncio.Event | None = None,
    on_tick: Callable[[Stats], None] | None = None,
    drain_seconds: float = 30.0,
    showcase_after_s: float | None = None,
    hubs: list[FleetGateway] | None = None,
    sender: Transport | None = None,
) -> Stats:
    """Run the fleet until `duration` or `stop`, then drain; `sender` (default: HTTP to `url`,
    through `transport` when given) is how the devices reach the server. With `hubs`, the devices
    are spread over those edge gateways, which forward their batches (the sender must then carry
    gateway messages: a `GatewayTransport`)."""
    stats = Stats()
    stop = stop or asyncio.Event()
    gateway = gateway or GatewayConfig()
    signals = device_signals(fleet, signal or SignalConfig(), showcase_after_s=showcase_after_s)
    gateways = [
        Gateway(d, hz=hz, config=gateway, signal=s, seed=seed * 7919 + i, stats=stats)
        for i, (d, s) in enumerate(zip(fleet, signals, strict=True))
    ]
    client = sender or HttpTransport(url, transport=transport)
    try:
        runs, drains = _runners(client, gateways, hubs, config=gateway, seed=seed)
        tasks = [asyncio.create_task(run(stop)) for run in runs]
        started = time.monotonic()
        try:
            while not stop.is_set():
                remaining = 2.0 if duration is None else max(0.0, started + duration - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=min(2.0, remaining))
                if progress is not None:
                    progress.write("\r" + stats.line())
                    progress.flush()
                if on_tick is not None:
                    on_tick(stats)
                if duration is not None and time.monotonic() - started >= duration:
                    stop.set()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            deadline = time.monotonic() + drain_seconds
            await asyncio.gather(*(drain(deadline) for drain in drains), return_exceptions=True)
            if progress is not None:
                progress.write("\r" + stats.line() + "\n")
    finally:
        await client.close()
    return stats
