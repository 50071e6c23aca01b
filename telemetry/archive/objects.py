"""Where archive files go: a directory (`file:///path`) or an S3-compatible bucket
(`s3://bucket/prefix`, boto3; endpoint and credentials from the usual AWS_* variables, e.g.
AWS_ENDPOINT_URL for SeaweedFS or MinIO).

Both are write-once. `put_once` stores an object only when its key is free; when the key holds
the same bytes already it writes nothing (an archive run repeated, or resumed after a crash);
when it holds other bytes it raises WriteOnceConflict and leaves the object as it was. A
directory creates the file by hard-linking a fully written and fsynced temporary file to its
name, which fails if the name exists (so two writers cannot both win, and a reader never sees a
half-written file), then makes it read-only. A bucket is asked first (HEAD, then the bytes if
the ETag does not settle it), and the PUT carries `If-None-Match: *`, which a store that
supports conditional writes (AWS S3, SeaweedFS) refuses with 412 when another writer got there
in between — answered by comparing the contents again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from django.core.exceptions import ImproperlyConfigured


class WriteOnceConflict(Exception):
    """An archive object exists with other content than the one being written."""


class ObjectStore(Protocol):
    url: str

    def get(self, key: str) -> bytes | None:
        """The object's bytes, None when there is none."""

    def put_once(self, key: str, path: Path) -> bool:
        """Store the file's bytes under `key`: True when written, False when identical bytes were there."""

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _same_file(path: Path, data: bytes) -> bool:
    return path.stat().st_size == len(data) and path.read_bytes() == data


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"archive key outside the archive: {key!r}")
        return path

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put_once(self, key: str, path: Path) -> bool:
        target = self._path(key)
        data = path.read_bytes()
        if target.exists():
            return self._settle(key, target, data)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o444)
            try:
                os.link(tmp, target)
            except FileExistsError:
                return self._settle(key, target, data)
        finally:
            os.unlink(tmp)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True

    @staticmethod
    def _settle(key: str, target: Path, data: bytes) -> bool:
        if _same_file(target, data):
            return False
        raise WriteOnceConflict(f"{key} exists with other content; archive objects are never overwritten")

    def keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")
        )


class S3Store:
    def __init__(self, bucket: str, prefix: str, client: Any | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client = client or _s3_client()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def get(self, key: str) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
        return bytes(answer["Body"].read())

    def _existing_matches(self, key: str, data: bytes) -> bool | None:
        """None when there is no object; else whether it holds exactly `data`."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
        if head.get("ContentLength") != len(data):
            return False
        etag = str(head.get("ETag", "")).strip('"')
        if len(etag) == 32 and "-" not in etag and etag != hashlib.md5(data, usedforsecurity=False).hexdigest():
            return False
        return self.get(key) == data

    def put_once(self, key: str, path: Path) -> bool:
        data = path.read_bytes()
        matches = self._existing_matches(key, data)
        if matches is None:
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
                return True
            except ClientError as exc:
                if _status(exc) not in (409, 412):
                    raise
            matches = self._existing_matches(key, data)
        if matches:
            return False
        raise WriteOnceConflict(f"{self.url}/{key} exists with other content; archive objects are never overwritten")

    def keys(self, prefix: str) -> list[str]:
        found: list[str] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            found.extend(item["Key"][strip:] for item in page.get("Contents", []))
        return sorted(found)


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _s3_client() -> Any:
    # Path-style addressing: S3-compatible stores on a host name or address of their own
    # (SeaweedFS, MinIO) have no per-bucket DNS names. Checksums only when an operation requires
    # them: stores other than AWS reject the trailing checksums newer boto3 sends by default.
    config = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.client("s3", config=config)


def store_from_url(url: str) -> ObjectStore:
    """The store PERFUSE_ARCHIVE_URL names."""
    parsed = urlparse(url)
    if parsed.scheme == "file" and parsed.path:
        return FileStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3" and parsed.netloc:
        return S3Store(parsed.netloc, parsed.path)
    raise ImproperlyConfigured(f"PERFUSE_ARCHIVE_URL must be file:///path or s3://bucket/prefix, not {url!r}")
