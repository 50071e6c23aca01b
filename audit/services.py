"""Writes to the audit trail and to staff access state (sessions, break-glass grants).

`audit_record` is called inside the transaction of the action being audited, so the event and
the action commit or roll back together.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.db import connection, transaction
from django.utils.module_loading import import_string

from audit.chain import CHAIN_LOCK_KEY, GENESIS, HASH_VERSION, event_hash
from audit.models import AuditCheckpoint, AuditEvent, BreakGlassGrant, StaffSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    """Who did something, and from where: built from a request or a WebSocket scope."""

    user_id: int | None
    username: str
    role: str
    source_address: str = ""
    user_agent: str = ""


SYSTEM = Actor(user_id=None, username="system", role="system")


@transaction.atomic
def audit_record(
    *,
    actor: Actor,
    action: str,
    outcome: str = AuditEvent.Outcome.ALLOWED,
    subject: str = "",
    purpose: str = "",
    break_glass: bool = False,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])
    last = AuditEvent.objects.order_by("-id").values_list("id", "hash").first()
    content: dict[str, Any] = {
        "occurred_at": dt.datetime.now(dt.UTC),
        "actor_id": actor.user_id,
        "actor_username": actor.username[:150],
        "role": actor.role,
        "action": action,
        "subject": subject[:80],
        "purpose": purpose[:500],
        "outcome": str(outcome),
        "source_address": actor.source_address[:64],
        "user_agent": actor.user_agent[:300],
        "break_glass": break_glass,
        "detail": detail or {},
    }
    prev = last[1] if last else GENESIS
    # Hashed here with the key the database never sees; the insert trigger checks the link.
    event = AuditEvent.objects.create(
        **content, prev_hash=prev, hash=event_hash(prev, content), hash_version=HASH_VERSION
    )
    every = settings.PERFUSE_AUDIT_CHECKPOINT_EVERY
    if every and event.id // every != (last[0] if last else 0) // every:
        from audit.checkpoints import checkpoint_create  # the checkpoint module reads the chain

        checkpoint_create(event_id=event.id, event_hash=event.hash)
    return event


def audit_checkpoint(*, at: dt.datetime | None = None) -> AuditCheckpoint | None:
    """Sign the current chain head now and anchor it (cron or `manage.py audit_checkpoint`). With
    no event since the newest checkpoint, that one is anchored again if the anchor lacks it."""
    from audit.checkpoints import checkpoint_create

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])
        head = AuditEvent.objects.order_by("-id").values_list("id", "hash").first()
        if head is None:
            return None
        return checkpoint_create(event_id=head[0], event_hash=head[1], at=at)


# ---- sessions ----------------------------------------------------------------------------


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
    None (logout everywhere, deactivation). Consumers join telemetry.events.user_group and close on
    `session.revoked` when audit.asgi.session_revocation_applies. Sent after commit; best effort
    like every live frame, which is why the sessions themselves are deleted first: a socket that
    missed the frame cannot reconnect, and the consumers' periodic re-check closes it."""
    from telemetry.events import publish, user_group

    event: dict[str, Any] = {"type": "session.revoked"}
    if session_key is not None:
        event["session_key"] = session_key

    def send() -> None:
        try:
            async_to_sync(publish)([user_group(user_id)], event)
        except RuntimeError:  # no event loop bridge available (e.g. inside an async context)
            log.warning("could not close sockets of user %s", user_id, exc_info=True)

    transaction.on_commit(send)


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


# ---- break-glass -------------------------------------------------------------------------


class BreakGlassError(Exception):
    """A break-glass request that cannot be granted (role, unknown patient, empty purpose)."""


def break_glass_grant(
    *, user: Any, actor: Actor, pseudonym: str, reason: str, purpose: str, minutes: int
) -> BreakGlassGrant:
    """Grant `user` time-limited access to one patient. Audited allowed or denied, highlighted;
    a refusal raises BreakGlassError after its audit event committed."""
    result = _break_glass_grant(
        user=user, actor=actor, pseudonym=pseudonym, reason=reason, purpose=purpose, minutes=minutes
    )
    if isinstance(result, str):
        raise BreakGlassError(result)
    return result


