"""Run by test_archive_crash.py in a process of its own: `manage.py archive --day D`, killed
with SIGKILL right after the archive's first object is stored (between files)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import django

django.setup()

from django.core.management import call_command  # noqa: E402

from telemetry.archive import objects  # noqa: E402


def _dying(put):  # type: ignore[no-untyped-def]
    def put_once(self, key: str, path: Path) -> bool:  # type: ignore[no-untyped-def]
        written = put(self, key, path)
        print(f"stored {key}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        return written

    return put_once


objects.FileStore.put_once = _dying(objects.FileStore.put_once)  # type: ignore[method-assign]
objects.S3Store.put_once = _dying(objects.S3Store.put_once)  # type: ignore[method-assign]
call_command("archive", "--day", sys.argv[1], "--ward", sys.argv[2])
