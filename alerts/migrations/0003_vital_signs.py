"""SpO2 and battery alarm rules: the fields of every rule version, and the three new kinds.

Existing rule versions take the shipped defaults (docs/alarms.md): the column is added with a
default and the default dropped again, which PostgreSQL does without updating a row, so the
immutability trigger (0002) is not involved and no version changes what it said about tissue O2.
"""

from django.db import migrations, models

# The shipped values at the time of this migration (alerts.models.RULE_DEFAULTS may change later).
DEFAULTS: dict[str, tuple[type[models.Field], float | int, str]] = {
    "spo2_low_threshold": (models.FloatField, 90.0, "% SpO2"),
    "spo2_low_delay_s": (models.PositiveIntegerField, 15, ""),
    "spo2_critical_threshold": (models.FloatField, 80.0, "% SpO2"),
    "spo2_critical_delay_s": (models.PositiveIntegerField, 10, ""),
    "spo2_clear_margin": (models.FloatField, 2.0, "%-points above an SpO2 threshold to clear"),
    "battery_low_threshold": (models.FloatField, 3500.0, "mV"),
    "battery_low_delay_s": (models.PositiveIntegerField, 60, ""),
}


def _field(kind: type[models.Field], default: float | int, help_text: str) -> models.Field:
    return kind(default=default, help_text=help_text) if help_text else kind(default=default)


class Migration(migrations.Migration):
    dependencies = [("alerts", "0002_rule_defaults")]

    operations = [
        *(
            migrations.AddField(model_name="alarmrule", name=name, field=_field(*spec), preserve_default=False)
            for name, spec in DEFAULTS.items()
        ),
        migrations.AlterField(
            model_name="alarm",
            name="kind",
            field=models.CharField(
                choices=[
                    ("critical_low", "Tissue O2 critically low"),
                    ("low", "Tissue O2 low"),
                    ("rapid_fall", "Tissue O2 falling rapidly"),
                    ("signal_quality", "Signal quality low"),
                    ("no_data", "No data from sensor"),
                    ("spo2_critical_low", "SpO2 critically low"),
                    ("spo2_low", "SpO2 low"),
                    ("battery_low", "Sensor battery low"),
                ],
                max_length=20,
            ),
        ),
    ]
