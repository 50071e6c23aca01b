"""A staff member's display mode (auto, day, night, high contrast), kept per user."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("audit", "0005_keyed_chain_append_only_checkpoints")]
    operations = [
        migrations.AddField(
            model_name="staffprofile",
            name="display_mode",
            field=models.CharField(
                choices=[("auto", "Auto (system)"), ("day", "Day"), ("night", "Night"), ("contrast", "High contrast")],
                default="auto",
                max_length=16,
            ),
        ),
    ]
