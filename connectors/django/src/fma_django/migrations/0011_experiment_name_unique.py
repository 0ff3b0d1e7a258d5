"""Experiment names become unique per developer (``fma apply`` finds an experiment by its name).

Existing duplicates are renamed first, deterministically: of a developer's experiments sharing a
name, the oldest (lowest id) keeps it and each later one becomes ``name (2)``, ``name (3)``, …, the
lowest number that developer does not use yet (cut to fit 255 characters).
"""

from django.db import migrations, models
from django.db.models import Count

MAX_NAME = 255


def free_name(name: str, taken: set[str]) -> str:
    number = 2
    while True:
        suffix = f" ({number})"
        candidate = name[: MAX_NAME - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        number += 1


def rename_duplicates(apps, schema_editor):
    Experiment = apps.get_model("fma_django", "Experiment")
    duplicated = (
        Experiment.objects.values("developer_id", "name")
        .annotate(rows=Count("id"))
        .filter(rows__gt=1)
        .order_by("developer_id", "name")
    )
    for group in duplicated:
        developer = group["developer_id"]
        taken = set(Experiment.objects.filter(developer_id=developer).values_list("name", flat=True))
        later = Experiment.objects.filter(developer_id=developer, name=group["name"]).order_by("id")[1:]
        for pk in list(later.values_list("id", flat=True)):
            name = free_name(group["name"], taken)
            taken.add(name)
            Experiment.objects.filter(pk=pk).update(name=name)


class Migration(migrations.Migration):
    dependencies = [
        ("fma_django", "0010_aggregate_report"),
    ]

    operations = [
        migrations.RunPython(rename_duplicates, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="experiment",
            constraint=models.UniqueConstraint(
                fields=["developer", "name"], name="fma_experiment_name_per_developer"
            ),
        ),
    ]
