"""Step 4, publish: live frames for what a batch committed, sent after the commit.

`stored_frames` builds them (one typed `reading.batch` per patient with its per-device seq range,
one `annotation.added` per chart mark); `stored_publish` (`group_publish` for a group commit)
hands them to the one live publisher (config.live), which never waits for Redis. Frames are
hints, rows are the truth: a frame lost on the way is recovered by the browser from the seq
ranges, so publishing never delays or fails the answer.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from config import live
from telemetry import events
from telemetry.ingest.auth import DeviceKeyRow
from telemetry.ingest.store import Stored

Frame = tuple[list[str], live.Frame]  # groups, frame


def stored_frames(key: DeviceKeyRow, stored: Stored) -> list[Frame]:
    by_patient: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in stored.inserted:
        if row[0] is not None:
            by_patient[row[0]].append(row)
    frames: list[Frame] = []
    for patient_id, rows in by_patient.items():
        pseudonym, ward = stored.patients[patient_id]
        rows.sort(key=lambda r: (r[3], r[2]))
        seqs = [r[2] for r in rows]
        batch = events.ReadingBatchFrame(
            patient=pseudonym,
            ranges=[events.SeqRange(device=key.device_id, first=min(seqs), last=max(seqs))],
            points=[events.PointOut(t=live.iso(r[3]), metric=r[1], value=r[4], quality=r[5], seq=r[2]) for r in rows],
        )
        frames.append(([live.patient_group(pseudonym), live.ward_group(ward)], batch))
    for a in stored.annotations:
        if a.id is None or a.patient_id is None or a.patient_id not in stored.patients:  # id: set once stored
            continue
        pseudonym, _ = stored.patients[a.patient_id]
        mark = events.AnnotationMark(id=a.id, kind=a.kind, t=live.iso(a.time), text=a.text)
        frames.append(
            ([live.patient_group(pseudonym)], events.AnnotationAddedFrame(patient=pseudonym, annotation=mark))
        )
    return frames


def stored_publish(key: DeviceKeyRow, stored: Stored) -> None:
    """Announce what this request committed (called after the commit; never waits for Redis)."""
    live.publish_all_after_commit(stored_frames(key, stored))


def group_publish(by_device: list[tuple[DeviceKeyRow, Stored]]) -> None:
    """Announce what a group's transaction committed, every device's frames in one hand-over to
    the publisher (called after the commit)."""
    live.publish_all_after_commit([frame for key, stored in by_device for frame in stored_frames(key, stored)])
