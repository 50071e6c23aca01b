"""Deploy checks of the access layer (`manage.py check --deploy`).

Perfuse has no Django admin, and `user_can` checks capabilities through the role groups only, so
Django's `is_staff` and `is_superuser` flags grant nothing here. An active account that carries
one is still a warning: it is a leftover (`createsuperuser`, an import) that any later code
calling Django's `has_perm`, or a re-enabled admin site, would trust with everything.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.checks import CheckMessage, Warning
from django.db import DatabaseError
from django.db.models import Q

SHOWN = 20


def staff_flag_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    try:
        names = list(
            get_user_model()
            .objects.filter(Q(is_staff=True) | Q(is_superuser=True), is_active=True)
            .order_by("username")
            .values_list("username", flat=True)[: SHOWN + 1]
        )
    except DatabaseError:
        # Unmigrated or unreachable: the database checks (audit.hardening) report that.
        return []
    if not names:
        return []
    listed = ", ".join(names[:SHOWN]) + (", …" if len(names) > SHOWN else "")
    return [
        Warning(
            f"active accounts with Django's is_staff or is_superuser flag: {listed}",
            hint="Roles decide in Perfuse; clear the flags (`manage.py add_staff USER --role ROLE` does) "
            "or deactivate the account (`manage.py deactivate_staff USER`).",
            id="access.W001",
        )
    ]
