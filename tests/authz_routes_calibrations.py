"""Calibration routes of the device-administration pages for the authorization matrix
(tests/authz_registry.py): device administrators and administrators only."""

from __future__ import annotations

import datetime as dt
from typing import Any

from telemetry.models import Calibration, DeviceKey
from tests.authz_registry import Route

DEVICE_ADMINS = frozenset({"device_admin", "admin"})


def _device(world: Any) -> dict[str, str]:
    return {"device": DeviceKey.objects.get(key_id=world.key).device.device_id}


def _calibration(world: Any) -> dict[str, str]:
    """A calibration to correct on the world's ward-a device."""
    values = _device(world)
    Calibration.objects.create(
        device=DeviceKey.objects.get(key_id=world.key).device,
        calibration_id="c-0",
        coefficients={"gain": 1.0, "offset": 0.0},
        effective_from=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
    )
    return values


ROUTES: list[Route] = [
    Route("device calibrations page", "page", "GET", "/devices/{device}/calibrations", DEVICE_ADMINS, setup=_device),
    Route(
        "add a calibration",
        "page",
        "POST",
        "/devices/{device}/calibrations",
        DEVICE_ADMINS,
        data={
            "calibration_id": "c-m",
            "gain": "1.1",
            "offset": "0",
            "effective_from": "2026-03-01T06:00",
            "reason": "m",
        },
        setup=_device,
    ),
    Route(
        "correct a calibration",
        "page",
        "POST",
        "/devices/{device}/calibrations/c-0/correct",
        DEVICE_ADMINS,
        data={"gain": "1.1", "offset": "0", "reason": "matrix"},
        setup=_calibration,
    ),
]
