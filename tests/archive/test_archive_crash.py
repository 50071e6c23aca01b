"""A crash in the middle of an archive run leaves no manifest, and the next run completes the day
without writing again what is there."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from telemetry.archive.layout import manifest_key, ward_prefix
from telemetry.archive.objects import ObjectStore
from telemetry.archive.verify import archive_day_verified
from telemetry.archive.writer import archive_day
from tests import factories
from tests.archive.support import ingest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

ROOT = Path(__file__).resolve().parents[2]


def _killed_run(day: dt.date, ward: str) -> tuple[int, str]:
    s = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{s['USER']}:{s['PASSWORD']}@{s['HOST']}:{s['PORT']}/{s['NAME']}",
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "PERFUSE_ARCHIVE_URL": settings.PERFUSE_ARCHIVE_URL,
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "archive" / "crash_archive.py"), day.isoformat(), ward],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


async def test_killed_between_files_leaves_no_manifest_and_the_rerun_completes(archive: ObjectStore, yesterday):
    await sync_to_async(factories.ward)("icu-a")
    dev = await sync_to_async(factories.device)("icu-a", patient="p-crash")
    await ingest(dev, yesterday, batches=2, per_batch=20)
    status, output = await sync_to_async(_killed_run)(yesterday, "icu-a")
    assert status == -signal.SIGKILL, output
    (stored,) = archive.keys("")
    assert stored.startswith(ward_prefix(yesterday, "icu-a") + "readings-") and f"stored {stored}" in output
    assert archive.get(manifest_key(yesterday, "icu-a")) is None  # a partial day has no manifest
    assert not await sync_to_async(archive_day_verified)(day=yesterday, ward_code="icu-a")
    result = await sync_to_async(archive_day)(day=yesterday, ward_code="icu-a", store=archive)
    # The readings file was there with the same bytes: only the rest is written.
    assert result.status == "written" and [k.rsplit("/", 1)[1].split("-")[0] for k in result.files_written] == [
        "batches",
        "manifest.json",
    ]
    assert len(archive.keys("")) == 3
    assert await sync_to_async(archive_day_verified)(day=yesterday, ward_code="icu-a")
