"""Typed frames of the dashboard's sockets (docs/live-protocol.md): the snapshots, `resync` and the
`frames` wrapper, built here and in dashboard/selectors.py; the deltas they forward are typed
where they are built (telemetry.events, alerts.events).

Tests decode every message the sockets send with `frame_decoder`, so a frame that drifts from
its schema fails a test instead of a browser.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from alerts.events import AlarmTransitionFrame
from config.live import Frame
from telemetry.events import AnnotationAddedFrame, PatientFlowFrame, PointOut, ReadingBatchFrame, SeqRange


class AnnotationOut(msgspec.Struct, forbid_unknown_fields=True):
    """A mark as the snapshot and `GET …/annotations` show it (with its data)."""

    id: int
    kind: str
    t: str
    text: str
    data: dict[str, Any] | None


class PatientSnapshotFrame(Frame, tag="snapshot"):
    patient: str
    server_time: str
    since: str
    points: list[PointOut]
    ranges: list[SeqRange]
    annotations: list[AnnotationOut]
    alarms: list[dict[str, Any]]


class CardVital(msgspec.Struct, forbid_unknown_fields=True):
    """The latest value of a card metric beside tissue O2 (dashboard.selectors.card_vitals)."""

    metric: str
    label: str
    unit: str
    value: float
    last_seen: str


class WardCard(msgspec.Struct, forbid_unknown_fields=True):
    pseudonym: str
    ward: str
    bed: str  # "" when none is known
    devices: list[str]  # the devices measuring the patient now
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
    vitals: list[CardVital]


class WardSnapshotFrame(Frame, tag="ward.snapshot"):
    server_time: str
    patients: list[WardCard]


class ResyncFrame(Frame, tag="resync"):
    reason: str  # overflow | membership
    patients: list[str]
    since: str | None


Delta = ReadingBatchFrame | AnnotationAddedFrame | AlarmTransitionFrame | PatientFlowFrame | ResyncFrame
T = TypeVar("T")


class FramesFrame(Frame, Generic[T], tag="frames"):
    """Several frames coalesced into one WebSocket message, in order. Built with the deltas as
    they came from the groups (plain objects); decoded as `FramesFrame[Delta]`."""

    frames: list[T]


SocketFrame = Delta | PatientSnapshotFrame | WardSnapshotFrame | FramesFrame[Delta]

frame_decoder = msgspec.json.Decoder(SocketFrame)
