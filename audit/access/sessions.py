"""Staff sessions: the register of a user's open sessions (so "log out everywhere" and
deactivation can end them all), and the `session.revoked` frame that closes their WebSockets."""

from __future__ import annotations

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.db import transaction
from django.utils.module_loading import import_string

from audit.models import StaffSession
from audit.trail import Actor, audit_record
from config import live


def _session_store(session_key: str) -> SessionBase:
    engine = import_string(f"{settings.SESSION_ENGINE}.SessionStore")
    store: SessionBase = engine(session_key=session_key)
    return store


def staff_session_register(*, user_id: int, session_key: str, actor: Actor) -> None:
    StaffSession.objects.update_or_create(
        session_key=session_key,
        defaults={"user_id": user_id, "source_address": actor.source_address, "user_agent": actor.user_agent},
    )


def staff_session_forget(*, session_key: str) -> None:
    StaffSession.objects.filter(session_key=session_key).delete()


def user_sockets_close(*, user_id: int, session_key: str | None = None) -> None:
    """Close the user's WebSockets of one session (`session_key`), or of every session when it is
    None (logout everywhere, deactivation). Every consumer joins config.live.user_group and closes
    on `session.revoked` when config.consumers.revocation_applies. Sent after commit; best effort
    like every live frame, which is why the sessions themselves are deleted first: a socket that
    missed the frame cannot reconnect, and the consumers' periodic re-check closes it."""
    live.publish_after_commit([live.user_group(user_id)], live.SessionRevokedFrame(session_key=session_key))


@transaction.atomic
def user_logout_everywhere(*, user_id: int, actor: Actor) -> int:
    """End every session of the user (all browsers, all devices) and close their sockets."""
    keys = list(StaffSession.objects.filter(user_id=user_id).values_list("session_key", flat=True))
    for key in keys:
        _session_store(key).delete()
    StaffSession.objects.filter(user_id=user_id).delete()
    audit_record(actor=actor, action="logout.everywhere", detail={"sessions": len(keys), "user_id": user_id})
    user_sockets_close(user_id=user_id)
    return len(keys)
