"""Database roles: an owner that migrates, an application role that may only SELECT and INSERT
the audit tables; and the deploy checks that the application really connects as the latter.

The append-only triggers stop an UPDATE/DELETE/TRUNCATE by mistake; they do not stop a role
that may disable them (the table owner or a superuser). So the application never connects as
either: the owner role (`perfuse_owner` in `make run`/`make test`) owns every table and runs the
migrations; the application role (`perfuse_app`) owns nothing, may read and write the other
tables (SELECT, INSERT, UPDATE, DELETE; no TRUNCATE, no DDL), and only SELECT and INSERT the
audit tables, so a compromised application server cannot UPDATE, DELETE, TRUNCATE, ALTER or
disable the triggers of the audit trail. Default privileges give the application role the same
rights on tables the owner creates later — by a migration, or at run time: the engine's daily
partitions are created by `telemetry_partition_ensure`, a SECURITY DEFINER function owned by the
owner (telemetry/storage.py), because attaching a partition takes ownership of the parent; the
retention job drops a past day's partition and deletes old HL7 messages (insert-only here) through
two more such functions, each limited to exactly that act (docs/retention.md).

`hardening_sql` prints the SQL (`manage.py audit_hardening_sql`): run it as a superuser after
each `migrate` (scripts/run.sh does). What the owner role can still do, and what detects it
(the keyed chain and the external anchor), is in docs/security.md.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connection

from audit.anchor import anchor_from_url

AUDIT_TABLES = ("audit_auditevent", "audit_auditcheckpoint")
# Tables the application role may only SELECT and INSERT: the audit trail, and the raw HL7 message
# store (telemetry/hl7/models.py), whose rows are each written once with the ACK that answered them.
INSERT_ONLY_TABLES = (*AUDIT_TABLES, "telemetry_hl7message")
APP_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
FORBIDDEN_AUDIT_PRIVILEGES = ("UPDATE", "DELETE", "TRUNCATE")
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _checked(*roles: str) -> None:
    for role in roles:
        if not _ROLE.match(role):
            raise ValueError(f"not a plain role name: {role!r}")


def ownership_sql(*, owner_role: str) -> str:
    """As a superuser: give `owner_role` every table, view, sequence and function of schema
    public that another role owns (a database first migrated as a superuser). Sequences of a
    column and extension members follow their owner object."""
    _checked(owner_role)
    return f"""DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT c.oid::regclass AS name, CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
             WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END AS kind
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
             AND c.relowner <> '{owner_role}'::regrole
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                             AND (d.deptype = 'e' OR (c.relkind = 'S' AND d.deptype IN ('a', 'i'))))
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO %I', r.kind, r.name, '{owner_role}');
  END LOOP;
  FOR r IN SELECT p.oid::regprocedure AS name FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = 'public' AND p.proowner <> '{owner_role}'::regrole
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                             AND d.objid = p.oid AND d.deptype = 'e')
  LOOP
    EXECUTE format('ALTER FUNCTION %s OWNER TO %I', r.name, '{owner_role}');
  END LOOP;
END $$;
"""


def grants_sql(*, app_role: str, owner_role: str) -> str:
    """As the owner (or a superuser), after every migrate: the application role's rights on what
    exists, default privileges for what the owner creates later, and SELECT/INSERT only on the
    audit tables and the HL7 message store."""
    _checked(app_role, owner_role)
    defaults = f'ALTER DEFAULT PRIVILEGES FOR ROLE "{owner_role}" IN SCHEMA public GRANT'
    audit = "\n".join(
        f"  IF to_regclass('{table}') IS NOT NULL THEN\n"
        f'    REVOKE ALL ON {table} FROM PUBLIC, "{app_role}";\n'
        f'    GRANT SELECT, INSERT ON {table} TO "{app_role}";\n'
        "  END IF;"
        for table in INSERT_ONLY_TABLES
    )
    return f"""REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO "{app_role}";
