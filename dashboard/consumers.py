"""Live sockets: one per open patient chart, one per open ward overview.

How it works (docs/live-protocol.md has the frame schemas, dashboard/schemas.py their types):
- config.consumers.LiveConsumer runs the socket's life: `authorize` takes the session user as
  audit.access.asgi.SessionGuardMiddleware left it (OTP verification from the session and idle expiry:
  django-otp's middleware does not run for WebSockets), decides access through audit.access and
  audits the attempt; a refused socket is closed with 4403.
- It joins its groups (patient or wards, plus `user.<id>` for logout/revocation), sends a
  snapshot, then forwards deltas. Frames are hints: readings and alarms are rows first, and the
  browser refetches over REST when it sees a gap in a device's seq ranges or a `resync` frame.
- Deltas are buffered per socket and flushed at most once per PERFUSE_LIVE_FLUSH_SECONDS as one
  WebSocket message; reading batches of the same patient are merged. The buffer is bounded
  (points and frames): the oldest frames are dropped and a `resync` frame tells the browser what
  to refetch, so a burst or a slow flush never grows server memory without limit.
- Every PERFUSE_LIVE_REJOIN_SECONDS the base re-joins the groups (memberships are lost when
  Redis restarts) and `recheck` re-checks access (break-glass grants expire; patients are admitted).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import deque
from typing import Any

import msgspec
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction

from audit.access.asgi import current_user
from audit.access.policy import (
    actor_from_scope,
    live_refusal,
    patient_access,
    patient_access_audited,
    patients_visible_to,
    user_can,
    ward_read,
    ward_scope,
)
from audit.access.refusals import refusal_audit
from audit.trail import audit_record
from config.consumers import CLOSE_FORBIDDEN, CLOSE_SUBJECT_ENDED, LiveConsumer
from config.live import patient_group, ward_group
from config.refusal import Refusal
from config.users import StaffUser
from dashboard import selectors
from dashboard.schemas import FramesFrame, PatientSnapshotFrame, ResyncFrame, WardSnapshotFrame
from telemetry.models import Patient


def _points(frame: dict[str, Any]) -> int:
    return len(frame.get("points") or ())


def _merge_ranges(ranges: list[dict[str, Any]], more: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join contiguous seq ranges of a device; keep separate ones separate so gaps stay visible."""
    merged = [dict(r) for r in ranges]
    for r in more:
        for m in reversed(merged):
            if m["device"] == r["device"]:
                if m["last"] + 1 == r["first"]:
                    m["last"] = r["last"]
                    break
                merged.append(dict(r))
                break
        else:
            merged.append(dict(r))
    return merged


