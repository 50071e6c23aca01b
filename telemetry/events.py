"""Live events: group names and publishing after commit. Frames are hints, rows are the truth.

A frame lost by the channel layer (at-most-once) is recovered by the browser, which sees a gap
in the per-device seq ranges and refetches over REST.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


def iso(t: dt.datetime) -> str:
    """The one time format of live frames and chart APIs: UTC, milliseconds, 'Z'."""
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def patient_group(pseudonym: str) -> str:
    return f"patient.{pseudonym}"


def ward_group(ward_code: str) -> str:
    return f"ward.{ward_code}"


def user_group(user_id: int) -> str:
    """Every socket of one staff user joins this, so logout/expiry can close them all."""
    return f"user.{user_id}"


async def publish(groups: list[str], event: dict[str, Any]) -> None:
    """Send one event to several groups; never raises (a Redis outage must not fail a write)."""
    layer = get_channel_layer()
    if layer is None:
        return
    for group in groups:
        try:
            await layer.group_send(group, event)
        except Exception:  # the live layer is best effort by design
            log.warning("live publish to %s failed", group, exc_info=True)


def alarms_group() -> str:
    """Every alarm transition, for the alarm console (consumers filter by the viewer's scope)."""
    return "alarms"


def alarms_user_group(user_id: int) -> str:
    """Alarm notifications meant for one staff member (their alarm consoles join it)."""
    return f"alarms.user.{user_id}"
