"""Create the role groups and grant each its permissions (audit/roles.py)."""

from django.db import migrations

from audit.roles import ROLE_PERMISSIONS

LABELS = {
    "view_ward_patients": "See telemetry of the patients of one's wards",
    "reveal_identity": "Reveal a patient's identity on the chart (own wards)",
    "acknowledge_alarms": "Acknowledge and take responsibility for alarms",
    "view_audit_trail": "Search and export the audit trail",
    "break_glass": "Open time-limited emergency access to one patient",
    "manage_devices": "Manage devices and device keys",
    "manage_staff": "Manage staff accounts and roles",
    "edit_alarm_rules": "Edit alarm rules",
}


def create_roles(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    ContentType = apps.get_model("contenttypes", "ContentType")
    # Permissions are normally created after migrate (post_migrate); create them now so the
    # groups can hold them in this same migration.
    content_type, _ = ContentType.objects.get_or_create(app_label="audit", model="staffprofile")
    perms = {}
    for codename, label in LABELS.items():
        perms[codename], _ = Permission.objects.get_or_create(
            content_type=content_type, codename=codename, defaults={"name": label}
        )
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.set([perms[c] for c in codenames])


def drop_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=list(ROLE_PERMISSIONS)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0003_sessions_breakglass_checkpoints"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_roles, drop_roles)]
