"""The external anchor of the audit chain: every checkpoint, also written outside the database.

Signed checkpoints prove what the chain held up to them, but whoever can delete rows can delete
the newest checkpoints too, and then the events after the one that remains, and the database
alone then looks intact. So each checkpoint is also appended to an anchor that the database's
users cannot rewrite: `PERFUSE_AUDIT_ANCHOR`, a URL. `file:///path` is an append-only local
file (opened O_APPEND, fsync'd after each line) — in production a file on another host or a
mount the database host cannot write; another scheme (a write-once object store) is one more
`AuditAnchor` class in `_SCHEMES`. audit_verify compares the database with it (audit/verify.py).

Entries are appended after the checkpoint's transaction commits (a rolled-back checkpoint must
never be anchored), so lines may arrive out of order and a crash can lose the newest one: the
verifier sorts by `seq`, tolerates an anchor that lags behind the database, and
`audit_checkpoint` re-anchors the newest checkpoint when the anchor lags.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import orjson
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

TAIL_BYTES = 8192  # an entry is ~350 bytes: the newest complete line is in the last 8 KiB


class AnchorError(Exception):
    """The anchor cannot be read (unreadable file, a line that is not an entry)."""


@dataclass(frozen=True)
class AnchorEntry:
    """One checkpoint as anchored: what it signs, plus the first event of its range (so a verifier
    can name the first event that went missing even when the database no longer has it)."""

    seq: int
    event_id: int
    event_hash: str
    events: int
    first_event_id: int
    created_at: str
    signature: str

    def line(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS) + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> AnchorEntry:
        try:
            data = orjson.loads(raw)
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise AnchorError(f"not an anchor entry: {raw[:80]!r}") from exc


class AuditAnchor(Protocol):
    def append(self, entry: AnchorEntry) -> None: ...

    def entries(self) -> list[AnchorEntry]:
        """Every anchored entry, sorted by seq."""
        ...

    def latest(self) -> AnchorEntry | None:
        """The entry appended last (cheap: for the chain status on every audit page)."""
        ...


class FileAnchor:
    """An append-only file of JSON lines. A torn last line (crash mid-write) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, entry: AnchorEntry) -> None:
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, entry.line())
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:  # make the new directory entry durable too
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _read(self, offset: int = 0) -> bytes:
        try:
            with self.path.open("rb") as handle:
                handle.seek(offset)
                return handle.read()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise AnchorError(f"{self.path}: {exc}") from exc

    def entries(self) -> list[AnchorEntry]:
        lines = self._read().split(b"\n")[:-1]  # the part after the last newline is torn or empty
        return sorted((AnchorEntry.parse(line) for line in lines if line), key=lambda e: e.seq)

    def latest(self) -> AnchorEntry | None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return None
        tail = self._read(max(0, size - TAIL_BYTES))
        lines = [line for line in tail.split(b"\n")[:-1] if line]
        if not lines:
            return None
        return AnchorEntry.parse(lines[-1])


def _file_anchor(url: str) -> AuditAnchor:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost") or not parsed.path:
        raise ImproperlyConfigured(f"PERFUSE_AUDIT_ANCHOR: a file URL is file:///absolute/path, got {url!r}")
    return FileAnchor(Path(unquote(parsed.path)))


_SCHEMES = {"file": _file_anchor}


def anchor_from_url(url: str) -> AuditAnchor:
    scheme = urlparse(url).scheme
    if scheme not in _SCHEMES:
        raise ImproperlyConfigured(f"PERFUSE_AUDIT_ANCHOR: unsupported scheme {scheme!r} (supported: file)")
    return _SCHEMES[scheme](url)


def configured_anchor() -> AuditAnchor | None:
    """The anchor of PERFUSE_AUDIT_ANCHOR, or None when it is empty (not anchored: a deploy check
    refuses that in production)."""
    url = settings.PERFUSE_AUDIT_ANCHOR
    return anchor_from_url(url) if url else None


@dataclass(frozen=True)
class AnchorCut:
    copied: int
    dropped: int
    last_seq: int | None


def anchor_cut(*, source: AuditAnchor, target: AuditAnchor, until: dt.datetime) -> AnchorCut:
    """Start `target`, a new and empty anchor, with the entries of `source` created at or before
    `until` — the anchor of a database restored to that point in time (docs/backup.md). The
    restored chain then verifies against every checkpoint anchored up to the target time, and the
    old anchor (still naming the checkpoints the restore erased) stays untouched for the incident."""
    if target.latest() is not None:
        raise AnchorError("the target anchor is not empty: a cut starts a new anchor")
    entries = source.entries()
    kept = [entry for entry in entries if dt.datetime.fromisoformat(entry.created_at) <= until]
    for entry in kept:
        target.append(entry)
    return AnchorCut(copied=len(kept), dropped=len(entries) - len(kept), last_seq=kept[-1].seq if kept else None)
