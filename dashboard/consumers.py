"""Live sockets: one per open patient chart, one per open ward overview.

How it works (docs/live-protocol.md has the frame schemas):
- `connect` takes the session user as audit.asgi.SessionGuardMiddleware left it (OTP
  verification from the session and idle expiry: django-otp's middleware does not run for
  WebSockets), decides access through audit.access and audits the attempt. A refused socket is
  accepted and closed at once with 4403 so the browser sees the code.
- It joins its groups (patient or wards, plus `user.<id>` for logout/revocation), sends a
  snapshot, then forwards deltas. Frames are hints: readings and alarms are rows first, and the
  browser refetches over REST when it sees a gap in a device's seq ranges or a `resync` frame.
- Deltas are buffered per socket and flushed at most once per PERFUSE_LIVE_FLUSH_SECONDS as one
  WebSocket message; reading batches of the same patient are merged. The buffer is bounded
  (points and frames): the oldest frames are dropped and a `resync` frame tells the browser what
  to refetch, so a burst or a slow flush never grows server memory without limit.
- Every PERFUSE_LIVE_REJOIN_SECONDS the socket re-joins its groups (memberships are lost when
  Redis restarts) and re-checks access (break-glass grants expire; patients are admitted).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import deque
from typing import Any

import orjson
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import transaction

from audit.access.asgi import current_user, session_revocation_applies
from audit.access.policy import actor_from_scope, patient_access, patient_access_audited, patients_visible_to, ward_read
from audit.access.refusals import refusal_audit
from config.refusal import Refusal
from dashboard import selectors
from telemetry.events import patient_group, user_group, ward_group
from telemetry.models import Patient

log = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
CLOSE_SESSION_ENDED = 4401


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


class LiveConsumer(AsyncWebsocketConsumer):
    """Shared machinery: coalescing, the bounded buffer, group upkeep. Subclasses authorize."""

    async def connect(self) -> None:
        self._pending: deque[dict[str, Any]] = deque()
        self._pending_points = 0
        self._dropped: dict[str, Any] | None = None
        self._joined: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._last_flush = 0.0
        allowed = await database_sync_to_async(self.authorize)()
        await self.accept()
        if not allowed:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self._join(self.wanted_groups())
        snapshot = await database_sync_to_async(self.snapshot)()
        await self.send(text_data=orjson.dumps(snapshot).decode())
        self._tasks = [asyncio.create_task(self._flusher()), asyncio.create_task(self._upkeep())]

    async def disconnect(self, code: int) -> None:
        for task in getattr(self, "_tasks", []):
            task.cancel()
        for group in getattr(self, "_joined", []):
            with contextlib.suppress(Exception):
                await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """The protocol is server → browser only; anything the browser sends is ignored."""

    # Subclass hooks -------------------------------------------------------------------------

    def authorize(self) -> bool:
        raise NotImplementedError

    def wanted_groups(self) -> list[str]:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def recheck(self) -> bool:
        """Sync, periodic: is the socket still allowed? May update the wanted groups."""
        raise NotImplementedError

    def after_recheck(self) -> None:
        """In the event loop, after a successful `recheck` (which runs in a worker thread)."""

    def accepts(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The frame to forward for a group event, or None to drop it."""
        return event

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Other apps may send new event types to the shared groups; an unknown type is not an error.
        if getattr(self, get_handler_name(message), None) is None:
            log.debug("live socket ignores %s", message.get("type"))
            return
        await super().dispatch(message)

    # Group events ---------------------------------------------------------------------------

    async def reading_batch(self, event: dict[str, Any]) -> None:
        self._enqueue(event)

    async def annotation_added(self, event: dict[str, Any]) -> None:
        self._enqueue(event)

    async def alarm_transition(self, event: dict[str, Any]) -> None:
        self._enqueue(event)

    async def session_revoked(self, event: dict[str, Any]) -> None:
        if session_revocation_applies(self.scope, event):
            await self.close(code=CLOSE_SESSION_ENDED)

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
        marker = self._dropped or {"type": "resync", "reason": "overflow", "patients": [], "since": None}
        if frame.get("patient") and frame["patient"] not in marker["patients"]:
            marker["patients"].append(frame["patient"])
        times = [p["t"] for p in frame.get("points") or ()]
        if times:
            # ISO-8601 UTC strings of one format sort as times.
            marker["since"] = min([*times, marker["since"]] if marker["since"] else times)
        self._dropped = marker

    def _drain(self) -> list[dict[str, Any]]:
        frames = coalesce(list(self._pending))
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
                message = frames[0] if len(frames) == 1 else {"type": "frames", "frames": frames}
                await self.send(text_data=orjson.dumps(message).decode())

    async def _join(self, groups: list[str]) -> None:
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        for group in set(self._joined) - set(groups):
            await self.channel_layer.group_discard(group, self.channel_name)
        self._joined = list(groups)

    async def _upkeep(self) -> None:
        while True:
            await asyncio.sleep(settings.PERFUSE_LIVE_REJOIN_SECONDS)
            try:
                allowed = await database_sync_to_async(self.recheck)()
                if not allowed:
                    await self.close(code=CLOSE_FORBIDDEN)
                    return
                self.after_recheck()
                await self._join(self.wanted_groups())
            except RuntimeError:
                # The pub/sub layer refuses group_add once this socket's channel was torn down
                # (the socket is closing while this round ran): nothing left to keep up.
                log.debug("live socket upkeep stopped: channel gone", exc_info=True)
                return
            except Exception:  # Redis or the database briefly away: try again next round
                log.warning("live socket upkeep failed", exc_info=True)


