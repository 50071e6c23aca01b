"""Who the access layer decides about: `StaffUser`, a signed-in staff user or an anonymous one.

A request's user is Django's `User | AnonymousUser`, and so is a socket's (Channels' auth
middleware, then audit.access.asgi). The access layer (audit.access.policy and the services and
selectors that take a user) reads only what both have, described here, so it types its
parameters with this protocol rather than with either class or `Any`.

Not part of it:
- `is_verified()`: django-otp's middleware attaches it to a request's user at run time (and
  audit.access.asgi to a socket's); a user loaded anywhere else (a management command, a test)
  has none, which audit.access.policy.user_is_verified counts as "not verified".
- `staff`, the staff profile holding the user's wards: a `User` may have none, an
  `AnonymousUser` never has one (audit.access.policy.ward_scope looks it up).
- `has_perm`: capabilities come from the role groups only (audit.access.policy.user_can).

Code that stores who acted (a grant's holder, an alarm's acknowledger) asks `user_account` for
the account of a user the access layer let act.

Plumbing: this module imports nothing of the apps, so every layer may import it.
"""

from __future__ import annotations

from typing import Protocol

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.db.models import QuerySet


class RoleGroups(Protocol):
    """A user's groups (a role is a group): the related manager of `User`, the empty one of
    `AnonymousUser`."""

    def all(self) -> QuerySet[Group]: ...


class StaffUser(Protocol):
    """What the access layer reads of a user; `User` and `AnonymousUser` both satisfy it."""

    @property
    def pk(self) -> int | None: ...

    @property
    def is_authenticated(self) -> bool: ...

    @property
    def is_active(self) -> bool: ...

    @property
    def groups(self) -> RoleGroups: ...

    def get_username(self) -> str: ...


def user_account(user: StaffUser) -> User:
    """The account (settings.AUTH_USER_MODEL) of a user the access layer let act: only a
    signed-in user is let act, so never an `AnonymousUser`."""
    assert isinstance(user, get_user_model()), "only a signed-in user is let act"
    return user