def coalesce(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge reading batches per patient (at the position of the first one); keep other frames."""
    out: list[dict[str, Any]] = []
    batches: dict[str, dict[str, Any]] = {}
    for frame in frames:
        if frame.get("type") != "reading.batch":
            out.append(frame)
            continue
        current = batches.get(frame["patient"])
        if current is None:
            current = {**frame, "ranges": list(frame["ranges"]), "points": list(frame["points"])}
            batches[frame["patient"]] = current
            out.append(current)
        else:
            current["ranges"] = _merge_ranges(current["ranges"], frame["ranges"])
            current["points"].extend(frame["points"])
    return out


class BufferedLiveConsumer(LiveConsumer):
    """The dashboard's sockets: deltas go through a coalescing, bounded buffer. Subclasses
    authorize and filter."""

    def started(self) -> None:
        self._pending: deque[dict[str, Any]] = deque()
        self._pending_points = 0
        self._dropped: ResyncFrame | None = None
        self._wake = asyncio.Event()
        self._last_flush = 0.0
        self.spawn(self._flusher())

    def accepts(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The frame to forward for a group event, or None to drop it."""
        return event

    # Group events ---------------------------------------------------------------------------

    async def reading_batch(self, event: dict[str, Any]) -> None:
        self._enqueue(event)

    async def annotation_added(self, event: dict[str, Any]) -> None:
        self._enqueue(event)

    async def alarm_transition(self, event: dict[str, Any]) -> None:
        self._enqueue(event)

    # Buffering ------------------------------------------------------------------------------

    def _enqueue(self, event: dict[str, Any], *, filtered: bool = True) -> None:
        frame = self.accepts(event) if filtered else event
        if frame is None:
            return
        self._pending.append(frame)
        self._pending_points += _points(frame)
        while self._pending and (
            len(self._pending) > settings.PERFUSE_LIVE_MAX_PENDING_FRAMES
            or self._pending_points > settings.PERFUSE_LIVE_MAX_PENDING_POINTS
        ):
            self._drop(self._pending.popleft())
        self._wake.set()

    def _drop(self, frame: dict[str, Any]) -> None:
        self._pending_points -= _points(frame)
        marker = self._dropped or ResyncFrame(reason="overflow", patients=[], since=None)
        if frame.get("patient") and frame["patient"] not in marker.patients:
            marker.patients.append(frame["patient"])
        times = [p["t"] for p in frame.get("points") or ()]
        if times:
            # ISO-8601 UTC strings of one format sort as times.
            marker.since = min([*times, marker.since] if marker.since else times)
        self._dropped = marker

    def _drain(self) -> list[dict[str, Any] | ResyncFrame]:
        frames: list[dict[str, Any] | ResyncFrame] = [*coalesce(list(self._pending))]
        self._pending.clear()
        self._pending_points = 0
        if self._dropped is not None:
            frames.insert(0, self._dropped)
            self._dropped = None
        return frames

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        interval = settings.PERFUSE_LIVE_FLUSH_SECONDS
        while True:
            await self._wake.wait()
            delay = self._last_flush + interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._wake.clear()
            frames = self._drain()
            self._last_flush = loop.time()
            if frames:
                await self.send_frame(frames[0] if len(frames) == 1 else FramesFrame(frames=frames))


# `patient.flow` events after which a patient's feed has nothing more to show.
ENDING_EVENTS = frozenset({"discharged", "admit_cancelled"})


class PatientLiveConsumer(BufferedLiveConsumer):
    """WS /ws/patients/{pseudonym}/live: the present of one patient. A discharged patient's
    socket closes with 4410 (and is refused with it afterwards: the chart still shows history)."""

    def authorize(self) -> bool:
        self.pseudonym: str = self.scope["url_route"]["kwargs"]["pseudonym"]
        user = self.scope.get("user")
        patient, decision = patient_access_audited(
            user=user, actor=actor_from_scope(self.scope), pseudonym=self.pseudonym, action="live.subscribe", live=True
        )
        if decision.reason == "discharged":
            self.refused_code = CLOSE_SUBJECT_ENDED
        self.patient: Patient | None = patient
        return patient is not None

    def wanted_groups(self) -> list[str]:
        return [patient_group(self.pseudonym)]

    def snapshot(self) -> PatientSnapshotFrame:
        assert self.patient is not None
        return selectors.patient_snapshot(patient=self.patient, now=dt.datetime.now(dt.UTC))

    def recheck(self) -> bool:
        user = current_user(self.scope)
        patient = Patient.objects.filter(pseudonym=self.pseudonym).first()
        if user is None or patient is None:
            return False
        decision = patient_access(user, patient)
        self._ending = live_refusal(patient, decision) == "discharged"
        return decision.allowed and live_refusal(patient, decision) is None

    async def access_lost(self) -> None:
        await self.close(code=CLOSE_SUBJECT_ENDED if getattr(self, "_ending", False) else CLOSE_FORBIDDEN)

    async def patient_flow(self, event: dict[str, Any]) -> None:
        """Discharged: tell the browser and close. Moved (or devices changed): re-check access
        at once (a transfer may end it); the chart has nothing to redraw."""
        if event.get("patient") != self.pseudonym:
            return
        if event.get("event") in ENDING_EVENTS:
            await self.send_frame(event)
            await self.close(code=CLOSE_SUBJECT_ENDED)
            return
        if not await database_sync_to_async(self.recheck)():
            await self.access_lost()

    def accepts(self, event: dict[str, Any]) -> dict[str, Any] | None:
        return event if event.get("patient") == self.pseudonym else None


class WardLiveConsumer(BufferedLiveConsumer):
    """WS /ws/ward/live: every patient the user may see; the metrics its cards show only."""

    def authorize(self) -> bool:
        user = self.scope.get("user")
        actor = actor_from_scope(self.scope)
        try:
            with transaction.atomic():
                patients = ward_read(user=user, actor=actor, action="ward.live.subscribe")
        except Refusal as refusal:
            refusal_audit(refusal, actor)
            return False
        self._set_patients(patients, user)
        self.metrics = {selectors.METRIC, *selectors.card_metrics()}
        return True

    def _set_patients(self, patients: list[Patient], user: StaffUser) -> None:
        self.patients = patients
        self.visible = {p.pseudonym for p in patients}
        # Care staff also hear their own wards while no patient of theirs is there: an admission
        # to an empty ward must reach its overview.
        scope = ward_scope(user) if user_can(user, "view_ward_patients") else None
        self.own_wards = scope.ward_codes if scope is not None else frozenset()

    def wanted_groups(self) -> list[str]:
        return [ward_group(code) for code in sorted({p.ward.code for p in self.patients} | self.own_wards)]

    def snapshot(self) -> WardSnapshotFrame:
        return selectors.ward_snapshot(patients=self.patients, now=dt.datetime.now(dt.UTC))

    def recheck(self) -> bool:
        user = current_user(self.scope)
        if user is None:
            return False
        patients = list(patients_visible_to(user).select_related("ward"))
        visible = {p.pseudonym for p in patients}
        if visible != self.visible:
            gained = sorted(visible - self.visible)
            if gained:
                # The feed now streams patients the subscription's audit event did not list: a
                # read of their data like any other, so it is audited too.
                audit_record(
                    actor=actor_from_scope(self.scope),
                    action="ward.live.patients_added",
                    detail={"reason": "visible", "patients": gained},
                )
            self._set_patients(patients, user)
            self._membership_changed = True
        return True

    async def patient_flow(self, event: dict[str, Any]) -> None:
        """An admission, transfer, discharge or device change on one of the socket's wards:
        re-read who the user may see now (audited as on every re-check), re-join the wards, and
        forward the frame for a patient the overview shows or showed (then a `resync`)."""
        shown = event.get("patient") in self.visible
        await database_sync_to_async(self.recheck)()
        await self._join()
        if shown or event.get("patient") in self.visible:
            self._enqueue(event, filtered=False)
        self.after_recheck()

    def after_recheck(self) -> None:
        if getattr(self, "_membership_changed", False):
            # Admissions or discharges: the browser refetches its list.
            self._membership_changed = False
            resync = ResyncFrame(reason="membership", patients=[], since=None)
            self._enqueue(msgspec.to_builtins(resync), filtered=False)

    def accepts(self, event: dict[str, Any]) -> dict[str, Any] | None:
        if event.get("patient") not in self.visible:
            return None
        if event.get("type") != "reading.batch":
            return event
        points = [p for p in event["points"] if p.get("metric") in self.metrics]
        return {**event, "points": points}
