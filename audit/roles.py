"""Roles as Django groups and the permissions each one holds (see docs/security.md).

Shared by the data migration that creates the groups and by tests that check the matrix.
"""

from __future__ import annotations

CLINICIAN = "clinician"
ONCALL = "oncall"
COMPLIANCE = "compliance"
DEVICE_ADMIN = "device_admin"
ADMIN = "admin"
ROLES = (CLINICIAN, ONCALL, COMPLIANCE, DEVICE_ADMIN, ADMIN)

# Permission codenames live on audit.StaffProfile (Meta.permissions).
ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    CLINICIAN: ("view_ward_patients", "reveal_identity", "acknowledge_alarms"),
    ONCALL: ("view_ward_patients", "acknowledge_alarms"),
    COMPLIANCE: ("view_audit_trail", "break_glass"),
    DEVICE_ADMIN: ("manage_devices",),
    ADMIN: ("manage_staff", "edit_alarm_rules", "manage_devices", "break_glass"),
}
