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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import httpx
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import transaction

from telemetry import pki
from telemetry.models import Assignment, DeviceKey, Ward
from telemetry.services import device_provision, patient_admit
from telemetry.simulator.signals import PatientSignal, SignalConfig
from telemetry.simulator.transport import HttpTransport, Identity, Reply, Transport

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
    # Its MQTT client certificate for the key (issued by the deployment CA; None without one).
    certificate_pem: str | None = None


def identities(fleet: list[FleetDevice]) -> dict[str, Identity]:
    """Each device's TLS identity for MQTT: its own Ed25519 key and the certificate issued for it."""
    found = {}
    for d in fleet:
        if d.certificate_pem is not None:
            pem = d.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode()
            found[d.device_id] = Identity(certificate_pem=d.certificate_pem, private_key_pem=pem)
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


def _usable(entry: dict[str, str] | None, device_id: str) -> Ed25519PrivateKey | None:
    if (
        not entry
        or not DeviceKey.objects.filter(
            key_id=entry.get("key_id"), device__device_id=device_id, revoked_at__isnull=True
        ).exists()
    ):
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
        fleet.append(FleetDevice(device_id, keys[device_id]["key_id"], private, pseudonym, certificate))
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
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        rate = self.accepted / max(1e-9, time.monotonic() - self.started)
        return (
            f"batches {self.batches}  readings {self.readings}  accepted {self.accepted} ({rate:.0f}/s)  "
            f"duplicates {self.duplicates}  rejected {self.rejected}  429s {self.throttled}  errors {self.errors}"
        )

    def summary(self) -> dict[str, int]:
        return {name: value for name, value in vars(self).items() if name != "started"}


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
        if reply is None:  # no response, or no ack in time: sent again later
            self.stats.errors += 1
            await asyncio.sleep(1.0 + self.rng.random())
            return False
        if reply.status == 200:
            self._answered(batch, reply)
            return True
        if reply.status in (429, 503):
            self.stats.throttled += reply.status == 429
            self.stats.errors += reply.status == 503
            if reply.suggested_interval_s is not None:
                self.pace = max(self.pace, reply.suggested_interval_s)
            await asyncio.sleep(reply.retry_after + self.rng.random() * 0.2)
            return False
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


def device_signals(
    fleet: list[FleetDevice], signal: SignalConfig, *, showcase_after_s: float | None
) -> list[SignalConfig]:
    """Each device's signal model: the first worn device alone plays the scripted episode (one
    high-priority alarm to see and hear, not one per bed)."""
    first = next((i for i, d in enumerate(fleet) if d.pseudonym is not None), None)
    if showcase_after_s is None or first is None:
        return [signal] * len(fleet)
    return [replace(signal, showcase_after_s=showcase_after_s) if i == first else signal for i in range(len(fleet))]


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
    sender: Transport | None = None,
) -> Stats:
    """Run the fleet until `duration` or `stop`, then drain; `sender` (default: HTTP to `url`,
    through `transport` when given) is how the devices reach the server."""
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
        tasks = [asyncio.create_task(g.run(client, stop)) for g in gateways]
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
            await asyncio.gather(*(g.drain(client, deadline) for g in gateways), return_exceptions=True)
            if progress is not None:
                progress.write("\r" + stats.line() + "\n")
    finally:
        await client.close()
    return stats
