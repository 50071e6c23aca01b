"""`WS /ws/alarms/live`: the alarm console's live feed, built on config.consumers.LiveConsumer.

`authorize` takes the session user as audit.access.asgi.SessionGuardMiddleware left it (OTP-verified or
not, idle-expired sessions as anonymous: django-otp's middleware does not run for WebSockets),
decides the alarm scope (alerts.selectors.alarm_scope) and audits the subscription either way; a
refused socket is closed with 4403. It joins the `alarms` group (every transition), the user's
notification group and (the base) the user's session group, closed on logout with 4401; sends a
snapshot of the open alarms in scope, then forwards `alarm.transition`, `alarm.pause` and
`alarm.notification` frames, dropping those outside the user's scope. Frames are hints: the
browser refetches the list over REST after a reconnect.

Every PERFUSE_LIVE_REJOIN_SECONDS the base re-joins the groups (channel-layer memberships do not
survive a Redis restart) and `recheck` asks audit.access.asgi.current_user: a deactivated user, an ended
or no longer OTP-verified session, or a role that no longer allows the console closes it with
4403 (`session.revoked` frames may be dropped by the channel layer); changed wards or role update
the scope frames are filtered by.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from alerts import selectors
from alerts.events import AlarmSnapshotFrame, NotificationOut, PauseOut, oncall_out
from alerts.schemas import alarm_out
from audit.access.asgi import current_user
from audit.access.policy import actor_from_scope
from audit.access.refusals import refusal_audit
from audit.trail import audit_record
from config import live
from config.consumers import LiveConsumer
from config.refusal import Refusal


class AlarmConsoleConsumer(LiveConsumer):
    scope_rule: selectors.AlarmScope | None = None
    _snapshot: AlarmSnapshotFrame | None = None

    def authorize(self) -> bool:
        """Decides the scope, audits the subscription either way and builds the snapshot of what
        the audit event lists."""
        user = self.scope.get("user")  # OTP-verified or not by audit.access.asgi.SessionGuardMiddleware
        actor = actor_from_scope(self.scope)
        try:
            scope = selectors.alarm_console(user, action="alarm.console_subscribed")
        except Refusal as refusal:
            refusal_audit(refusal, actor)
            return False
        with transaction.atomic():
            open_alarms = selectors.alarms_open_sorted(selectors.alarms_visible_to(user))
            total = open_alarms.count()
            alarms = list(open_alarms[: settings.PERFUSE_CONSOLE_SNAPSHOT_MAX])
            audit_record(
                actor=actor,
                action="alarm.console_subscribed",
                detail={
                    "count": total,
                    "listed": len(alarms),
                    "patients": sorted({a.patient.pseudonym for a in alarms})[:100],
                },
            )
        self.scope_rule = scope
        now = timezone.now()
        pauses = [
            PauseOut(patient=p.patient.pseudonym, until=live.iso(p.until), priority=p.priority)
            for p in selectors.pauses_active(now).values()
            if scope.allows(ward_id=p.patient.ward_id)
        ]
        notes = [
            NotificationOut(id=n.pk, alarm=n.alarm_id, text=n.text, created_at=live.iso(n.created_at))
            for n in user.alarm_notifications.all()[:20]
        ]
        self._snapshot = AlarmSnapshotFrame(
            alarms=[alarm_out(a) for a in alarms],
            alarms_total=total,
            pauses=pauses,
            notifications=notes,
            server_time=live.iso(now),
            oncall=[oncall_out(s) for s in selectors.shifts_now(now=now, wards=scope.wards)],
        )
        return True

    def wanted_groups(self) -> list[str]:
        return [live.alarms_group(), live.alarms_user_group(self.user_id)]

    def snapshot(self) -> AlarmSnapshotFrame | None:
        return self._snapshot

    def recheck(self) -> bool:
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

    async def alarm_transition(self, event: dict[str, Any]) -> None:
        alarm = event["alarm"]
        if self._in_scope(alarm["ward"], alarm["escalation_level"]):
            await self.send_frame(event)

    async def alarm_pause(self, event: dict[str, Any]) -> None:
        if self._in_scope(event["ward"]):
            await self.send_frame(event)

    async def alarm_notification(self, event: dict[str, Any]) -> None:
        await self.send_frame(event)
