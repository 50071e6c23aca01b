"""Legal holds: set and released by compliance with a reason, audited; while one is open on a
patient (or a ward), nothing of that patient's (or ward's) data is deleted by Perfuse.

What a hold covers, as every deletion path asks it (`HeldSet`): a patient hold covers the
patient's readings, rollups, signed batches of the ward-days that hold their readings, and HL7
messages about them; a ward hold covers every ward-day of the ward, the rollups of its devices
and of every patient who lay on it, and those patients' HL7 messages. The archive itself is
write-once and Perfuse has no path that deletes from it (docs/retention.md), so a hold cannot be
bypassed there through the application.

The capability check (`manage_legal_holds`) is the page's (audit.access); these functions do the
act and its audit event in one transaction, and raise RegistryError for what cannot be done.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import Q

from audit.trail import Actor, audit_record
from telemetry.errors import RegistryError
from telemetry.lifecycle.models import LegalHold
from telemetry.models import Device, Patient, PatientStay, Ward


def _target(*, pseudonym: str | None, ward_code: str | None) -> tuple[str, Patient | None, Ward | None]:
    if bool(pseudonym) == bool(ward_code):
        raise RegistryError("name either a patient or a ward", code="hold_target")
    if pseudonym:
        patient = Patient.objects.filter(pseudonym=pseudonym).first()
        if patient is None:
            raise RegistryError(f"no patient {pseudonym!r}", code="unknown_patient")
        return LegalHold.Scope.PATIENT, patient, None
    ward = Ward.objects.filter(code=ward_code).first()
    if ward is None:
        raise RegistryError(f"no ward {ward_code!r}", code="unknown_ward")
    return LegalHold.Scope.WARD, None, ward


def _subject(hold: LegalHold) -> str:
    return hold.patient.pseudonym if hold.patient is not None else ""


def legal_hold_set(
    *,
    reason: str,
    actor: Actor,
    pseudonym: str | None = None,
    ward_code: str | None = None,
    at: dt.datetime | None = None,
) -> LegalHold:
    """Open a hold on a patient or a ward (one open hold per target)."""
    reason = reason.strip()
    if not reason:
        raise RegistryError("a legal hold needs a reason", code="reason_required")
    scope, patient, ward = _target(pseudonym=pseudonym, ward_code=ward_code)
    try:
        with transaction.atomic():
            hold = LegalHold.objects.create(
                scope=scope,
                patient=patient,
                ward=ward,
                reason=reason[:300],
                set_at=at or dt.datetime.now(dt.UTC),
                set_by=actor.username,
            )
            audit_record(
                actor=actor,
                action="legal_hold.set",
                subject=_subject(hold),
                purpose=hold.reason,
                detail={"hold": hold.pk, "scope": scope, "ward": ward.code if ward else None},
            )
    except IntegrityError as exc:
        raise RegistryError("a legal hold is already open on it", code="hold_exists") from exc
    return hold


def legal_hold_release(*, hold_id: int, reason: str, actor: Actor, at: dt.datetime | None = None) -> LegalHold:
    """Release an open hold; the hold row stays, with who released it, when and why."""
    reason = reason.strip()
    if not reason:
        raise RegistryError("releasing a legal hold needs a reason", code="reason_required")
    with transaction.atomic():
        hold = (
            LegalHold.objects.select_for_update(of=("self",))
            .select_related("patient", "ward")
            .filter(pk=hold_id, released_at__isnull=True)
            .first()
        )
        if hold is None:
            raise RegistryError("no such open legal hold", code="unknown_hold")
        hold.released_at = at or dt.datetime.now(dt.UTC)
        hold.released_by = actor.username
        hold.release_reason = reason[:300]
        hold.save(update_fields=["released_at", "released_by", "release_reason"])
        audit_record(
            actor=actor,
            action="legal_hold.released",
            subject=_subject(hold),
            purpose=hold.release_reason,
            detail={"hold": hold.pk, "scope": hold.scope, "ward": hold.ward.code if hold.ward else None},
        )
    return hold


def legal_holds() -> list[LegalHold]:
    """Every hold, open ones first, for the page."""
    return list(LegalHold.objects.select_related("patient", "ward").order_by("-released_at", "-set_at")[:500])


@dataclass(frozen=True)
class HeldSet:
    """What the open holds keep, as ids: what every deletion path excludes."""

    patient_ids: frozenset[int]
    pseudonyms: frozenset[str]
    ward_codes: frozenset[str]
    device_ids: frozenset[int]  # devices of held wards

    @property
    def empty(self) -> bool:
        return not (self.patient_ids or self.ward_codes)


def held_set() -> HeldSet:
    """The open holds now: held patients plus every patient who lay on a held ward (now or in a
    past stay), the held wards and their devices. Read inside the deleting transaction."""
    open_holds = LegalHold.objects.filter(released_at__isnull=True)
    ward_ids = set(open_holds.filter(scope=LegalHold.Scope.WARD).values_list("ward_id", flat=True))
    patients = set(open_holds.filter(scope=LegalHold.Scope.PATIENT).values_list("patient_id", flat=True))
    if ward_ids:
        patients |= set(PatientStay.objects.filter(ward_id__in=ward_ids).values_list("patient_id", flat=True))
        patients |= set(Patient.objects.filter(ward_id__in=ward_ids).values_list("id", flat=True))
    held_patients = Patient.objects.filter(Q(id__in=patients))
    return HeldSet(
        patient_ids=frozenset(i for i in patients if i is not None),
        pseudonyms=frozenset(held_patients.values_list("pseudonym", flat=True)),
        ward_codes=frozenset(Ward.objects.filter(id__in=ward_ids).values_list("code", flat=True)),
        device_ids=frozenset(Device.objects.filter(ward_id__in=ward_ids).values_list("id", flat=True)),
    )
