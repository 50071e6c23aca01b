"""`WS /ws/session`: tells an open page at once that its session was ended elsewhere (logout,
"log out everywhere", idle expiry), so the page can leave patient data behind. Shows no patient
data itself; joins the user's group like every consumer that should close on session.revoked."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from audit.access.asgi import session_revocation_applies
from audit.access.policy import user_is_verified
from telemetry.events import user_group

CLOSE_SESSION_ENDED = 4401


class SessionConsumer(AsyncJsonWebsocketConsumer):
    group = ""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not user_is_verified(user):
            # Accept first so the browser sees our close code (a refused handshake is just 1006).
            await self.accept()
            await self.close(code=CLOSE_SESSION_ENDED)
            return
        assert user is not None
        self.group = user_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def session_revoked(self, event: dict[str, Any]) -> None:
        if not session_revocation_applies(self.scope, event):
            return  # another session of the same user ended
        await self.send_json({"type": "session.revoked"})
        await self.close(code=CLOSE_SESSION_ENDED)
