"""Keep secrets out of every message a connector produces.

Connectors wrap SDK exceptions into the `connectors.base` tree; SDK messages
may echo request data (a URL, a form body, a header). Each connector holds a
`Redactor` built from its own secrets and passes every outgoing message through
it, so a token can never reach a log line, an exception or a run summary.
"""

from __future__ import annotations

from typing import Any, Iterable

MASK = "***"


def reveal(value: Any) -> str | None:
    """The plain string of a secret given as str or pydantic SecretStr (None stays None)."""
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if callable(getter) else value)


class Redactor:
    """Replaces every known secret (and its URL-encoded form) in text with `***`."""

    def __init__(self, secrets: Iterable[Any] = ()):
        self._secrets: list[str] = []
        for s in secrets:
            self.add(s)

    def add(self, secret: Any) -> None:
        from urllib.parse import quote, quote_plus

        plain = reveal(secret)
        if not plain or len(plain) < 4:  # too short to be a secret worth masking (and would mangle text)
            return
        for form in {plain, quote(plain, safe=""), quote_plus(plain)}:
            if form not in self._secrets:
                self._secrets.append(form)
        self._secrets.sort(key=len, reverse=True)

    def __call__(self, text: Any) -> str:
        out = str(text)
        for s in self._secrets:
            if s in out:
                out = out.replace(s, MASK)
        return out
