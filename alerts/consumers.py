"""`WS /ws/alarms/live`: the alarm console's live feed.

`connect` takes the session user as audit.asgi.SessionGuardMiddleware left it (OTP-verified or
not, idle-expired sessions as anonymous: django-otp's middleware does not run for WebSockets),
decides the alarm scope (alerts.selectors.alarm_scope) and audits the subscription either way;
a refused socket is accepted and closed with 4403 so the browser sees the code. It joins the
`alarms` group (every transition), the user's notification group and the user's session group
(closed on logout), sends a snapshot of the open alarms in scope, then forwards `alarm.transition`, `alarm.pause`
and `alarm.notification` frames, dropping those outside the user's scope. Frames are hints: the
browser refetches the list over REST after a reconnect.

Every `rejoin_seconds` (PERFUSE_LIVE_REJOIN_SECONDS, as the dashboard sockets) the socket re-joins
its groups (channel-layer memberships do not survive a Redis restart) and re-checks access with
audit.asgi.current_user: a deactivated user, an ended or no longer OTP-verified session, or a
role that no longer allows the console closes it with 4403 (`session.revoked` frames may be
dropped by the channel layer); changed wards or role update the scope frames are filtered by.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from alerts import selectors
from alerts.schemas import alarm_out, iso
from audit.access.asgi import current_user, session_revocation_applies
from audit.access.policy import actor_from_scope
from audit.access.refusals import refusal_audit
from audit.trail import audit_record
from config.refusal import Refusal
from telemetry import events

log = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
CLOSE_SESSION_ENDED = 4401


class AlarmConsoleConsumer(AsyncJsonWebsocketConsumer):
    rejoin_seconds: float | None = None  # None: settings.PERFUSE_LIVE_REJOIN_SECONDS

    async def connect(self) -> None:
        self.groups_joined: list[str] = []
        self.scope_rule: selectors.AlarmScope | None = None
        self._upkeep: asyncio.Task[None] | None = None
        snapshot = await database_sync_to_async(self._authorize_and_snapshot)()
        await self.accept()
        if snapshot is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        user_id = self.scope["user"].pk
        self.groups_joined = [events.alarms_group(), events.alarms_user_group(user_id), events.user_group(user_id)]
        await self._join()
        await self.send_json(snapshot)
        self._upkeep = asyncio.create_task(self._rejoin_forever())

    def _authorize_and_snapshot(self) -> dict[str, Any] | None:
        user = self.scope.get("user")  # OTP-verified or not by audit.asgi.SessionGuardMiddleware
        actor = actor_from_scope(self.scope)
        try:
            scope = selectors.alarm_console(user, action="alarm.console_subscribed")
        except Refusal as refusal:
            refusal_audit(refusal, actor)
            return None
        with transaction.atomic():
            alarms = list(selectors.alarms_open_sorted(selectors.alarms_visible_to(user)))
            audit_record(
                actor=actor,
                action="alarm.console_subscribed",
                detail={"count": len(alarms), "patients": sorted({a.patient.pseudonym for a in alarms})[:100]},
            )
        self.scope_rule = scope
        now = timezone.now()
        pauses = [
            {"patient": p.patient.pseudonym, "until": iso(p.until), "priority": p.priority}
            for p in selectors.pauses_active(now).values()
            if scope.allows(ward_id=p.patient.ward_id)
        ]
        notes = [
            {"id": n.pk, "alarm": n.alarm_id, "text": n.text, "created_at": iso(n.created_at)}
            for n in user.alarm_notifications.all()[:20]
        ]
        return {
            "type": "alarm.snapshot",
            "alarms": [alarm_out(a) for a in alarms],
            "pauses": pauses,
            "notifications": notes,
            "server_time": iso(now),
        }

    def _recheck(self) -> bool:
        """Access as the database has it now; updates the scope when wards or role changed."""
        user = current_user(self.scope)
        scope = selectors.alarm_scope(user) if user is not None else None
        if scope is None:
            return False
        self.scope_rule = scope
        return True

    def _in_scope(self, ward_code: str, escalation_level: int = 0) -> bool:
        rule = self.scope_rule
        return rule is not None and rule.allows_frame(ward_code=ward_code, escalation_level=escalation_level)

    async def _join(self) -> None:
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)

    async def _rejoin_forever(self) -> None:
        while True:
            interval = self.rejoin_seconds
            await asyncio.sleep(settings.PERFUSE_LIVE_REJOIN_SECONDS if interval is None else interval)
            try:
                allowed = await database_sync_to_async(self._recheck)()
                if not allowed:
                    await self.close(code=CLOSE_FORBIDDEN)
                    return
                await self._join()
            except RuntimeError:
                # The channel layer refuses group_add once this socket's channel is torn down.
                log.debug("alarm console upkeep stopped: channel gone", exc_info=True)
                return
            except Exception:  # Redis or the database briefly away: try again next round
                log.warning("alarm console upkeep failed", exc_info=True)

    async def disconnect(self, code: int) -> None:
        if self._upkeep is not None:
            self._upkeep.cancel()
        for group in self.groups_joined:
            with contextlib.suppress(Exception):
                await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Server → browser only; acts go through the REST API (audited, CSRF-protected)."""

    async def alarm_transition(self, event: dict[str, Any]) -> None:
        alarm = event["alarm"]
        if self._in_scope(alarm["ward"], alarm["escalation_level"]):
            await self.send_json(event)

    async def alarm_pause(self, event: dict[str, Any]) -> None:
        if self._in_scope(event["ward"]):
            await self.send_json(event)

    async def alarm_notification(self, event: dict[str, Any]) -> None:
        await self.send_json(event)

    async def session_revoked(self, event: dict[str, Any]) -> None:
        if session_revocation_applies(self.scope, event):
            await self.close(code=CLOSE_SESSION_ENDED)
