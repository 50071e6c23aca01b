"""`manage.py audit_anchor_cut` (docs/backup.md, *After a restore*): the anchor of a database
restored to a point in time starts with the old anchor's entries up to that time, and only into
a new, empty anchor. The restore drill (tests/deploy/test_restore_drill.py) uses it end to end."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.anchor import AnchorEntry, FileAnchor

T = dt.datetime(2026, 12, 1, 14, 0, tzinfo=dt.UTC)


def _entry(seq: int, at: dt.datetime) -> AnchorEntry:
    return AnchorEntry(
        seq=seq,
        event_id=seq * 10,
        event_hash=f"{seq:064x}",
        events=seq * 10,
        first_event_id=seq * 10 - 9,
        created_at=at.isoformat(timespec="microseconds"),
        signature=f"sig-{seq}",
    )


@pytest.fixture
def old_anchor(tmp_path: Path) -> Path:
    path = tmp_path / "old-anchor.log"
    anchor = FileAnchor(path)
    for seq, at in ((1, T - dt.timedelta(minutes=2)), (2, T), (3, T + dt.timedelta(microseconds=1))):
        anchor.append(_entry(seq, at))
    return path


def _cut(source: Path, until: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command("audit_anchor_cut", "--source", source.as_uri(), "--until", until, "--json", stdout=out)
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


def _new_anchor() -> FileAnchor:
    return FileAnchor(Path(settings.PERFUSE_AUDIT_ANCHOR.removeprefix("file://")))


def test_the_new_anchor_holds_the_entries_created_up_to_the_target_time_unchanged(old_anchor: Path) -> None:
    assert _cut(old_anchor, "2026-12-01 14:00:00+00") == {"copied": 2, "dropped": 1, "last_seq": 2}
    assert _new_anchor().entries() == FileAnchor(old_anchor).entries()[:2]
    assert len(FileAnchor(old_anchor).entries()) == 3  # the old anchor is kept as it was


def test_a_target_before_every_checkpoint_starts_an_empty_anchor(old_anchor: Path) -> None:
    assert _cut(old_anchor, "2026-12-01T13:00:00Z") == {"copied": 0, "dropped": 3, "last_seq": None}


def test_the_cut_refuses_an_anchor_that_is_not_empty(old_anchor: Path) -> None:
    _cut(old_anchor, "2026-12-01 14:00:00+00")
    with pytest.raises(CommandError, match="not empty"):
        _cut(old_anchor, "2026-12-01 14:00:00+00")
    assert len(_new_anchor().entries()) == 2


def test_the_cut_refuses_a_time_without_zone_and_the_anchor_itself_as_source(old_anchor: Path) -> None:
    with pytest.raises(CommandError, match="time zone"):
        _cut(old_anchor, "2026-12-01 14:00:00")
    with pytest.raises(CommandError, match="itself"):
        _cut(Path(settings.PERFUSE_AUDIT_ANCHOR.removeprefix("file://")), "2026-12-01 14:00:00+00")
    assert _new_anchor().entries() == []
