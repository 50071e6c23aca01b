"""Inactivity expiry of staff sessions.

The session remembers the time of the user's last request. A request arriving after
PERFUSE_SESSION_IDLE_SECONDS of silence finds the session ended: it is flushed, the user's
sockets are told to close, the expiry is audited, and the request continues as anonymous (pages
redirect to login, APIs answer 401/403 JSON). Requests the page makes on its own (polling,
refetching a gap) send `X-Perfuse-Background: 1` and do not count as activity; the
"stay signed in" button pings /accounts/session/ping, which does.
"""

from __future__ import annotations

import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse

from audit.access.policy import actor_from_request
from audit.access.sessions import staff_session_forget, user_sockets_close
from audit.trail import audit_record
from config.middleware import RequestGate

LAST_ACTIVITY_KEY = "perfuse_last_activity"
# Writing the session on every request would cost a database write each; a few seconds of
# imprecision in the idle clock is harmless.
_TOUCH_EVERY_SECONDS = 10


def session_idle_expired(session: object) -> bool:
    """Whether a session (HTTP or WebSocket scope) has been idle too long."""
    last = session.get(LAST_ACTIVITY_KEY) if hasattr(session, "get") else None
    return isinstance(last, int | float) and time.time() - last > settings.PERFUSE_SESSION_IDLE_SECONDS


class SessionIdleMiddleware(RequestGate):
    def before(self, request: HttpRequest) -> HttpResponse | None:
        self._check(request)
        return None

    async def abefore(self, request: HttpRequest) -> HttpResponse | None:
        # The check reads and may write the session: a thread hop, taken only by requests that
        # carry a session cookie (device ingest does not).
        if settings.SESSION_COOKIE_NAME in request.COOKIES:
            await sync_to_async(self._check)(request)
        return None

    def _check(self, request: HttpRequest) -> None:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            if session_idle_expired(request.session):
                self._expire(request)
            elif request.headers.get("X-Perfuse-Background") != "1":
                now = time.time()
                last = request.session.get(LAST_ACTIVITY_KEY)
                if not isinstance(last, int | float) or now - last >= _TOUCH_EVERY_SECONDS:
                    request.session[LAST_ACTIVITY_KEY] = now

    def _expire(self, request: HttpRequest) -> None:
        actor = actor_from_request(request)
        session_key = request.session.session_key
        user_id = request.user.pk
        logout(request)
        if session_key:
            staff_session_forget(session_key=session_key)
        audit_record(
            actor=actor, action="session.expired", detail={"idle_seconds": settings.PERFUSE_SESSION_IDLE_SECONDS}
        )
        if user_id is not None:
            user_sockets_close(user_id=user_id, session_key=session_key or None)
        messages.info(request, "You were signed out after a period of inactivity.")
