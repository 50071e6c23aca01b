from typing import Any

from django.apps import AppConfig
from django.core.checks import Tags, register
from django.db.models.signals import post_migrate

import audit.hardening  # noqa: F401  (registers the deploy checks of the database role)
from audit.access.checks import staff_flag_check
from audit.access.roles import roles_sync


def _sync_roles(sender: Any, **kwargs: Any) -> None:
    # Django forces these in here: models cannot be imported while the app registry loads apps.py.
    from django.contrib.auth.models import Group, Permission
    from django.contrib.contenttypes.models import ContentType

    roles_sync(Group, Permission, ContentType)


class AuditConfig(AppConfig):
    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Keeps the role groups in place after a flush (transactional tests) or a new permission.
        post_migrate.connect(_sync_roles, sender=self)
        register(staff_flag_check, Tags.security, deploy=True)