class PatientLiveConsumer(LiveConsumer):
    """WS /ws/patients/{pseudonym}/live"""

    def authorize(self) -> bool:
        self.pseudonym: str = self.scope["url_route"]["kwargs"]["pseudonym"]
        user = self.scope.get("user")
        patient, _ = patient_access_audited(
            user=user, actor=actor_from_scope(self.scope), pseudonym=self.pseudonym, action="live.subscribe"
        )
        self.patient: Patient | None = patient
        self.user_id: int | None = user.pk if patient is not None and user is not None else None
        return patient is not None

    def wanted_groups(self) -> list[str]:
        assert self.user_id is not None
        return [patient_group(self.pseudonym), user_group(self.user_id)]

    def snapshot(self) -> dict[str, Any]:
        assert self.patient is not None
        return selectors.patient_snapshot(patient=self.patient, now=dt.datetime.now(dt.UTC))

    def recheck(self) -> bool:
        user = current_user(self.scope)
        patient = Patient.objects.filter(pseudonym=self.pseudonym).first()
        return bool(user is not None and patient is not None and patient_access(user, patient).allowed)

    def accepts(self, event: dict[str, Any]) -> dict[str, Any] | None:
        return event if event.get("patient") == self.pseudonym else None


class WardLiveConsumer(LiveConsumer):
    """WS /ws/ward/live: every patient the user may see, tissue O2 only."""

    def authorize(self) -> bool:
        user = self.scope.get("user")
        actor = actor_from_scope(self.scope)
        self.user_id: int | None = None
        try:
            with transaction.atomic():
                patients = ward_read(user=user, actor=actor, action="ward.live.subscribe")
        except Refusal as refusal:
            refusal_audit(refusal, actor)
            return False
        self.user_id = user.pk
        self._set_patients(patients)
        return True

    def _set_patients(self, patients: list[Patient]) -> None:
        self.patients = patients
        self.visible = {p.pseudonym for p in patients}

    def wanted_groups(self) -> list[str]:
        assert self.user_id is not None
        wards = sorted({p.ward.code for p in self.patients})
        return [*(ward_group(code) for code in wards), user_group(self.user_id)]

    def snapshot(self) -> dict[str, Any]:
        return selectors.ward_snapshot(patients=self.patients, now=dt.datetime.now(dt.UTC))

    def recheck(self) -> bool:
        user = current_user(self.scope)
        if user is None:
            return False
        patients = list(patients_visible_to(user).select_related("ward"))
        if {p.pseudonym for p in patients} != self.visible:
            self._set_patients(patients)
            self._membership_changed = True
        return True

    def after_recheck(self) -> None:
        if getattr(self, "_membership_changed", False):
            # Admissions or discharges: the browser refetches its list.
            self._membership_changed = False
            self._enqueue({"type": "resync", "reason": "membership", "patients": [], "since": None}, filtered=False)

    def accepts(self, event: dict[str, Any]) -> dict[str, Any] | None:
        if event.get("patient") not in self.visible:
            return None
        if event.get("type") != "reading.batch":
            return event
        points = [p for p in event["points"] if p.get("metric") == selectors.METRIC]
        return {**event, "points": points}
