"""Production hardening of the audit tables: the application's database role may only SELECT
and INSERT them; a separate owner role (never used by the application) owns them.

The append-only triggers stop an UPDATE/DELETE/TRUNCATE by mistake; they do not stop a role
that may disable them (the table owner or a superuser). With this SQL applied, the application
role cannot UPDATE, DELETE, TRUNCATE, ALTER or disable triggers on the audit tables, so even a
compromised application server cannot rewrite history; only the owner role can, and the signed
checkpoints (audit/checkpoints.py) make a rewrite by it detectable. See docs/security.md.
Printed by `manage.py audit_hardening_sql`; applied in tests/test_hardening.py.
"""

from __future__ import annotations

import re

AUDIT_TABLES = ("audit_auditevent", "audit_auditcheckpoint")
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def hardening_sql(*, app_role: str, owner_role: str) -> str:
    for role in (app_role, owner_role):
        if not _ROLE.match(role):
            raise ValueError(f"not a plain role name: {role!r}")
    tables = ", ".join(AUDIT_TABLES)
    statements = [
        *(f'ALTER TABLE {t} OWNER TO "{owner_role}";' for t in AUDIT_TABLES),
        f'REVOKE ALL ON {tables} FROM PUBLIC, "{app_role}";',
        f'GRANT SELECT, INSERT ON {tables} TO "{app_role}";',
    ]
    return "\n".join(statements) + "\n"
