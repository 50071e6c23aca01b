"""Telemetry's live frames: `reading.batch` and `annotation.added` (docs/live-protocol.md).

Built by the ingest path after its commit (and `annotation.added` by the alarms app for its
marks), published with config.live.publish_after_commit. A frame lost by the channel layer
(at-most-once) is recovered by the browser, which sees a gap in the per-device seq ranges and
refetches over REST.
"""

from __future__ import annotations

import msgspec

from config.live import Frame


class PointOut(msgspec.Struct, forbid_unknown_fields=True):
    t: str
    metric: str
    value: float
    quality: float | None
    seq: int


class SeqRange(msgspec.Struct, forbid_unknown_fields=True):
    """The seqs of one device a frame or snapshot covers (the browser's gap detection)."""

    device: str
    first: int
    last: int


class AnnotationMark(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    kind: str
    t: str
    text: str


class ReadingBatchFrame(Frame, tag="reading.batch"):
    patient: str
    ranges: list[SeqRange]
    points: list[PointOut]


class AnnotationAddedFrame(Frame, tag="annotation.added"):
    patient: str
    annotation: AnnotationMark


class PatientFlowFrame(Frame, tag="patient.flow"):
    """A patient was admitted, moved, discharged, or got or lost a device (telemetry/stays.py).

    Sent to the patient's group and to the group of every ward concerned (the old and the new
    one on a transfer). The ward overview's socket re-reads who it may show and the browser
    refetches its cards; a patient's socket closes on `discharged` and `admit_cancelled`, and
    re-checks access on the others (a transfer may end it)."""

    patient: str
    event: str  # admitted | transferred | discharged | admit_cancelled | discharge_cancelled | devices
    ward: str
    bed: str
    at: str
    previous_ward: str = ""
