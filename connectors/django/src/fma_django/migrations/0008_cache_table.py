"""The table of Django's database cache (``fma_cache``), where throttles count when no Redis is set
(``FMA_CACHE_URL`` unset): made here because ``migrate`` does not run ``createcachetable``, and every
path that prepares a database (fma-server, ``manage.py migrate``, Lambda's ``manage`` event, the
tests) runs ``migrate``."""

from django.core.management import call_command
from django.db import migrations

CACHE_TABLE = "fma_cache"


def create_cache_table(apps, schema_editor):
    call_command("createcachetable", CACHE_TABLE, database=schema_editor.connection.alias, verbosity=0)


def drop_cache_table(apps, schema_editor):
    schema_editor.execute(f"DROP TABLE IF EXISTS {schema_editor.quote_name(CACHE_TABLE)}")


class Migration(migrations.Migration):
    dependencies = [("fma_django", "0007_developer_tokens")]

    operations = [migrations.RunPython(create_cache_table, drop_cache_table)]
