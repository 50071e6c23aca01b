"""Roles as Django groups and the permissions each one holds (see docs/security.md).

Shared by the data migration that creates the groups and by tests that check the matrix.
"""

from __future__ import annotations

from typing import Any

CLINICIAN = "clinician"
ONCALL = "oncall"
COMPLIANCE = "compliance"
DEVICE_ADMIN = "device_admin"
ADMIN = "admin"
ROLES = (CLINICIAN, ONCALL, COMPLIANCE, DEVICE_ADMIN, ADMIN)

# Permission codenames live on audit.StaffProfile (Meta.permissions).
ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    CLINICIAN: ("view_ward_patients", "reveal_identity", "acknowledge_alarms", "manage_patient_flow"),
    ONCALL: ("view_ward_patients", "acknowledge_alarms", "manage_patient_flow"),
    COMPLIANCE: ("view_audit_trail", "break_glass", "manage_legal_holds", "view_retention", "research_export"),
    DEVICE_ADMIN: ("manage_devices",),
    ADMIN: ("manage_staff", "edit_alarm_rules", "manage_devices", "break_glass", "view_retention"),
}

PERMISSION_LABELS = {
    "view_ward_patients": "See telemetry of the patients of one's wards",
    "reveal_identity": "Reveal a patient's identity on the chart (own wards)",
    "acknowledge_alarms": "Acknowledge and take responsibility for alarms",
    "manage_patient_flow": "Admit, move and discharge patients of one's wards and associate their devices",
    "view_audit_trail": "Search and export the audit trail",
    "break_glass": "Open time-limited emergency access to one patient",
    "manage_devices": "Manage devices and device keys",
    "manage_staff": "Manage staff accounts and roles",
    "edit_alarm_rules": "Edit alarm rules",
    "manage_legal_holds": "Set and release legal holds on a patient's or a ward's data",
    "view_retention": "See the retention settings and what each past day became",
    "research_export": "Export a de-identified cohort for research",
}


def roles_sync(group_model: Any, permission_model: Any, content_type_model: Any) -> None:
    """Create the role groups with exactly their permissions. Takes the models as arguments so
    the data migration can pass its historical ones; also run after every migrate/flush (apps.py)
    because a test-database flush empties auth_group."""
    content_type, _ = content_type_model.objects.get_or_create(app_label="audit", model="staffprofile")
    perms = {}
    for codename, label in PERMISSION_LABELS.items():
        perms[codename], _ = permission_model.objects.get_or_create(
            content_type=content_type, codename=codename, defaults={"name": label}
        )
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=role)
        group.permissions.set([perms[c] for c in codenames])
