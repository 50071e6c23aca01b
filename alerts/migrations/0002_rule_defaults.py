"""Rule versions are immutable (trigger), and every existing ward gets the shipped default rule."""

import datetime as dt

from django.db import migrations

DEFAULTS = {
    "low_threshold": 35.0,
    "low_delay_s": 30,
    "critical_threshold": 25.0,
    "critical_delay_s": 10,
    "rapid_fall_drop": 15.0,
    "rapid_fall_window_s": 60,
    "quality_level": 0.5,
    "quality_delay_s": 60,
    "no_data_delay_s": 120,
    "clear_margin": 3.0,
    "clear_delay_s": 15,
    "realert_interval_s": 300,
    "suppression_window_s": 120,
    "escalation_delay_s": 120,
    "max_pause_s": 600,
}


def default_rules(apps, schema_editor):
    Ward = apps.get_model("telemetry", "Ward")
    AlarmRule = apps.get_model("alerts", "AlarmRule")
    now = dt.datetime.now(dt.UTC)
    for ward in Ward.objects.all():
        if not AlarmRule.objects.filter(ward=ward, patient__isnull=True).exists():
            AlarmRule.objects.create(
                ward=ward, version=1, created_at=now, created_by="system", reason="shipped defaults", **DEFAULTS
            )


IMMUTABLE = """
CREATE FUNCTION alerts_rule_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'alarm rule versions are immutable; write a new version';
END $$;
CREATE TRIGGER alerts_rule_no_update BEFORE UPDATE ON alerts_alarmrule
  FOR EACH ROW EXECUTE FUNCTION alerts_rule_immutable();
"""
MUTABLE = "DROP TRIGGER alerts_rule_no_update ON alerts_alarmrule; DROP FUNCTION alerts_rule_immutable();"


class Migration(migrations.Migration):
    dependencies = [("alerts", "0001_initial"), ("telemetry", "0002_reading_storage")]

    operations = [
        migrations.RunSQL(IMMUTABLE, MUTABLE),
        migrations.RunPython(default_rules, migrations.RunPython.noop),
    ]
