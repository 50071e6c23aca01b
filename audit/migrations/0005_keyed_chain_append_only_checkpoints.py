"""Keyed event hashes (hash_version), append-only checkpoints, and order enforced on insert.

Existing events keep their unkeyed hash (version 1): re-chaining them would take an UPDATE the
triggers refuse, and would destroy the evidence that they are the original rows. New rows are
version 2 (HMAC, computed in Python: the key never enters the database; audit/chain.py).

The insert triggers take the chain lock themselves and refuse a row that does not extend the
current head (an event whose prev_hash is not the head's hash, a checkpoint that is not the next
seq signing its predecessor): a writer that forgot the lock cannot fork the chain. They are no
defence against the table owner, who may disable them — the anchor and the keyed hash are.
"""

from django.db import migrations, models

from audit.chain import CHAIN_LOCK_KEY, GENESIS

_HEAD = {
    # kind: (the head's variables, the query for it, when NEW does not extend it, the refusal)
    "event": (
        "head_id bigint; head_hash text",
        "SELECT id, hash INTO head_id, head_hash FROM audit_auditevent ORDER BY id DESC LIMIT 1",
        f"NEW.prev_hash IS DISTINCT FROM coalesce(head_hash, '{GENESIS}') OR NEW.id <= coalesce(head_id, 0)",
        "'audit_auditevent: event % does not extend the chain head %', NEW.id, head_id",
    ),
    "checkpoint": (
        "head_id bigint; head_signature text",
        "SELECT seq, signature INTO head_id, head_signature FROM audit_auditcheckpoint ORDER BY seq DESC LIMIT 1",
        f"NEW.seq <> coalesce(head_id, 0) + 1 OR NEW.prev_signature IS DISTINCT FROM coalesce(head_signature, '{GENESIS}')",
        "'audit_auditcheckpoint: checkpoint % does not follow checkpoint %', NEW.seq, head_id",
    ),
}


def _extends_head(table: str, kind: str) -> str:
    """A BEFORE INSERT trigger refusing a row that does not extend the table's head, under the
    chain lock (taken again if the writer holds it already: it is re-entrant)."""
    declare, head, refused, message = _HEAD[kind]
    return f"""
CREATE FUNCTION audit_{kind}_extends_head() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE {declare};
BEGIN
  PERFORM pg_advisory_xact_lock({CHAIN_LOCK_KEY});
  {head};
  IF {refused} THEN
    RAISE EXCEPTION {message} USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER audit_{kind}_in_order BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION audit_{kind}_extends_head();
"""


FORWARD = f"""
CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_checkpoint_no_update BEFORE UPDATE OR DELETE ON audit_auditcheckpoint
  FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON audit_auditcheckpoint
  FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

{_extends_head("audit_auditevent", "event")}
{_extends_head("audit_auditcheckpoint", "checkpoint")}
"""

REVERSE = """
DROP TRIGGER IF EXISTS audit_checkpoint_in_order ON audit_auditcheckpoint;
DROP FUNCTION IF EXISTS audit_checkpoint_extends_head();
DROP TRIGGER IF EXISTS audit_event_in_order ON audit_auditevent;
DROP FUNCTION IF EXISTS audit_event_extends_head();
DROP TRIGGER IF EXISTS audit_checkpoint_no_truncate ON audit_auditcheckpoint;
DROP TRIGGER IF EXISTS audit_checkpoint_no_update ON audit_auditcheckpoint;
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_roles")]
    operations = [
        # Existing rows are version 1; ADD COLUMN with a default rewrites nothing (no UPDATE).
        migrations.AddField(
            model_name="auditevent",
            name="hash_version",
            field=models.PositiveSmallIntegerField(default=1),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="hash_version",
            field=models.PositiveSmallIntegerField(default=2),
        ),
        migrations.RunSQL(FORWARD, REVERSE),
    ]
