"""Typed schemas of every frame the live sockets send (docs/live-protocol.md).

Tests decode each frame they receive with `frame_decoder`, so a frame that drifts from its
schema fails a test instead of a browser.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Point(msgspec.Struct, forbid_unknown_fields=True):
    t: str
    metric: str
    value: float
    quality: float | None
    seq: int


class SeqRange(msgspec.Struct, forbid_unknown_fields=True):
    device: str
    first: int
    last: int


class AnnotationOut(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    kind: str
    t: str
    text: str
    data: dict[str, Any] | None = None


class ReadingBatch(msgspec.Struct, tag_field="type", tag="reading.batch", forbid_unknown_fields=True):
    patient: str
    ranges: list[SeqRange]
    points: list[Point]


class AnnotationAdded(msgspec.Struct, tag_field="type", tag="annotation.added", forbid_unknown_fields=True):
    patient: str
    annotation: AnnotationOut


class AlarmTransition(msgspec.Struct, tag_field="type", tag="alarm.transition"):
    """Built by the alarms app; the dashboard relies only on these fields."""

    patient: str


class Resync(msgspec.Struct, tag_field="type", tag="resync", forbid_unknown_fields=True):
    reason: str  # overflow | membership
    patients: list[str]
    since: str | None


class PatientSnapshot(msgspec.Struct, tag_field="type", tag="snapshot", forbid_unknown_fields=True):
    patient: str
    server_time: str
    since: str
    points: list[Point]
    ranges: list[SeqRange]
    annotations: list[AnnotationOut]
    alarms: list[dict[str, Any]]


class WardCard(msgspec.Struct, forbid_unknown_fields=True):
    pseudonym: str
    ward: str
    metric: str
    unit: str
    value: float | None
    quality: float | None
    last_seen: str | None
    age_seconds: float | None
    stale: bool
    trend: dict[str, Any]
    sparkline: list[tuple[str, float]]
    alarm: dict[str, Any] | None


class WardSnapshot(msgspec.Struct, tag_field="type", tag="ward.snapshot", forbid_unknown_fields=True):
    server_time: str
    patients: list[WardCard]


Delta = ReadingBatch | AnnotationAdded | AlarmTransition | Resync


class Frames(msgspec.Struct, tag_field="type", tag="frames", forbid_unknown_fields=True):
    """Several frames coalesced into one WebSocket message, in order."""

    frames: list[Delta]


Frame = ReadingBatch | AnnotationAdded | AlarmTransition | Resync | PatientSnapshot | WardSnapshot | Frames

frame_decoder = msgspec.json.Decoder(Frame)
