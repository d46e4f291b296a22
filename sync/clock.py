"""Where a run gets "now" from.

Everything time-dependent takes `now` explicitly. In sandbox mode that is the
sandbox's clock (`GET {inspect_url}/clock`), so SLA tests can advance time by
hours without waiting; otherwise it is the real UTC time.
"""

from __future__ import annotations

from datetime import datetime, timezone

import requests

from healthsync.connectors.base import StopRunError


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def now_for(ready: dict | None, timeout: float = 10.0) -> datetime:
    """The sandbox clock when a ready dict (with `inspect_url`) is given, else real UTC now (aware)."""
    if not ready or not ready.get("inspect_url"):
        return utc_now()
    url = ready["inspect_url"].rstrip("/") + "/clock"
    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
        text = response.json()["now"]
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise StopRunError(f"cannot read the sandbox clock at {url}: {type(exc).__name__}") from None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
