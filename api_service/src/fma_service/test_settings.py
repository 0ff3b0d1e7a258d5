"""Settings for the test suite: the service's settings with a throwaway key, data dir and database.

``FMA_TEST_DATABASE=postgresql`` runs on PostgreSQL (``FMA_TEST_DATABASE_URL``, default
``postgresql://postgres@127.0.0.1:5432/fma``; Django creates and drops ``test_fma``); anything
else runs on SQLite.
"""

import os
import tempfile

os.environ.setdefault("FMA_DEVELOPMENT", "1")
os.environ.setdefault("FMA_DATA_DIR", tempfile.mkdtemp(prefix="fma-test-"))
# Tests that are not about throttling call the anonymous endpoints freely; the throttling tests
# set the rates they test (tests/fma_django/test_logins.py).
os.environ.setdefault("FMA_THROTTLE_LOGIN", "100000/min")
os.environ.setdefault("FMA_THROTTLE_REGISTER", "100000/min")
os.environ.setdefault("FMA_THROTTLE_ANON", "100000/min")

from fma_service.settings import *  # noqa: F403
from fma_service.settings import DATA_DIR, _database

TEST_DATABASE = os.environ.get("FMA_TEST_DATABASE", "sqlite")
if TEST_DATABASE == "postgresql":
    DATABASES = {
        "default": _database(
            os.environ.get("FMA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/fma")
        )
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # The server is shared (other checkouts, CI): one test database per run, dropped at its end.
    DATABASES["default"]["TEST"] = {"NAME": f"test_fma_{os.getpid()}"}
else:
    DATABASES = {"default": _database("")}
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}

# Tests start the runner they exercise; the API's own tests run no rounds behind their back.
FMA_AGGREGATOR_RUNNER = os.environ.get("FMA_TEST_AGGREGATOR_RUNNER", "none")

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast; tests only
