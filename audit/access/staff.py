"""Staff accounts: create or update a user in exactly one role with a confirmed TOTP device, and
deactivate one at once (`manage.py add_staff` / `deactivate_staff`, the demo seed). A change of
role ends the user's break-glass grants: a grant was given to the role that asked for it."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import Group, User
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.access.breakglass import break_glass_end_all
from audit.access.policy import user_role
from audit.access.roles import ROLES
from audit.access.sessions import user_logout_everywhere
from audit.models import StaffProfile
from audit.trail import SYSTEM, Actor, audit_record
from config.users import StaffUser, user_account
from telemetry.models import Ward


class StaffError(Exception):
    """A staff account operation that cannot be done as asked (unknown role or ward…)."""


@dataclass(frozen=True)
class StaffAccount:
    user: User
    role: str
    totp: TOTPDevice
    created: bool


def totp_secret_base32(device: TOTPDevice) -> str:
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
    if role not in ROLES:
        raise StaffError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    wards = list(Ward.objects.filter(code__in=ward_codes))
    missing = set(ward_codes) - {w.code for w in wards}
    if missing:
        raise StaffError(f"unknown ward(s): {', '.join(sorted(missing))}")
    User = get_user_model()
    user, created = User.objects.get_or_create(username=username)
    previous_role = None if created else user_role(user)
    if password is not None:
        if validate_password:
            try:
                password_validation.validate_password(password, user)
            except Exception as exc:  # ValidationError carries the list of reasons
                raise StaffError("; ".join(getattr(exc, "messages", [str(exc)]))) from exc
        user.set_password(password)
    elif created:
        user.set_unusable_password()
    # There is no Django admin and roles decide: these flags would only be trusted by mistake.
    user.is_staff = False
    user.is_superuser = False
    user.is_active = True
    user.save()
    user.groups.set([Group.objects.get(name=role)])
    if previous_role is not None and previous_role != role:
        break_glass_end_all(user_id=user.pk, actor=actor, cause="role_changed")
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
    user = get_user_model().objects.select_for_update().filter(username=username).first()
    if user is None:
        raise StaffError(f"unknown user {username!r}")
    user.is_active = False
    user.save(update_fields=["is_active"])
    audit_record(actor=actor, action="staff.deactivated", subject=f"user:{user.pk}", detail={"username": username})
    return user_logout_everywhere(user_id=user.pk, actor=actor)


def staff_display_mode(user: StaffUser | None) -> str:
    """The user's display mode; "auto" for anyone without a profile (or not signed in)."""
    if user is None or not user.is_authenticated or user.pk is None:
        return StaffProfile.DisplayMode.AUTO
    mode = StaffProfile.objects.filter(user_id=user.pk).values_list("display_mode", flat=True).first()
    return mode or StaffProfile.DisplayMode.AUTO


@transaction.atomic
def staff_display_mode_set(*, user: StaffUser, mode: str, actor: Actor) -> str:
    """Keep the user's display mode (a settings change, audited with the old and new value)."""
    if mode not in StaffProfile.DisplayMode.values:
        raise StaffError(f"unknown display mode {mode!r}; modes: {', '.join(StaffProfile.DisplayMode.values)}")
    profile, _ = StaffProfile.objects.select_for_update().get_or_create(user=user_account(user))
    previous = profile.display_mode
    profile.display_mode = mode
    profile.save(update_fields=["display_mode"])
    audit_record(
        actor=actor,
        action="staff.display_mode_changed",
        subject=f"user:{user.pk}",
        detail={"from": previous, "to": mode},
    )
    return mode
