"""PostgreSQL with credentials from the RDS-managed secret, read lazily and again after a rotation.

Django reads ``USER`` and ``PASSWORD`` from the settings once, but RDS rotates the master password
every 7 days while a Lambda execution environment can live for hours. So this backend asks
``fma_service.aws_secrets`` for the credentials each time it opens a connection (they are kept per
process, so that costs nothing), and when the server refuses them, reads the secret once more and
retries once: the first connection after a rotation succeeds, and a wrong secret still fails.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base

from fma_service import aws_secrets

# SQLSTATE of a refused password (PostgreSQL's invalid_password).
INVALID_PASSWORD = "28P01"


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        params.update(self._credentials(refresh=False))
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        try:
            return super().get_new_connection(conn_params)
        except base.Database.OperationalError as error:
            if not _password_refused(error):
                raise
        conn_params.update(self._credentials(refresh=True))
        return super().get_new_connection(conn_params)

    def _credentials(self, *, refresh: bool) -> dict[str, str]:
        credentials = aws_secrets.database_credentials(self.settings_dict["SECRET_ARN"], refresh=refresh)
        return {"user": credentials.user, "password": credentials.password}


def _password_refused(error: Exception) -> bool:
    # libpq reports a refused login before any result exists, so psycopg often has no SQLSTATE
    # to give; the server's message is fixed wording.
    return getattr(error, "sqlstate", None) == INVALID_PASSWORD or "password authentication failed" in str(
        error
    )
