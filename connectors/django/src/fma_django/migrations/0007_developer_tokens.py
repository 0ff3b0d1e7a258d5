"""Developers' API tokens stored as SHA-256 (``DeveloperToken``), replacing DRF's plain-text
``authtoken_token`` rows: each existing token is hashed into a row that expires ``FMA_TOKEN_TTL``
from now, so it keeps working until then, and the plain row is deleted."""

import hashlib

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.utils import timezone

LEGACY_TABLE = "authtoken_token"


def hash_legacy_tokens(apps, schema_editor):
    connection = schema_editor.connection
    if LEGACY_TABLE not in connection.introspection.table_names():
        return  # a database that never had DRF's tokens
    developer_token = apps.get_model("fma_django", "DeveloperToken")
    table, key = connection.ops.quote_name(LEGACY_TABLE), connection.ops.quote_name("key")
    expires_at = timezone.now() + settings.FMA_TOKEN_TTL
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {key}, user_id FROM {table}")
        developer_token.objects.using(connection.alias).bulk_create(
            developer_token(
                user_id=user_id,
                digest=hashlib.sha256(secret.encode()).hexdigest(),
                name="issued before tokens were hashed",
                expires_at=expires_at,
            )
            for secret, user_id in cursor.fetchall()
        )
        cursor.execute(f"DELETE FROM {table}")


class Migration(migrations.Migration):
    dependencies = [
        ("fma_django", "0006_upload_checking"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="DeveloperToken",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("digest", models.CharField(max_length=64, unique=True)),
                (
                    "name",
                    models.CharField(
                        blank=True, help_text="what the developer called it, e.g. laptop", max_length=100
                    ),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("expires_at", models.DateTimeField()),
                ("last_used_at", models.DateTimeField(blank=True, null=True)),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="developer_tokens",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={"ordering": ["-created_at", "-id"]},
        ),
        migrations.RunPython(hash_legacy_tokens, migrations.RunPython.noop),
    ]
