"""The patient-flow capability (ward workflow); post_migrate (audit/apps.py) grants it to the roles."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0006_staffprofile_display_mode"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="staffprofile",
            options={
                "permissions": [
                    ("view_ward_patients", "See telemetry of the patients of one's wards"),
                    ("reveal_identity", "Reveal a patient's identity on the chart (own wards)"),
                    ("acknowledge_alarms", "Acknowledge and take responsibility for alarms"),
                    (
                        "manage_patient_flow",
                        "Admit, move and discharge patients of one's wards and associate their devices",
                    ),
                    ("view_audit_trail", "Search and export the audit trail"),
                    ("break_glass", "Open time-limited emergency access to one patient"),
                    ("manage_devices", "Manage devices and device keys"),
                    ("manage_staff", "Manage staff accounts and roles"),
                    ("edit_alarm_rules", "Edit alarm rules"),
                ]
            },
        ),
    ]