@transaction.atomic
def _break_glass_grant(
    *, user: Any, actor: Actor, pseudonym: str, reason: str, purpose: str, minutes: int
) -> BreakGlassGrant | str:
    from audit.access import user_can  # access imports this module
    from telemetry.models import Patient

    purpose = purpose.strip()
    patient = Patient.objects.filter(pseudonym=pseudonym[:40]).first()
    problem = None
    if not user_can(user, "break_glass"):
        problem = "role"
    elif patient is None:
        problem = "unknown_patient"
    elif reason not in BreakGlassGrant.Reason.values:
        problem = "reason"
    elif len(purpose) < 10:
        problem = "purpose"
    elif not 1 <= minutes <= settings.PERFUSE_BREAK_GLASS_MAX_MINUTES:
        problem = "duration"
    if problem is not None:
        audit_record(
            actor=actor,
            action="break_glass.requested",
            outcome=AuditEvent.Outcome.DENIED,
            subject=pseudonym[:80],
            purpose=purpose,
            break_glass=True,
            detail={"reason": problem, "reason_code": reason[:40]},
        )
        return problem
    assert patient is not None
    now = dt.datetime.now(dt.UTC)
    grant = BreakGlassGrant.objects.create(
        user=user,
        patient=patient,
        reason=reason,
        purpose=purpose[:500],
        granted_at=now,
        expires_at=now + dt.timedelta(minutes=minutes),
    )
    audit_record(
        actor=actor,
        action="break_glass.granted",
        subject=patient.pseudonym,
        purpose=purpose,
        break_glass=True,
        detail={"grant": grant.id, "reason_code": reason, "expires_at": grant.expires_at.isoformat()},
    )
    return grant


@transaction.atomic
def break_glass_end(*, grant: BreakGlassGrant, actor: Actor) -> None:
    if grant.ended_at is None:
        grant.ended_at = dt.datetime.now(dt.UTC)
        grant.save(update_fields=["ended_at"])
    audit_record(
        actor=actor,
        action="break_glass.ended",
        subject=grant.patient.pseudonym,
        break_glass=True,
        detail={"grant": grant.id},
    )


# ---- staff accounts ----------------------------------------------------------------------


class StaffError(Exception):
    """A staff account operation that cannot be done as asked (unknown role or ward…)."""


@dataclass(frozen=True)
class StaffAccount:
    user: Any
    role: str
    totp: Any  # django_otp TOTPDevice
    created: bool


def totp_secret_base32(device: Any) -> str:
    import base64

    return base64.b32encode(device.bin_key).decode()


@transaction.atomic
def staff_upsert(
    *,
    username: str,
    role: str,
    ward_codes: list[str],
    password: str | None,
    actor: Actor = SYSTEM,
    validate_password: bool = True,
) -> StaffAccount:
    """Create (or update) a staff user in exactly one role with a confirmed TOTP device.

    An existing confirmed TOTP device is kept, so re-running prints the same secret."""
    from django.contrib.auth import get_user_model, password_validation
    from django.contrib.auth.models import Group
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from audit.models import StaffProfile
    from audit.roles import ROLES
    from telemetry.models import Ward

    if role not in ROLES:
        raise StaffError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    wards = list(Ward.objects.filter(code__in=ward_codes))
    missing = set(ward_codes) - {w.code for w in wards}
    if missing:
        raise StaffError(f"unknown ward(s): {', '.join(sorted(missing))}")
    User = get_user_model()
    user, created = User.objects.get_or_create(username=username)
    if password is not None:
        if validate_password:
            try:
                password_validation.validate_password(password, user)
            except Exception as exc:  # ValidationError carries the list of reasons
                raise StaffError("; ".join(getattr(exc, "messages", [str(exc)]))) from exc
        user.set_password(password)
    elif created:
        user.set_unusable_password()
    user.is_staff = False  # the Django admin is not a staff tool here; roles decide
    user.is_active = True
    user.save()
    user.groups.set([Group.objects.get(name=role)])
    profile, _ = StaffProfile.objects.get_or_create(user=user)
    profile.wards.set(wards)
    device = TOTPDevice.objects.filter(user=user, confirmed=True).order_by("id").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)
    audit_record(
        actor=actor,
        action="staff.created" if created else "staff.updated",
        subject=f"user:{user.pk}",
        detail={"username": username, "role": role, "wards": sorted(ward_codes)},
    )
    return StaffAccount(user=user, role=role, totp=device, created=created)


@transaction.atomic
def staff_deactivate(*, username: str, actor: Actor = SYSTEM) -> int:
    """Disable an account at once: no new sign-in, every session ended, every socket closed."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.select_for_update().filter(username=username).first()
    if user is None:
        raise StaffError(f"unknown user {username!r}")
    user.is_active = False
    user.save(update_fields=["is_active"])
    audit_record(actor=actor, action="staff.deactivated", subject=f"user:{user.pk}", detail={"username": username})
    return user_logout_everywhere(user_id=user.pk, actor=actor)
