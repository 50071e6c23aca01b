"""Identity separation: the only code that reads PatientIdentity.

Telemetry, charts and live frames know patients by pseudonym. Revealing who a pseudonym is
requires a stated purpose, is allowed to clinicians of the patient's ward (role permission
`reveal_identity`) and to holders of a live break-glass grant for that patient, and writes an
audit event either way, in the same transaction as the read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from audit.access.policy import active_grant, user_can, user_is_verified, user_ward_ids
from audit.models import AuditEvent
from audit.trail import Actor, audit_record
from telemetry.models import Patient, PatientIdentity


@dataclass(frozen=True)
class RevealedIdentity:
    pseudonym: str
    name: str
    mrn: str
    date_of_birth: dt.date | None


class IdentityDenied(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _decide(user: Any, patient: Patient | None, purpose: str) -> tuple[str | None, bool]:
    """(denial reason or None, via break-glass). Access is decided before the purpose is looked
    at: a missing purpose answered first would tell a caller without access which pseudonyms
    exist (400 for a real patient, 403 for an unknown one)."""
    if not getattr(user, "is_authenticated", False):
        return "not_authenticated", False
    if not user_is_verified(user):
        return "mfa_required", False
    if patient is None:
        return "unknown_patient", False
    via_grant = False
    if not (user_can(user, "reveal_identity") and patient.ward_id in user_ward_ids(user)):
        if active_grant(user, patient) is None:
            return "not_permitted", False
        via_grant = True
    if not purpose:
        return "purpose_required", via_grant
    if "\x00" in purpose:
        return "invalid_purpose", via_grant
    return None, via_grant


def identity_reveal(*, actor: Actor, user: Any, patient: Patient | None, purpose: str) -> RevealedIdentity:
    """Return the patient's identity, or raise IdentityDenied. Audited either way (the refusal
    is raised after its audit event committed, so the exception cannot roll it back)."""
    result = _reveal(actor=actor, user=user, patient=patient, purpose=purpose)
    if isinstance(result, str):
        raise IdentityDenied(result)
    return result


@transaction.atomic
def _reveal(*, actor: Actor, user: Any, patient: Patient | None, purpose: str) -> RevealedIdentity | str:
    purpose = purpose.strip()[:500]
    reason, via_grant = _decide(user, patient, purpose)
    subject = patient.pseudonym if patient is not None else ""
    audit_record(
        actor=actor,
        action="identity.reveal",
        outcome=AuditEvent.Outcome.DENIED if reason else AuditEvent.Outcome.ALLOWED,
        subject=subject,
        purpose=purpose,
        break_glass=via_grant,
        detail={"reason": reason or ("break_glass" if via_grant else "ward")},
    )
    if reason is not None:
        return reason
    assert patient is not None
    identity = PatientIdentity.objects.filter(patient=patient).first()
    return RevealedIdentity(
        pseudonym=patient.pseudonym,
        name=identity.name if identity else "",
        mrn=identity.mrn if identity else "",
        date_of_birth=identity.date_of_birth if identity else None,
    )
