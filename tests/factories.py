"""Small factories and helpers shared by tests: wards, devices with keys, signed requests, staff."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import time
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from config.live import publish_flush
from telemetry.models import Ward
from telemetry.services import device_provision, gateway_provision, patient_admit

_counter = itertools.count(1)


def ward(code: str | None = None, site: str = "main") -> Ward:
    code = code or f"ward-{next(_counter)}"
    return Ward.objects.get_or_create(code=code, defaults={"name": code.title(), "site": site})[0]


@dataclass
class SimDevice:
    device_id: str
    key_id: str
    private_key: Ed25519PrivateKey
    ward_code: str

    def sign(self, body: bytes, stamp: int | None = None) -> dict[str, str]:
        stamp = int(time.time()) if stamp is None else stamp
        signature = self.private_key.sign(str(stamp).encode() + b"\n" + body)
        return {
            "X-Perfuse-Key": self.key_id,
            "X-Perfuse-Timestamp": str(stamp),
            "X-Perfuse-Signature": base64.b64encode(signature).decode(),
        }


def device(ward_code: str | None = None, device_id: str | None = None, patient: str | None = None) -> SimDevice:
    ward_code = ward_code or ward().code
    device_id = device_id or f"lumee-{next(_counter):04d}"
    provisioned = device_provision(device_id=device_id, ward_code=ward_code)
    assert provisioned.private_key_pem is not None
    private = serialization.load_pem_private_key(provisioned.private_key_pem.encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    if patient:
        patient_admit(
            pseudonym=patient,
            ward_code=ward_code,
            device_id=device_id,
            at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2),
        )
        publish_flush()  # the admission's patient.flow frame leaves now, not into a test's socket
    return SimDevice(device_id, provisioned.key.key_id, private, ward_code)


@dataclass
class SimGateway(SimDevice):
    """A provisioned gateway: signs its outer requests like a device (`sign`), wraps device batches."""

    def envelope(self, inners: list[dict[str, Any]], **overrides: Any) -> bytes:
        body: dict[str, Any] = {"schema": "perfuse.gateway/1", "gateway_id": self.device_id, "batches": inners}
        body.update(overrides)
        return orjson.dumps(body)


def inner(dev: SimDevice, body: bytes, stamp: int | None = None) -> dict[str, Any]:
    """A device's signed batch as a gateway carries it (contract section 1c)."""
    headers = dev.sign(body, stamp)
    return {
        "key": headers["X-Perfuse-Key"],
        "timestamp": int(headers["X-Perfuse-Timestamp"]),
        "signature": headers["X-Perfuse-Signature"],
        "body": base64.b64encode(body).decode(),
    }


def gateway(ward_code: str, gateway_id: str | None = None, scope: str = "ward") -> SimGateway:
    gateway_id = gateway_id or f"hub-{next(_counter):04d}"
    provisioned = gateway_provision(gateway_id=gateway_id, ward_code=ward_code, scope=scope)
    assert provisioned.private_key_pem is not None
    private = serialization.load_pem_private_key(provisioned.private_key_pem.encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return SimGateway(gateway_id, provisioned.key.key_id, private, ward_code)


def reading(seq: int, t: dt.datetime | None = None, **overrides: Any) -> dict[str, Any]:
    t = t or dt.datetime.now(dt.UTC)
    item: dict[str, Any] = {
        "seq": seq,
        "sample_time": t.isoformat().replace("+00:00", "Z"),
        "metric": "tissue_o2",
        "value": 62.5,
        "unit": "%",
        "signal_quality": 0.95,
    }
    item.update(overrides)
    return item


def batch_body(dev: SimDevice, readings: list[dict[str, Any]], **overrides: Any) -> bytes:
    body: dict[str, Any] = {"schema": "perfuse.readings/1", "device_id": dev.device_id, "readings": readings}
    body.update(overrides)
    return orjson.dumps(body)


def series(
    start_seq: int, n: int, *, start: dt.datetime | None = None, step: float = 1.0, value: float = 62.5
) -> list[dict[str, Any]]:
    start = start or dt.datetime.now(dt.UTC) - dt.timedelta(seconds=n * step)
    return [reading(start_seq + i, start + dt.timedelta(seconds=i * step), value=value) for i in range(n)]
