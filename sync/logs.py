"""Logging to stderr with every known secret scrubbed.

Secrets reach the process from the environment or a secrets file; this filter
replaces their values wherever they appear in a log record (message, args,
exception text), so no log line can carry one even if a library logs a URL or
a header. `register_secret` is called for every secret the settings hold and
every token a connector obtains at run time (OAuth access tokens).
"""

from __future__ import annotations

import logging
import sys
import threading

REDACTED = "**********"
_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: object) -> None:
    """Remember a secret value so it is scrubbed from every log line (short values are ignored)."""
    if value is None:
        return
    get = getattr(value, "get_secret_value", None)
    text = get() if callable(get) else str(value)
    if text and len(text) >= 6:
        with _lock:
            _secrets.add(text)


def scrub(text: str) -> str:
    """`text` with every registered secret replaced."""
    if not text:
        return text
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


class SecretScrubber(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = str(record.msg)
        record.msg = scrub(message)
        record.args = ()
        if record.exc_info and record.exc_info[1] is not None:
            import traceback

            record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)))
            record.exc_info = None
        return True


def register_settings_secrets(settings) -> None:
    """Register every SecretStr of the settings' sources, and the password inside `state.url`."""
    for section in ("salesforce", "hubspot", "slack"):
        src = getattr(settings.sources, section)
        for name, value in src:
            if hasattr(value, "get_secret_value"):
                register_secret(value)
    from healthsync.config.state_location import url_password

    register_secret(url_password(getattr(settings.state, "url", None)))


def configure_logging(verbose: bool = False) -> None:
    """One stderr handler (stdout is kept for `--json`), with the scrubber on it."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_healthsync", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._healthsync = True  # type: ignore[attr-defined]
    # the CRM lanes log from their own threads (`lane-salesforce`, `lane-hubspot`; sync/lanes.py)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"))
    handler.addFilter(SecretScrubber())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("healthsync").setLevel(logging.DEBUG if verbose else logging.INFO)
