"""Fixtures of the archive tests: the archive in a directory or in a real SeaweedFS bucket (one
server and bucket per session, a prefix per test), and a day of signed readings ingested over HTTP."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telemetry.archive.objects import FileStore, ObjectStore, S3Store
from tests.archive.seaweedfs import SeaweedFS, seaweedfs_start

_prefixes = itertools.count(1)
BUCKET = "perfuse-archive"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = seaweedfs_start(tmp_path_factory.mktemp("seaweedfs"))
    # One bucket for the session: each SeaweedFS bucket is a collection with volumes of its own,
    # and a bucket per test runs out of volume slots (InternalError on PUT, seen here).
    server.client().create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
def file_archive(settings: Any, tmp_path: Path) -> FileStore:
    root = tmp_path / "archive"
    settings.PERFUSE_ARCHIVE_URL = root.as_uri()
    return FileStore(root)


@pytest.fixture
def s3_archive(settings: Any, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    prefix = f"test-{next(_prefixes)}/perfuse"
    # What a deployment sets: the commands build their own client from these.
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweedfs.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "perfuse")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "perfuse")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings.PERFUSE_ARCHIVE_URL = f"s3://{BUCKET}/{prefix}"
    return S3Store(BUCKET, prefix, seaweedfs.client())


@pytest.fixture(params=["file", "s3"])
def archive(request: pytest.FixtureRequest) -> ObjectStore:
    """The archive, once in a directory and once in SeaweedFS."""
    store: ObjectStore = request.getfixturevalue(f"{request.param}_archive")
    return store


@pytest.fixture
def yesterday() -> dt.date:
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
