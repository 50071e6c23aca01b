"""Writes of alarm rules: immutable versions of a ward's rule and of a patient's override.

A rule is never edited: `rule_update` writes the next version (a database trigger refuses UPDATE,
alerts/models.py), so an alarm keeps pointing at exactly the rule that raised it. Administrators
only; a refused or invalid change is an audited refusal (alerts/errors.py).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from alerts.errors import AlarmConflict, AlarmForbidden, RuleInvalid
from alerts.models import RULE_DEFAULTS, RULE_FIELDS, AlarmRule
from alerts.selectors import rule_override, rule_ward_latest
from audit.access.policy import user_can
from audit.access.refusals import refusals_audited
from audit.trail import SYSTEM, Actor, audit_record
from config.users import StaffUser
from telemetry.models import Patient, Ward

# (minimum, maximum) per field: wide enough for any ward, narrow enough to refuse nonsense.
RULE_LIMITS: dict[str, tuple[float, float]] = {
    "low_threshold": (1, 99),
    "low_delay_s": (0, 3600),
    "critical_threshold": (1, 99),
    "critical_delay_s": (0, 3600),
    "rapid_fall_drop": (1, 100),
    "rapid_fall_window_s": (5, 3600),
    "quality_level": (0, 1),
    "quality_delay_s": (0, 3600),
    "no_data_delay_s": (10, 86400),
    "clear_margin": (0, 50),
    "clear_delay_s": (0, 3600),
    "realert_interval_s": (30, 86400),
    "suppression_window_s": (0, 3600),
    "escalation_delay_s": (10, 86400),
    "max_pause_s": (10, 3600),
    # Monitors let the SpO2 limits go from 50 to 99 % and delay them by at most tens of seconds.
    "spo2_low_threshold": (50, 99),
    "spo2_low_delay_s": (0, 120),
    "spo2_critical_threshold": (50, 99),
    "spo2_critical_delay_s": (0, 120),
    "spo2_clear_margin": (0, 10),
    "battery_low_threshold": (500, 20000),  # mV: the range telemetry.units accepts for a battery
    "battery_low_delay_s": (0, 3600),
}


def rule_validate(values: dict[str, Any]) -> tuple[dict[str, float | int], dict[str, str]]:
    """Coerce and check a complete set of rule values; returns (clean, errors by field)."""
    clean: dict[str, float | int] = {}
    errors: dict[str, str] = {}
    for name in RULE_FIELDS:
        raw = values.get(name)
        as_int = isinstance(RULE_DEFAULTS[name], int)
        try:
            number = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            errors[name] = "a number is required"
            continue
        if number != number or (as_int and not number.is_integer()):
            errors[name] = "a whole number of seconds is required" if as_int else "a number is required"
            continue
        low, high = RULE_LIMITS[name]
        if not low <= number <= high:
            errors[name] = f"must be between {low:g} and {high:g}"
            continue
        clean[name] = int(number) if as_int else number
    if not errors:
        errors = _relations(clean)
    return clean, errors


def _relations(clean: dict[str, float | int]) -> dict[str, str]:
    """What a set of individually valid values must also satisfy together: the more urgent
    threshold lies below the other, and a threshold plus its margin stays a percentage."""
    errors: dict[str, str] = {}
    for critical, low in (("critical_threshold", "low_threshold"), ("spo2_critical_threshold", "spo2_low_threshold")):
        if clean[critical] >= clean[low]:
            errors[critical] = "must be below the low threshold"
    for threshold, margin in (("low_threshold", "clear_margin"), ("spo2_low_threshold", "spo2_clear_margin")):
        if threshold not in errors and clean[threshold] + clean[margin] > 100:
            errors[margin] = "threshold plus margin must stay within 100 %"
    if clean["rapid_fall_drop"] - clean["clear_margin"] <= 0:
        errors["rapid_fall_drop"] = "must be larger than the clear margin"
    return errors


def _next_version(*, ward: Ward, patient: Patient | None) -> int:
    scope = (
        AlarmRule.objects.filter(patient=patient)
        if patient
        else AlarmRule.objects.filter(ward=ward, patient__isnull=True)
    )
    last = scope.order_by("-version").values_list("version", flat=True).first()
    return (last or 0) + 1


@transaction.atomic
def rule_ensure_ward_default(*, ward: Ward) -> AlarmRule:
    """A ward without a rule gets the shipped defaults as version 1 (wards created after the
    migration that seeded existing ones). Not an audited act: nobody chose anything; the row
    itself says it is the shipped default, and every later change is audited."""
    Ward.objects.select_for_update().filter(pk=ward.pk).first()
    current = rule_ward_latest(ward)
    if current is not None:
        return current
    rule = AlarmRule.objects.create(
        ward=ward,
        version=1,
        created_at=timezone.now(),
        created_by=SYSTEM.username,
        reason="shipped defaults",
        **RULE_DEFAULTS,
    )
    return rule


def rule_current_ward(ward: Ward) -> AlarmRule:
    """The ward's current rule; a ward created after the migration gets the shipped defaults first."""
    return rule_ward_latest(ward) or rule_ensure_ward_default(ward=ward)


