"""Shared test set-up: nothing here talks to the outside world."""

import os

# Tests must never pick up a developer's real credentials or sandbox.
for _name in list(os.environ):
    if _name.startswith("HEALTHSYNC__") or _name in ("HEALTHSYNC_SANDBOX", "HEALTHSYNC_SECRETS_FILE"):
        del os.environ[_name]

# Nothing a test runs may write into the developer's home: the per-user state directory (the
# default state location without a config file, and where crash logs go) is a throwaway one.
import tempfile as _tempfile

os.environ["XDG_STATE_HOME"] = _tempfile.mkdtemp(prefix="healthsync-xdg-state-")
# A private PostgreSQL server for the tests that need one (skips where it cannot be started).
from postgres_server import fresh_postgres_url, postgres_server, postgres_url  # noqa: E402,F401
