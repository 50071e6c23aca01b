"""The one base of Perfuse's WebSocket consumers: authorize, join, re-check, re-join, close.

Every socket is server → browser only (anything the browser sends is ignored) and goes through
the same life:
1. `connect` runs the subclass's `authorize()` in a worker thread (it decides access through the
   access layer and audits the attempt; the scope's user is as audit's session guard left it,
   since django-otp's middleware does not run for WebSockets). The socket is accepted either way
   and a refused one closed at once with `refused_code`, so the browser sees the code (a handshake
   refused before accept reaches it only as 1006).
2. Allowed: it joins `wanted_groups()` and the user's `user.<id>` group (before the accept, so
   nothing published after the browser saw the socket open is missed), sends `snapshot()` (if
   the socket has one) and then forwards group events through the subclass's handlers.
3. A `session.revoked` frame on the user group for this socket's session (or for every session)
   ends it with 4401.
4. Every PERFUSE_LIVE_REJOIN_SECONDS it re-checks access (`recheck()`, in a worker thread, against
   the database: `session.revoked` frames may be dropped by the channel layer) and re-joins its
   groups (memberships are lost when Redis restarts). Access lost: `access_lost()`, 4403 unless
   the subclass says otherwise.
This module knows no app: authorization, snapshots and frame filtering are subclass hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import msgspec
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from config.live import Frame, Message, user_group

log = logging.getLogger(__name__)

CLOSE_SESSION_ENDED = 4401  # no (verified) session any more: the browser shows "signed out"
CLOSE_FORBIDDEN = 4403  # not allowed (not logged in, no OTP, other ward, role): "access refused"
CLOSE_SUBJECT_ENDED = 4410  # what the socket shows has ended (a discharged patient): no reconnect

_encoder = msgspec.json.Encoder()


def revocation_applies(scope: dict[str, Any], event: Message) -> bool:
    """Whether a `session.revoked` frame ends this socket: frames without a session key end every
    session of the user (logout everywhere, deactivation); others only the socket of that session."""
    target = event.get("session_key")
    if target is None:
        return True
    return bool(target == getattr(scope.get("session"), "session_key", None))


class LiveConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels ships no type hints: its base is Any
    refused_code = CLOSE_FORBIDDEN
    user_id: int

    async def connect(self) -> None:
        self._joined: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        allowed = await database_sync_to_async(self.authorize)()
        if allowed:  # joined before the browser sees the socket open: nothing sent later is missed
            self.user_id = self.scope["user"].pk
            await self._join()
        await self.accept()
        if not allowed:
            await self.close(code=self.refused_code)
            return
        snapshot = await database_sync_to_async(self.snapshot)()
        if snapshot is not None:
            await self.send_frame(snapshot)
        self.spawn(self._upkeep())
        self.started()

    async def disconnect(self, code: int) -> None:
        for task in getattr(self, "_tasks", []):
            task.cancel()
        for group in getattr(self, "_joined", []):
            with contextlib.suppress(Exception):
                await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """The protocol is server → browser only; anything the browser sends is ignored."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Other apps may send new event types to the shared groups; an unknown type is not an error.
        if getattr(self, get_handler_name(message), None) is None:
            log.debug("live socket ignores %s", message.get("type"))
            return
        await super().dispatch(message)

    async def send_frame(self, frame: Frame | Message) -> None:
        """One WebSocket message: a frame built here, or a group event forwarded as published."""
        await self.send(text_data=_encoder.encode(frame).decode())

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` while the socket is open (cancelled on disconnect)."""
        self._tasks.append(asyncio.create_task(work))

    # Subclass hooks -------------------------------------------------------------------------

    def authorize(self) -> bool:
        """Sync (worker thread): may this socket open? Audits the attempt where the socket shows data."""
        raise NotImplementedError

    def wanted_groups(self) -> list[str]:
        """The groups besides `user.<id>`; asked again after every successful re-check."""
        return []

    def snapshot(self) -> Frame | None:
        """Sync (worker thread): the first frame after the joins, or None."""
        return None

    def started(self) -> None:
        """In the event loop, once the snapshot went out (e.g. start a flusher with `spawn`)."""

    def recheck(self) -> bool:
        """Sync (worker thread), periodic: is the socket still allowed? May update what
        `wanted_groups` returns."""
        raise NotImplementedError

    def after_recheck(self) -> None:
        """In the event loop, after a successful `recheck`."""

    async def access_lost(self) -> None:
        await self.close(code=CLOSE_FORBIDDEN)

    async def session_ended(self) -> None:
        await self.close(code=CLOSE_SESSION_ENDED)

    # Group events and upkeep ----------------------------------------------------------------

    async def session_revoked(self, event: dict[str, Any]) -> None:
        if revocation_applies(self.scope, event):
            await self.session_ended()

    async def _join(self) -> None:
        groups = [*self.wanted_groups(), user_group(self.user_id)]
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        for group in set(self._joined) - set(groups):
            await self.channel_layer.group_discard(group, self.channel_name)
        self._joined = groups

    async def _upkeep(self) -> None:
        while True:
            await asyncio.sleep(settings.PERFUSE_LIVE_REJOIN_SECONDS)
            try:
                allowed = await database_sync_to_async(self.recheck)()
                if not allowed:
                    await self.access_lost()
                    return
                self.after_recheck()
                await self._join()
            except RuntimeError:
                # The pub/sub layer refuses group_add once this socket's channel was torn down
                # (the socket is closing while this round ran): nothing left to keep up.
                log.debug("live socket upkeep stopped: channel gone", exc_info=True)
                return
            except Exception:  # Redis or the database briefly away: try again next round
                log.warning("live socket upkeep failed", exc_info=True)