def rule_effective(patient: Patient) -> AlarmRule:
    """The patient's override if one is in force, else the ward's current rule (written if needed)."""
    return rule_override(patient) or rule_current_ward(patient.ward)


@refusals_audited
def rule_update(
    *,
    ward: Ward,
    actor: Actor,
    user: StaffUser,
    values: dict[str, Any],
    patient: Patient | None = None,
    reason: str = "",
) -> AlarmRule:
    """Write a new version of a ward's rule or of a patient's override (administrators only).
    Invalid values are refused field by field (RuleInvalid's detail); refusals are audited."""
    clean, errors = rule_validate(values)
    refused = "invalid"
    if not user_can(user, "edit_alarm_rules"):
        errors, refused = {"__all__": "only administrators edit alarm rules"}, "role"
    subject = patient.pseudonym if patient else ward.code
    if errors:
        raise RuleInvalid(
            errors, action="alarm_rule.updated", reason=refused, subject=subject, facts={"errors": errors}
        )
    Ward.objects.select_for_update().filter(pk=ward.pk).first()
    previous = (
        rule_current_ward(ward)
        if patient is None
        else (AlarmRule.objects.filter(patient=patient).order_by("-version").first() or rule_current_ward(ward))
    )
    version = _next_version(ward=ward, patient=patient)
    rule = AlarmRule.objects.create(
        ward=ward,
        patient=patient,
        version=version,
        created_at=timezone.now(),
        created_by=actor.username,
        reason=reason[:500],
        **clean,
    )
    changes = {k: [previous.values()[k], v] for k, v in clean.items() if previous.values()[k] != v}
    audit_record(
        actor=actor,
        action="alarm_rule.updated",
        subject=subject,
        detail={
            "version": version,
            "scope": "patient" if patient else "ward",
            "changes": changes,
            "reason": reason[:500],
        },
    )
    return rule


@refusals_audited
def rule_override_remove(*, patient: Patient, actor: Actor, user: StaffUser) -> AlarmRule:
    """Return a patient to the ward rule: a retired override version, so history stays intact."""
    action = "alarm_rule.override_removed"
    if not user_can(user, "edit_alarm_rules"):
        raise AlarmForbidden(
            "Only administrators edit alarm rules.", action=action, reason="role", subject=patient.pseudonym
        )
    current = AlarmRule.objects.filter(patient=patient).order_by("-version").first()
    if current is None or current.retired:
        raise AlarmConflict(
            "The patient has no override.", action=action, reason="no_override", subject=patient.pseudonym
        )
    rule = AlarmRule.objects.create(
        ward=patient.ward,
        patient=patient,
        version=current.version + 1,
        retired=True,
        created_at=timezone.now(),
        created_by=actor.username,
        reason="override removed",
        **current.values(),
    )
    audit_record(actor=actor, action=action, subject=patient.pseudonym, detail={"version": rule.version})
    return rule
