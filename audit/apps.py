from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _sync_roles(sender: Any, **kwargs: Any) -> None:
    from django.contrib.auth.models import Group, Permission
    from django.contrib.contenttypes.models import ContentType

    from audit.roles import roles_sync

    roles_sync(Group, Permission, ContentType)


class AuditConfig(AppConfig):
    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Keeps the role groups in place after a flush (transactional tests) or a new permission.
        post_migrate.connect(_sync_roles, sender=self)
        from audit import hardening  # noqa: F401  (registers the deploy checks of the database role)
