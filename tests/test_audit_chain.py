"""Tamper detection: audit_verify names the first bad event after each kind of tampering.

Tampering runs as the test database role, a superuser, which can switch the append-only
triggers off (`ALTER TABLE … DISABLE TRIGGER`): exactly the power docs/security.md says the
application role must not have in production.
"""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.db import connection

from audit.chain import event_hash
from audit.models import AuditCheckpoint, AuditEvent
from audit.services import audit_checkpoint
from audit.trail import SYSTEM, audit_record
from audit.verify import chain_verify

pytestmark = pytest.mark.django_db


@pytest.fixture
def events(settings) -> list[int]:
    settings.PERFUSE_AUDIT_CHECKPOINT_EVERY = 0  # tests below place checkpoints themselves
    return [audit_record(actor=SYSTEM, action="test.event", subject=f"p-{i}", detail={"i": i}).id for i in range(8)]


def _sql(sql: str, params: list | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        cursor.execute(sql, params or [])
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")


def _verify_command() -> tuple[int, dict, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        call_command("audit_verify", "--json", stdout=out, stderr=err)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, json.loads(out.getvalue()), err.getvalue()


def test_intact_chain_verifies_with_contract_output(events):
    code, data, err = _verify_command()
    assert code == 0 and err == ""
    assert data == {"events": 8, "ok": True, "first_bad": None}


def test_triggers_refuse_update_delete_truncate(events):
    from django.db import DatabaseError, transaction

    for sql in ("UPDATE audit_auditevent SET purpose='x'", "DELETE FROM audit_auditevent", "TRUNCATE audit_auditevent"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)


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


def _rewrite_from(first_id: int) -> None:
    """What a superuser attacker does: change a row, then recompute every later hash."""
    _sql("UPDATE audit_auditevent SET actor_username = 'someone-else' WHERE id = %s", [first_id])
    rows = list(AuditEvent.objects.filter(id__gte=first_id).order_by("id"))
    prev = AuditEvent.objects.filter(id__lt=first_id).order_by("-id").values_list("hash", flat=True).first()
    for row in rows:
        content = {
            f: getattr(row, f)
            for f in (
                "occurred_at",
                "actor_id",
                "actor_username",
                "role",
                "action",
                "subject",
                "purpose",
                "outcome",
                "source_address",
                "user_agent",
                "break_glass",
                "detail",
            )
        }
        new = event_hash(prev, content)
        _sql("UPDATE audit_auditevent SET prev_hash = %s, hash = %s WHERE id = %s", [prev, new, row.id])
        prev = new


def test_full_rewrite_with_recomputed_hashes_is_caught_by_signed_checkpoints(events):
    audit_checkpoint()  # signs the head: event 8
    _rewrite_from(events[5])
    assert chain_verify(incremental=False).ok is False
    code, data, err = _verify_command()
    assert code == 1 and data["first_bad"] == events[0]  # nothing before the checkpoint can be vouched for
    assert "checkpoint 1" in err


def test_rewrite_after_an_intact_checkpoint_names_the_first_unvouched_event(events, settings):
    settings.PERFUSE_AUDIT_CHECKPOINT_EVERY = 0
    AuditCheckpoint.objects.all().delete()
    # checkpoint after event index 2, then after index 7
    from audit.checkpoints import checkpoint_create

    checkpoint_create(event_id=events[2], event_hash=AuditEvent.objects.get(id=events[2]).hash)
    audit_checkpoint()
    _rewrite_from(events[5])
    code, data, _ = _verify_command()
    assert code == 1 and data["first_bad"] == events[3]


def test_cutting_signed_events_off_the_tail_is_caught(events):
    audit_checkpoint()
    _sql("DELETE FROM audit_auditevent WHERE id >= %s", [events[6]])
    code, data, err = _verify_command()
    assert code == 1 and data["ok"] is False and "missing" in err


def test_checkpoint_signed_with_another_key_or_removed_is_caught(events, settings):
    audit_checkpoint()
    audit_record(actor=SYSTEM, action="test.more")
    audit_checkpoint()
    assert chain_verify().ok
    AuditCheckpoint.objects.filter(seq=1).delete()
    assert not chain_verify().ok
    AuditCheckpoint.objects.all().delete()
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
