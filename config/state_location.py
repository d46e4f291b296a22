"""Where the state store lives, decided the same way for every command.

The state database remembers what was sent; two commands that disagree on where
it is send things twice (issue 13: running from another directory re-posted every
Slack DM). So the location never depends on the working directory:

1. `state.url` given (config file or `HEALTHSYNC__STATE__URL`): that database. A
   relative SQLite path is taken relative to the config file that names it (from the
   environment: relative to the working directory, made absolute once, at load).
2. Otherwise, with a config file: `<config file's folder>/.healthsync/state.db`.
3. Otherwise (no config file at all): the per-user state directory
   (`$XDG_STATE_HOME/healthsync/state.db`, by default `~/.local/state/healthsync/state.db`
   on Linux; platformdirs' equivalent elsewhere).

`redact_url` is how a URL is shown anywhere (logs, errors, `status`, `config show`):
with its password replaced.
"""

from __future__ import annotations

import re
from pathlib import Path

#: the file name of a default SQLite state database
STATE_FILE = "state.db"
#: the folder next to a config file that holds its state
STATE_FOLDER = ".healthsync"


def user_state_dir() -> Path:
    """The per-user state directory (XDG on Linux), used when no config file is given."""
    import platformdirs

    return Path(platformdirs.user_state_path("healthsync"))


def default_state_url(config_path: str | Path | None) -> str:
    """The state URL when `state.url` is not set: next to the config file, else the per-user state dir."""
    if config_path is not None:
        folder = Path(config_path).expanduser().resolve().parent / STATE_FOLDER
    else:
        folder = user_state_dir()
    return f"sqlite:///{folder / STATE_FILE}"


def anchor_sqlite_path(url: str, base_dir: Path) -> str:
    """A SQLite URL whose relative file path is made absolute against `base_dir`; anything else unchanged."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - a garbage URL is reported by validation, not here
        return url
    if parsed.get_backend_name() != "sqlite":
        return url
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return url
    path = Path(database).expanduser()
    if path.is_absolute():
        return url
    return parsed.set(database=str((base_dir / path).resolve())).render_as_string(hide_password=False)


_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?P<tail>@)")


def redact_url(url: str | None) -> str | None:
    """`postgresql+psycopg://hs:***@db/hs`: the URL with its password hidden (also in text that is no valid URL)."""
    if url is None:
        return None
    return _PASSWORD_IN_URL.sub(lambda m: f"{m.group('head')}***{m.group('tail')}", str(url))


def url_password(url: str | None) -> str | None:
    """The password inside a URL, to register it as a secret (so log lines never carry it)."""
    if not url:
        return None
    m = _PASSWORD_IN_URL.search(str(url))
    return m.group("password") if m else None


def describe(url: str) -> str:
    """How a state location is shown to a user: the file path of a SQLite URL, else the redacted URL."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
            return parsed.database
    except Exception:  # noqa: BLE001
        pass
    return redact_url(url) or ""
