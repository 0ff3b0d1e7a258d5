from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("fma_django", "0011_experiment_name_unique"),
    ]

    operations = [
        migrations.AddField(
            model_name="experiment",
            name="update_norm",
            field=models.JSONField(
                blank=True,
                help_text="a bound on each update's change from its base: {'mode': 'refuse' or 'clip', 'bound': 5.0} or 'adaptive': {'multiplier': 3, 'window': 5} instead of 'bound' (fma_core.norms)",
                null=True,
            ),
        ),
    ]
