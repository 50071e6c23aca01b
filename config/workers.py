"""Worker processes that run Django code (`manage.py archive --jobs N`).

Workers are spawned, not forked: a forked child shares the parent's open database connections
and sockets, and closing them there would end the parent's sessions. A spawned worker imports
nothing of the project until this initializer has set Django up, with the parent's settings
module and database settings (a test database keeps its name), so the functions it then runs
may live in modules that define models. This module must import no models itself: the pool
unpickles the initializer before Django is ready.
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.conf import settings


def worker_initargs() -> tuple[str, dict[str, Any]]:
    """What a worker needs to set Django up as this process has it."""
    return os.environ.get("DJANGO_SETTINGS_MODULE", ""), {alias: dict(db) for alias, db in settings.DATABASES.items()}


def worker_init(settings_module: str, databases: dict[str, Any]) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    settings.DATABASES = databases
    django.setup()