GRANT {APP_TABLE_PRIVILEGES} ON ALL TABLES IN SCHEMA public TO "{app_role}";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{app_role}";
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO "{app_role}";
{defaults} {APP_TABLE_PRIVILEGES} ON TABLES TO "{app_role}";
{defaults} USAGE, SELECT ON SEQUENCES TO "{app_role}";
{defaults} EXECUTE ON FUNCTIONS TO "{app_role}";
DO $$
BEGIN
{audit}
END $$;
"""


def hardening_sql(*, app_role: str, owner_role: str) -> str:
    return ownership_sql(owner_role=owner_role) + grants_sql(app_role=app_role, owner_role=owner_role)


# ---- deploy checks -------------------------------------------------------------------------

_HINTS = {
    "audit.E001": "Connect the application as the application role (docs/security.md, database roles).",
    "audit.E002": "Run migrations as the owner role; connect the application as a role that owns nothing.",
    "audit.E003": "Apply `manage.py audit_hardening_sql` (SELECT and INSERT only on the audit tables).",
    "audit.E004": "REVOKE SET ON PARAMETER session_replication_role FROM the application role.",
}


def _error(check_id: str, message: str) -> Error:
    return Error(f"the application's database connection: {message}", hint=_HINTS[check_id], id=check_id)


def _audit_table_problems(cursor: Any, user: str, table: str) -> list[CheckMessage]:
    cursor.execute(
        "SELECT pg_get_userbyid(c.relowner), pg_has_role(current_user, c.relowner, 'MEMBER'), "
        "has_table_privilege(c.oid, 'UPDATE'), has_table_privilege(c.oid, 'DELETE'), "
        "has_table_privilege(c.oid, 'TRUNCATE') FROM pg_class c WHERE c.oid = to_regclass(%s)",
        [table],
    )
    row = cursor.fetchone()
    if row is None:
        return [Warning(f"{table} does not exist: the database is not migrated", id="audit.W001")]
    owner, owns, *privileges = row
    problems: list[CheckMessage] = []
    if owns:
        problems.append(
            _error("audit.E002", f"the role {user} owns {table} (owner: {owner}): it can disable its triggers")
        )
    held = [name for name, has in zip(FORBIDDEN_AUDIT_PRIVILEGES, privileges, strict=True) if has]
    if held:
        problems.append(_error("audit.E003", f"the role {user} holds {', '.join(held)} on {table}"))
    return problems


def role_problems(cursor: Any) -> list[CheckMessage]:
    """What is wrong with the role `cursor` is connected as, for the audit trail."""
    cursor.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
    user, superuser = cursor.fetchone()
    problems: list[CheckMessage] = []
    if superuser:
        problems.append(_error("audit.E001", f"the role {user} is a superuser: it can switch the audit triggers off"))
    for table in AUDIT_TABLES:
        problems += _audit_table_problems(cursor, user, table)
    cursor.execute("SELECT current_setting('server_version_num')::int >= 150000")
    if not superuser and cursor.fetchone()[0]:
        cursor.execute("SELECT has_parameter_privilege('session_replication_role', 'SET')")
        if cursor.fetchone()[0]:
            problems.append(_error("audit.E004", f"the role {user} may SET session_replication_role (triggers off)"))
    return problems


@register(Tags.security, deploy=True)
def database_role_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    try:
        with connection.cursor() as cursor:
            return role_problems(cursor)
    except DatabaseError as exc:
        return [Warning(f"could not check the application's database role: {exc}", id="audit.W002")]


@register(Tags.security, deploy=True)
def audit_anchor_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    url = settings.PERFUSE_AUDIT_ANCHOR
    if not url:
        return [
            Error(
                "PERFUSE_AUDIT_ANCHOR is not set: deleting the newest audit checkpoints and events would go unnoticed",
                hint="Set it to append-only storage outside the database, e.g. file:///mnt/anchor/audit-anchor.log.",
                id="audit.E005",
            )
        ]
    try:
        anchor_from_url(url)
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="audit.E006")]
    return []
