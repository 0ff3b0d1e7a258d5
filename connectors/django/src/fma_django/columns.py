"""Columns the database prints as the plain values a round needs, for reads of thousands of rows.

Django converts every UUID and timestamp it reads: a client's id is parsed into a ``uuid.UUID``
and printed again, a time is parsed (SQLite keeps text) and made aware. On a round of 10,000
updates that is most of the claim's time; the database does the same work in its own loop for a
fraction of it. Both functions give exactly what the Python conversion would.
"""

from __future__ import annotations

from typing import Any

from django.db.models import BigIntegerField, CharField, Func


class UUIDText(Func):
    """A UUID column as ``str(uuid.UUID)``: 8-4-4-4-12 lowercase hex digits."""

    output_field = CharField()
    template = "CAST(%(expressions)s AS text)"  # PostgreSQL's uuid type prints in that form

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> tuple[str, list[Any]]:
        # Django keeps a UUIDField in SQLite as its 32 lowercase hex digits
        column, params = compiler.compile(self.source_expressions[0])
        groups = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
        sql = " || '-' || ".join(f"substr({column}, {start}, {length})" for start, length in groups)
        return f"({sql})", list(params) * len(groups)


class EpochMicroseconds(Func):
    """A timestamp column as whole microseconds since the epoch (divided by 10**6: the same float as
    ``datetime.timestamp()``, which divides the same integer)."""

    output_field = BigIntegerField()
    template = "CAST(EXTRACT(EPOCH FROM %(expressions)s) * 1000000 AS bigint)"  # numeric: exact

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> tuple[str, list[Any]]:
        # Django keeps a DateTimeField in SQLite as UTC text, 'YYYY-MM-DD HH:MM:SS[.ffffff]'. SQLite's own
        # date functions round to milliseconds, so they get the whole seconds only and the digits after
        # them are read as they are.
        column, params = compiler.compile(self.source_expressions[0])
        seconds = f"CAST(strftime('%%s', substr({column}, 1, 19)) AS integer)"
        micros = f"CAST(substr(substr({column}, 21) || '000000', 1, 6) AS integer)"
        return f"({seconds} * 1000000 + {micros})", list(params) * 3
