"""The PostgreSQL figures of `/metrics` added for the alert rules (deploy/prometheus): the audit
chain's unsigned tail, the HL7 outbox and the archive. Temporary tables shadow the real ones for
this connection only (as in test_ops' alarm test), so each figure is exact."""

from __future__ import annotations

import pytest
from django.db import connection

from audit.services import audit_checkpoint
from audit.trail import SYSTEM, audit_record
from tests.config.test_ops import scrape, value


@pytest.mark.django_db
def test_an_intact_tail_has_no_unlinked_event_and_a_checkpoint_has_an_age():
    for i in range(3):
        audit_record(actor=SYSTEM, action="test.metrics.tail", detail={"i": i})
    series, _ = scrape()
    assert value(series, "perfuse_audit_chain_unlinked_events") == 0
    audit_checkpoint()
    audit_record(actor=SYSTEM, action="test.metrics.tail", detail={"i": 4})
    series, _ = scrape()
    assert value(series, "perfuse_audit_chain_unlinked_events") == 0
    assert 0 <= value(series, "perfuse_audit_checkpoint_age_seconds") < 3600


@pytest.mark.django_db
def test_a_broken_link_after_the_checkpoint_is_counted():
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE audit_auditcheckpoint (seq int, events bigint, event_id bigint, event_hash text, "
            "created_at timestamptz)"
        )
        cursor.execute("INSERT INTO audit_auditcheckpoint VALUES (1, 10, 10, 'h10', now() - interval '90 seconds')")
        cursor.execute(
            "CREATE TEMP TABLE audit_auditevent (id bigint, prev_hash text, hash text, action text, detail jsonb)"
        )
        # 9 -> 10 is before the checkpoint (signed, not re-checked here); 12 lost, so 13 does not link.
        cursor.execute(
            "INSERT INTO audit_auditevent VALUES (9, 'x', 'h9', 'a', '{}'), (10, 'bad', 'h10', 'a', '{}'), "
            "(11, 'h10', 'h11', 'a', '{}'), (13, 'h12', 'h13', 'a', '{}'), (14, 'h13', 'h14', 'a', '{}')"
        )
    series, _ = scrape()
    assert value(series, "perfuse_audit_chain_unlinked_events") == 1
    assert 90 <= value(series, "perfuse_audit_checkpoint_age_seconds") < 3600
    assert value(series, "perfuse_audit_events") == 10 + 3


@pytest.mark.django_db
def test_without_a_checkpoint_its_age_is_absent():
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE audit_auditcheckpoint (seq int, events bigint, event_id bigint, event_hash text, "
            "created_at timestamptz)"
        )
    series, _ = scrape()
    assert ("perfuse_audit_checkpoint_age_seconds", frozenset()) not in series
    assert ("perfuse_audit_chain_unlinked_events", frozenset()) in series


@pytest.mark.django_db
def test_hl7_outbox_by_state_and_its_oldest_pending_message():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE telemetry_orumessage (state text, created_at timestamptz)")
        cursor.execute(
            "INSERT INTO telemetry_orumessage VALUES ('queued', now() - interval '30 seconds'), "
            "('retry', now() - interval '600 seconds'), ('retry', now()), ('dead', now() - interval '1 day'), "
            "('done', now() - interval '2 days'), ('requeued', now() - interval '3 days')"
        )
    series, _ = scrape()
    counts = {
        state: value(series, "perfuse_hl7_outbox_messages", state=state)
        for state in ("queued", "sending", "retry", "dead")
    }
    assert counts == {"queued": 1, "sending": 0, "retry": 2, "dead": 1}
    assert ("perfuse_hl7_outbox_messages", frozenset({"state": "sending"}.items())) in series
    assert 600 <= value(series, "perfuse_hl7_outbox_oldest_pending_seconds") < 700


@pytest.mark.django_db
def test_an_empty_outbox_is_zero_not_absent():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE telemetry_orumessage (state text, created_at timestamptz)")
    series, _ = scrape()
    assert ("perfuse_hl7_outbox_oldest_pending_seconds", frozenset()) in series
    assert value(series, "perfuse_hl7_outbox_oldest_pending_seconds") == 0
    assert ("perfuse_hl7_outbox_messages", frozenset({"state": "dead"}.items())) in series


@pytest.mark.django_db
def test_archive_newest_day_is_the_end_of_the_newest_archived_day():
    series, _ = scrape()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audit_auditevent WHERE action = 'archive.written'")
        if cursor.fetchone()[0] == 0:  # nothing archived yet: absent, not the epoch
            assert ("perfuse_archive_newest_day_timestamp_seconds", frozenset()) not in series
    for day in ("2026-03-01", "2026-03-03", "2026-03-02"):
        audit_record(actor=SYSTEM, action="archive.written", detail={"day": day, "ward": "icu-a"})
    series, _ = scrape()
    # 2026-03-04T00:00:00Z: the newest archived day (2026-03-03) ended then.
    assert value(series, "perfuse_archive_newest_day_timestamp_seconds") == 1772582400
