"""`WS /ws/session`: tells an open page at once that its session was ended elsewhere (logout,
"log out everywhere", idle expiry), so the page can leave patient data behind. Shows no patient
data itself. Built on config.consumers.LiveConsumer: it joins the user's group and, like the data
sockets, re-checks the session periodically, so an idle expiry nobody announced (no request came
to notice it) still ends the page. Every ending sends `session.revoked` and closes with 4401."""

from __future__ import annotations

from audit.access.asgi import current_user
from audit.access.policy import user_is_verified
from config.consumers import CLOSE_SESSION_ENDED, LiveConsumer
from config.live import SessionRevokedFrame


class SessionConsumer(LiveConsumer):
    refused_code = CLOSE_SESSION_ENDED  # no verified session: the page asks to sign in

    def authorize(self) -> bool:
        return user_is_verified(self.scope.get("user"))

    def recheck(self) -> bool:
        return user_is_verified(current_user(self.scope))

    async def access_lost(self) -> None:
        await self.session_ended()

    async def session_ended(self) -> None:
        await self.send_frame(SessionRevokedFrame())
        await self.close(code=CLOSE_SESSION_ENDED)
