"""Step 4, publish: live frames for what a batch committed, sent after the commit.

`stored_frames` builds them (one `reading.batch` per patient with its per-device seq range, one
`annotation.added` per chart mark); `stored_publish` is the one place that hands them to the live
layer. Frames are hints, rows are the truth (telemetry/events.py): a frame lost on the way is
recovered by the browser from the seq ranges, so publishing never delays or fails the answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from telemetry import events
from telemetry.ingest.auth import DeviceKeyRow
from telemetry.ingest.store import Stored

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 5.0
_background: set[asyncio.Task[None]] = set()

Frame = tuple[list[str], dict[str, Any]]  # groups, event


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
        event: dict[str, Any] = {
            "type": "reading.batch",
            "patient": pseudonym,
            "ranges": [{"device": key.device_id, "first": min(seqs), "last": max(seqs)}],
            "points": [
                {"t": events.iso(r[3]), "metric": r[1], "value": r[4], "quality": r[5], "seq": r[2]} for r in rows
            ],
        }
        frames.append(([events.patient_group(pseudonym), events.ward_group(ward)], event))
    for a in stored.annotations:
        if a.patient_id is None or a.patient_id not in stored.patients:
            continue
        pseudonym, _ = stored.patients[a.patient_id]
        event = {
            "type": "annotation.added",
            "patient": pseudonym,
            "annotation": {"id": a.id, "kind": a.kind, "t": events.iso(a.time), "text": a.text},
        }
        frames.append(([events.patient_group(pseudonym)], event))
    return frames


def stored_publish(key: DeviceKeyRow, stored: Stored) -> None:
    """Send the batch's frames in the background (called after the commit, before answering)."""
    if not stored.inserted and not stored.annotations:
        return
    task = asyncio.get_running_loop().create_task(_send_bounded(key, stored))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _send_bounded(key: DeviceKeyRow, stored: Stored) -> None:
    """A Redis that hangs instead of failing must not pile up publishing tasks without end."""
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            for groups, event in stored_frames(key, stored):
                await events.publish(groups, event)
    except TimeoutError:
        log.warning("live publish for %s timed out", key.device_id)
