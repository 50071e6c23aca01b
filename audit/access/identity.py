"""Identity separation: the only code that reads PatientIdentity.

Telemetry, charts and live frames know patients by pseudonym. Revealing who a pseudonym is
requires a stated purpose, is allowed to clinicians of the patient's ward (role permission
`reveal_identity`) and to holders of a live break-glass grant for that patient, and writes an
audit event either way: the allowed one in the same transaction as the read, a refusal (a
config.refusal.Refusal) after that transaction rolled back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from audit.access.policy import access_refusal, active_grant, user_can, user_is_verified, ward_scope
from audit.access.refusals import refusals_audited
from audit.trail import Actor, audit_record
from config.refusal import Refusal
from config.users import StaffUser
from telemetry.models import Patient, PatientIdentity

ACTION = "identity.reveal"


@dataclass(frozen=True)
class RevealedIdentity:
    pseudonym: str
    name: str
    mrn: str
    date_of_birth: dt.date | None


def _decide(user: StaffUser, patient: Patient | None, purpose: str) -> tuple[str | None, bool]:
    """(denial reason or None, via break-glass). Access is decided before the purpose is looked
    at: a missing purpose answered first would tell a caller without access which pseudonyms
    exist (400 for a real patient, 403 for an unknown one)."""
    if not user.is_authenticated:
        return "not_authenticated", False
    if not user_is_verified(user):
        return "mfa_required", False
    if patient is None:
        return "unknown_patient", False
    via_grant = False
    if not (user_can(user, "reveal_identity") and ward_scope(user).covers(patient.ward_id)):
        if active_grant(user, patient) is None:
            return "not_permitted", False
        via_grant = True
    if not purpose:
        return "purpose_required", via_grant
    if "\x00" in purpose:
        return "invalid_purpose", via_grant
    return None, via_grant


_PURPOSE_PROBLEMS = {
    "purpose_required": "State the purpose of revealing this identity.",
    "invalid_purpose": "The purpose must be text without NUL characters.",
}


def _refused(user: StaffUser, *, reason: str, subject: str, purpose: str) -> Refusal:
    if reason in _PURPOSE_PROBLEMS:
        return Refusal(
            action=ACTION,
            reason=reason,
            code=reason,
            status=400,
            detail=_PURPOSE_PROBLEMS[reason],
            subject=subject,
            purpose=purpose,
        )
    # Unknown and forbidden pseudonyms get the same answer: no oracle for which patients exist.
    return access_refusal(
        user,
        action=ACTION,
        reason=reason,
        detail="You may not reveal this patient's identity.",
        subject=subject,
        purpose=purpose,
    )


@refusals_audited
def identity_reveal(*, actor: Actor, user: StaffUser, patient: Patient | None, purpose: str) -> RevealedIdentity:
    """Return the patient's identity, audited; or raise the audited Refusal."""
    purpose = purpose.strip()[:500]
    reason, via_grant = _decide(user, patient, purpose)
    subject = patient.pseudonym if patient is not None else ""
    if reason is not None:
        raise _refused(user, reason=reason, subject=subject, purpose=purpose)
    assert patient is not None
    audit_record(
        actor=actor,
        action=ACTION,
        subject=subject,
        purpose=purpose,
        break_glass=via_grant,
        detail={"reason": "break_glass" if via_grant else "ward"},
    )
    identity = PatientIdentity.objects.filter(patient=patient).first()
    return RevealedIdentity(
        pseudonym=patient.pseudonym,
        name=identity.name if identity else "",
        mrn=identity.mrn if identity else "",
        date_of_birth=identity.date_of_birth if identity else None,
    )
