"""A client's score of an aggregate grows into an evaluation on held-out data (``fma_django.evaluations``):
by a client or the developer, its metrics (finite numbers) and the examples they were measured on.
Each existing score keeps its results as sent, and gets the metrics and weight the dashboard
combined from them until now: its top-level numbers, weighed by its ``num_examples`` entry (else 1).
"""

import math

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MAX_BIGINT = 2**63 - 1


def _number(value):
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def scores_to_evaluations(apps, schema_editor):
    Evaluation = apps.get_model("fma_django", "Evaluation")
    for evaluation in Evaluation.objects.all().iterator():
        results = evaluation.validation_results
        if not isinstance(results, dict):
            continue
        weight = results.get("num_examples")
        valid = isinstance(weight, int) and not isinstance(weight, bool) and 1 <= weight <= MAX_BIGINT
        evaluation.metrics = {k: v for k, v in results.items() if k != "num_examples" and _number(v)}
        evaluation.num_examples = weight if valid else 1
        evaluation.save(update_fields=["metrics", "num_examples"])


class Migration(migrations.Migration):
    dependencies = [
        ("fma_django", "0017_experiment_privacy"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="experiment",
            name="evaluation",
            field=models.JSONField(
                blank=True,
                help_text="the metrics measured on held-out data and reported against each aggregate, each with "
                'its goal: {"metrics": {"accuracy": {"goal": "max"}, "loss": {"goal": "min"}}}, and optionally '
                '"schema", a JSON Schema of the reported metrics (fma_django.evaluations)',
                null=True,
            ),
        ),
        migrations.RemoveConstraint(model_name="clientaggregatescore", name="fma_one_score_per_client"),
        migrations.RenameModel(old_name="ClientAggregateScore", new_name="Evaluation"),
        migrations.AlterField(
            model_name="evaluation",
            name="aggregate",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="evaluations",
                to="fma_django.modelaggregate",
            ),
        ),
        migrations.AlterField(
            model_name="evaluation",
            name="client",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="evaluations",
                to="fma_django.client",
            ),
        ),
        migrations.AlterField(
            model_name="evaluation",
            name="validation_results",
            field=models.JSONField(
                blank=True, help_text="a v1 score's results as the client sent them (free-form)", null=True
            ),
        ),
        migrations.AddField(
            model_name="evaluation",
            name="source",
            field=models.CharField(
                choices=[("client", "Client"), ("developer", "Developer")], default="client", max_length=16
            ),
        ),
        migrations.AddField(
            model_name="evaluation",
            name="user",
            field=models.ForeignKey(
                blank=True,
                help_text="the developer (or staff) who reported a developer's evaluation",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="evaluation",
            name="metrics",
            field=models.JSONField(blank=True, default=dict, help_text="metric name → finite number"),
        ),
        migrations.AddField(
            model_name="evaluation",
            name="num_examples",
            field=models.PositiveBigIntegerField(default=1, help_text="held-out examples it was measured on"),
        ),
        migrations.RunPython(scores_to_evaluations, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="evaluation",
            constraint=models.UniqueConstraint(
                fields=("aggregate", "client"), name="fma_one_evaluation_per_client"
            ),
        ),
        migrations.AddConstraint(
            model_name="evaluation",
            constraint=models.UniqueConstraint(
                condition=models.Q(("source", "developer")),
                fields=("aggregate", "user"),
                name="fma_one_evaluation_per_developer",
            ),
        ),
        migrations.AddConstraint(
            model_name="evaluation",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("client__isnull", False), ("source", "client"), ("user__isnull", True)),
                    models.Q(("client__isnull", True), ("source", "developer")),
                    _connector="OR",
                ),
                name="fma_evaluation_source",
            ),
        ),
    ]
