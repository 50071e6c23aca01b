"""Tamper detection: audit_verify names the first bad event after each kind of tampering.

Tampering runs as the owner of the audit tables (tests/db_roles.py), which may switch the
append-only triggers off (`ALTER TABLE … DISABLE TRIGGER`) — the power the application role
does not have (tests/audit/test_hardening.py). The owner's connection sees committed rows only, so
these tests are transactional. Each test anchors its checkpoints in a file of its own
(tests/conftest.py); the owner cannot reach it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from typing import Any

import psycopg
import pytest
import time_machine
from django.core.management import call_command

from audit.anchor import AnchorEntry, configured_anchor
from audit.chain import GENESIS, HASHED_FIELDS, LEGACY_HASH_VERSION, canonical, event_hash
from audit.checkpoints import checkpoint_create
from audit.models import AuditCheckpoint, AuditEvent
from audit.services import audit_checkpoint
from audit.trail import SYSTEM, audit_record
from audit.verify import chain_verify
from tests import db_roles

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def events(settings) -> list[int]:
    settings.PERFUSE_AUDIT_CHECKPOINT_EVERY = 0  # tests below place checkpoints themselves
    return [audit_record(actor=SYSTEM, action="test.event", subject=f"p-{i}", detail={"i": i}).id for i in range(8)]


def _sql(sql: str, params: list | None = None) -> None:
    db_roles.owner_sql((sql, params or []))


def _verify_command() -> tuple[int, dict, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        call_command("audit_verify", "--json", stdout=out, stderr=err)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, json.loads(out.getvalue()), err.getvalue()


def _content(row: AuditEvent) -> dict[str, Any]:
    return {f: getattr(row, f) for f in HASHED_FIELDS}


def _checkpoint_at(event_id: int) -> AuditCheckpoint:
    return checkpoint_create(event_id=event_id, event_hash=AuditEvent.objects.get(id=event_id).hash)


def test_intact_chain_verifies_with_contract_output(events):
    code, data, err = _verify_command()
    assert code == 0 and err == ""
    assert data == {"events": 8, "ok": True, "first_bad": None}


def _owner_is_refused(match: str, *statements: str) -> None:
    """Even the owner is refused, as long as the triggers are on."""
    with db_roles.connect(db_roles.OWNER) as conn:
        for sql in statements:
            with pytest.raises(psycopg.DatabaseError, match=match):
                conn.execute(sql)


def test_triggers_refuse_update_delete_truncate(events):
    _owner_is_refused(
        "append-only",
        "UPDATE audit_auditevent SET purpose='x'",
        "DELETE FROM audit_auditevent",
        "TRUNCATE audit_auditevent",
    )


def test_checkpoints_are_append_only_too(events):
    audit_checkpoint()
    _owner_is_refused(
        "audit_auditcheckpoint is append-only",
        "UPDATE audit_auditcheckpoint SET events = 0",
        "DELETE FROM audit_auditcheckpoint",
        "TRUNCATE audit_auditcheckpoint",
    )
    assert AuditCheckpoint.objects.count() == 1


def test_inserts_must_extend_the_head(events):
    head = AuditEvent.objects.order_by("-id").first()
    assert head is not None
    with db_roles.connect(db_roles.OWNER) as conn:
        with pytest.raises(psycopg.DatabaseError, match="does not extend the chain head"):
            conn.execute(
                "INSERT INTO audit_auditevent (occurred_at, actor_username, role, action, subject, purpose, outcome,"
                " source_address, user_agent, break_glass, detail, prev_hash, hash, hash_version)"
                " VALUES (now(), 'x', '', 'forged', '', '', 'allowed', '', '', false, '{}', %s, %s, 2)",
                [GENESIS, "f" * 64],  # links to the genesis, not to the head
            )
        with pytest.raises(psycopg.DatabaseError, match="does not follow checkpoint"):
            conn.execute(
                "INSERT INTO audit_auditcheckpoint (seq, event_id, event_hash, events, created_at, prev_signature,"
                " signature) VALUES (5, %s, %s, 8, now(), %s, %s)",
                [head.id, head.hash, GENESIS, "0" * 64],
            )


def test_changed_row_is_named(events):
    _sql("UPDATE audit_auditevent SET purpose = 'nothing to see' WHERE id = %s", [events[3]])
    code, data, err = _verify_command()
    assert code == 1
    assert data == {"events": 4, "ok": False, "first_bad": events[3]}
    assert f"event {events[3]}" in err and "changed" in err


def test_deleted_row_is_caught_at_the_next_event(events):
    _sql("DELETE FROM audit_auditevent WHERE id = %s", [events[3]])
    code, data, _ = _verify_command()
    assert code == 1 and data["first_bad"] == events[4]


def test_reordered_rows_are_caught(events):
    a, b = events[2], events[5]
    _sql("UPDATE audit_auditevent SET id = -1 WHERE id = %s", [a])
    _sql("UPDATE audit_auditevent SET id = %s WHERE id = %s", [a, b])
    _sql("UPDATE audit_auditevent SET id = %s WHERE id = -1", [b])
    code, data, _ = _verify_command()
    assert code == 1 and data["first_bad"] == a


def _unkeyed(prev: str, row: AuditEvent) -> str:
    """The hash as it was computed before the key: what anyone with the table can recompute."""
    return hashlib.sha256(prev.encode() + b"\n" + canonical(_content(row))).hexdigest()


def _rewrite_from(first_id: int, *, keyed: bool = True, version: int = 2) -> None:
    """What an attacker does: change a row, then recompute every later hash — with the key
    (keyed=True: an attacker who stole it; only checkpoints and the anchor catch this) or
    without it (the unkeyed SHA-256 anyone can compute)."""
    _sql("UPDATE audit_auditevent SET actor_username = 'someone-else' WHERE id = %s", [first_id])
    rows = list(AuditEvent.objects.filter(id__gte=first_id).order_by("id"))
    prev = AuditEvent.objects.filter(id__lt=first_id).order_by("-id").values_list("hash", flat=True).first()
    for row in rows:
        new = event_hash(prev, _content(row)) if keyed else _unkeyed(prev, row)
        _sql(
            "UPDATE audit_auditevent SET prev_hash = %s, hash = %s, hash_version = %s WHERE id = %s",
            [prev, new, version, row.id],
        )
        prev = new


def test_full_rewrite_with_recomputed_hashes_is_caught_by_signed_checkpoints(events):
    audit_checkpoint()  # signs the head: event 8
    _rewrite_from(events[5])
    assert chain_verify(incremental=False).ok is False
    code, data, err = _verify_command()
    assert code == 1 and data["first_bad"] == events[0]  # nothing before the checkpoint can be vouched for
    assert "checkpoint 1" in err


@pytest.mark.parametrize("version", [2, LEGACY_HASH_VERSION], ids=["keyed-claimed", "legacy-claimed"])
def test_edit_with_recomputed_hashes_without_the_key_is_caught(events, version):
    # No checkpoint at all: before the key, recomputing SHA-256 over the edited tail verified.
    _rewrite_from(events[3], keyed=False, version=version)
    code, data, err = _verify_command()
    assert code == 1 and data["first_bad"] == events[3]
    assert ("forged" in err) if version == LEGACY_HASH_VERSION else ("changed or forged" in err)


def test_rewrite_after_an_intact_checkpoint_names_the_first_unvouched_event(events, settings):
    settings.PERFUSE_AUDIT_CHECKPOINT_EVERY = 0
    _sql("DELETE FROM audit_auditcheckpoint")
    # checkpoint after event index 2, then after index 7
    _checkpoint_at(events[2])
    audit_checkpoint()
    _rewrite_from(events[5])
    code, data, _ = _verify_command()
    assert code == 1 and data["first_bad"] == events[3]


def test_cutting_signed_events_off_the_tail_is_caught(events):
    audit_checkpoint()
    _sql("DELETE FROM audit_auditevent WHERE id >= %s", [events[6]])
    code, data, err = _verify_command()
    assert code == 1 and data["ok"] is False and "missing" in err
    assert data["first_bad"] == events[6]


def test_checkpoint_signed_with_another_key_or_removed_is_caught(events, settings):
    audit_checkpoint()
    audit_record(actor=SYSTEM, action="test.more")
    audit_checkpoint()
    assert chain_verify().ok
    _sql("DELETE FROM audit_auditcheckpoint WHERE seq = 1")
    assert not chain_verify().ok
    _sql("DELETE FROM audit_auditcheckpoint")
    audit_checkpoint()
    settings.PERFUSE_AUDIT_CHECKPOINT_KEY = "another-key-another-key-another-key"
    result = chain_verify()
    assert not result.ok and "signature" in result.reason
    assert not chain_verify(incremental=True).ok


def test_checkpoints_are_written_while_recording(settings):
    settings.PERFUSE_AUDIT_CHECKPOINT_EVERY = 3
    for _ in range(10):
        audit_record(actor=SYSTEM, action="test.event")
    assert AuditCheckpoint.objects.count() >= 3
    result = chain_verify()
    assert result.ok and result.checkpoints == AuditCheckpoint.objects.count()
    quick = chain_verify(incremental=True)
    assert quick.ok and quick.events == 10 and quick.verified_from > 0


# ---- the external anchor -------------------------------------------------------------------


def test_every_checkpoint_is_anchored_as_one_json_line(events, settings):
    first = _checkpoint_at(events[3])
    second = audit_checkpoint()
    assert second is not None
    path = settings.PERFUSE_AUDIT_ANCHOR.removeprefix("file://")
    lines = open(path, "rb").read().splitlines()  # noqa: SIM115
    assert [json.loads(line)["seq"] for line in lines] == [1, 2]
    anchored = configured_anchor().entries()
    assert anchored[0] == AnchorEntry(
        seq=1,
        event_id=events[3],
        event_hash=first.event_hash,
        events=4,
        first_event_id=events[0],
        created_at=first.created_at.isoformat(timespec="microseconds"),
        signature=first.signature,
    )
    assert (anchored[1].event_id, anchored[1].first_event_id, anchored[1].events) == (events[7], events[4], 8)
    assert audit_checkpoint() == second  # nothing new: nothing appended
    assert len(configured_anchor().entries()) == 2


@pytest.fixture
def anchored(events) -> list[int]:
    """The events, signed by checkpoint 1 (events 0-3) and checkpoint 2 (4-7), both anchored."""
    _checkpoint_at(events[3])
    audit_checkpoint()
    assert chain_verify().ok
    return events


def test_deleting_trailing_checkpoints_and_their_events_is_caught(anchored):
    events = anchored
    _sql("DELETE FROM audit_auditcheckpoint WHERE seq = 2")
    _sql("DELETE FROM audit_auditevent WHERE id > %s", [events[3]])
    code, data, err = _verify_command()
    assert code == 1 and data["ok"] is False and data["first_bad"] == events[4]
    assert "checkpoint 2" in err and "missing" in err
    assert not chain_verify(incremental=True).ok
    # The application carries on and signs a new checkpoint 2: it is not the anchored one.
    audit_record(actor=SYSTEM, action="test.after")
    audit_checkpoint()
    code, data, err = _verify_command()
    assert code == 1 and data["first_bad"] == events[4] and "differs" in err


def test_deleting_trailing_checkpoints_and_rewriting_their_events_is_caught(anchored):
    events = anchored
    _sql("DELETE FROM audit_auditcheckpoint WHERE seq = 2")
    _rewrite_from(events[5])  # with the key, even: the database alone would verify
    code, data, err = _verify_command()
    assert code == 1 and data["first_bad"] == events[4]
    assert "checkpoint 2" in err


def test_deleting_trailing_checkpoints_alone_is_caught(anchored):
    _sql("DELETE FROM audit_auditcheckpoint WHERE seq = 2")
    code, data, _ = _verify_command()
    assert code == 1 and data["first_bad"] == anchored[4]


@pytest.mark.parametrize("version", [2, LEGACY_HASH_VERSION])
def test_forged_tail_event_is_caught(anchored, version):
    head = AuditEvent.objects.order_by("-id").first()
    assert head is not None
    forged = AuditEvent(
        occurred_at=dt.datetime.now(dt.UTC),
        actor_username="system",
        role="system",
        action="staff.created",
        outcome="allowed",
        detail={},
    )
    # The insert triggers let it in: it extends the head. Only the key would make it verify.
    db_roles.owner_sql(
        (
            "INSERT INTO audit_auditevent (occurred_at, actor_id, actor_username, role, action, subject, purpose,"
            " outcome, source_address, user_agent, break_glass, detail, prev_hash, hash, hash_version)"
            " VALUES (%s, NULL, %s, %s, %s, '', '', %s, '', '', false, '{}', %s, %s, %s)",
            [
                forged.occurred_at,
                forged.actor_username,
                forged.role,
                forged.action,
                forged.outcome,
                head.hash,
                _unkeyed(head.hash, forged),
                version,
            ],
        ),
        triggers_off=False,
    )
    forged_id = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
    code, data, err = _verify_command()
    assert code == 1 and data["first_bad"] == forged_id and "forged" in err
    assert not chain_verify(incremental=True).ok


def test_truncating_the_events_is_caught(anchored):
    _sql("TRUNCATE audit_auditevent")
    code, data, err = _verify_command()
    assert code == 1 and data["events"] == 0 and data["first_bad"] == anchored[0]
    assert "missing" in err


def test_truncating_both_audit_tables_is_caught(anchored):
    _sql("TRUNCATE audit_auditevent, audit_auditcheckpoint")
    code, data, err = _verify_command()
    assert code == 1 and data == {"events": 0, "ok": False, "first_bad": anchored[0]}
    assert "checkpoint 1" in err and "missing" in err
    assert not chain_verify(incremental=True).ok


def test_an_unreadable_anchor_fails_verification(anchored, settings):
    path = settings.PERFUSE_AUDIT_ANCHOR.removeprefix("file://")
    with open(path, "ab") as anchor:
        anchor.write(b"not json\n")
    result = chain_verify()
    assert not result.ok and "anchor" in result.reason


# ---- checkpoint age ------------------------------------------------------------------------


def test_events_left_without_an_anchored_checkpoint_too_long_fail(anchored, settings):
    settings.PERFUSE_AUDIT_CHECKPOINT_MAX_AGE = 600
    late = audit_record(actor=SYSTEM, action="test.after_the_job_stopped")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=11)
    assert chain_verify(now=later - dt.timedelta(minutes=2)).ok  # within the age: fine
    with time_machine.travel(later, tick=False):
        code, data, err = _verify_command()
    assert code == 1 and data["first_bad"] == late.id and "600 s" in err
    assert not chain_verify(incremental=True, now=later).ok
    audit_checkpoint()  # the job runs again
    assert chain_verify(now=later).ok


def test_a_checkpoint_the_anchor_never_got_counts_as_unanchored_until_reanchored(events, settings):
    settings.PERFUSE_AUDIT_CHECKPOINT_MAX_AGE = 600
    anchor_url = settings.PERFUSE_AUDIT_ANCHOR
    settings.PERFUSE_AUDIT_ANCHOR = ""  # the append is lost (crash, unwritable anchor)
    audit_checkpoint()
    settings.PERFUSE_AUDIT_ANCHOR = anchor_url
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=11)
    result = chain_verify(now=later)
    assert not result.ok and result.first_bad == events[0]
    audit_checkpoint()  # no new event: the newest checkpoint is anchored again
    assert [e.seq for e in configured_anchor().entries()] == [1]
    assert chain_verify(now=later).ok


def test_legacy_unkeyed_rows_verify_before_the_first_keyed_one(events):
    """Rows written before migration 0005 (hash_version 1) keep verifying; the first keyed row
    links to the last of them."""
    rows = list(AuditEvent.objects.order_by("id"))
    prev = GENESIS
    for index, row in enumerate(rows):
        version = LEGACY_HASH_VERSION if index < 3 else 2
        new = _unkeyed(prev, row) if version == LEGACY_HASH_VERSION else event_hash(prev, _content(row))
        _sql(
            "UPDATE audit_auditevent SET prev_hash = %s, hash = %s, hash_version = %s WHERE id = %s",
            [prev, new, version, row.id],
        )
        prev = new
    assert chain_verify().ok
    last = AuditEvent.objects.get(id=rows[7].id)  # an unkeyed row after keyed ones: forged
    _sql(
        "UPDATE audit_auditevent SET hash_version = 1, hash = %s WHERE id = %s",
        [_unkeyed(last.prev_hash, last), last.id],
    )
    assert chain_verify().first_bad == last.id
