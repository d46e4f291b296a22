"""One clock for every emulator: real time plus an offset that tests can advance.

SLA tests need hours to pass in milliseconds, and Salesforce/HubSpot timestamps
(SystemModstamp, hs_lastmodifieddate) must all move together, so every emulator
reads the time from the same `Clock`. Rate limits use real monotonic time instead:
advancing the clock must not refill a 10-second window.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Callable


class Clock:
    def __init__(self, offset_seconds: float = 0.0):
        self._offset = timedelta(seconds=offset_seconds)
        self._lock = threading.Lock()
        self._last = datetime.min.replace(tzinfo=timezone.utc)

    def now(self) -> datetime:
        """Current emulator time (UTC, aware), strictly increasing so timestamps order writes."""
        with self._lock:
            t = datetime.now(timezone.utc) + self._offset
            t = t.replace(microsecond=(t.microsecond // 1000) * 1000)
            if t <= self._last:
                t = self._last + timedelta(milliseconds=1)
            self._last = t
            return t

    def advance(self, seconds: float) -> datetime:
        if seconds < 0:
            raise ValueError("the emulator clock only moves forward (advance_seconds must be >= 0)")
        with self._lock:
            self._offset += timedelta(seconds=seconds)
            # now() may run ahead of real time by a few ms (one ms per call within a ms): move that
            # lead too, so every stamp already issued lies at least `seconds` in the past afterwards
            self._last += timedelta(seconds=seconds)
        return self.now()

    @property
    def offset_seconds(self) -> float:
        return self._offset.total_seconds()


def sf_datetime(t: datetime) -> str:
    """Salesforce REST datetime spelling: 2024-01-01T00:00:00.000+0000."""
    t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}+0000"


def hs_datetime(t: datetime) -> str:
    """HubSpot datetime spelling: 2024-01-01T00:00:00.000Z."""
    t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_datetime(text: str) -> datetime:
    """Parse ISO-8601 with Z, +0000 or +00:00 offsets, or epoch milliseconds; naive -> UTC."""
    s = str(text).strip()
    if s.lstrip("-").isdigit() and len(s) >= 11:
        return datetime.fromtimestamp(int(s) / 1000, timezone.utc)
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    if len(s) >= 5 and s[-5] in "+-" and s[-4:].isdigit() and ":" not in s[-5:]:
        s = s[:-2] + ":" + s[-2:]
    t = datetime.fromisoformat(s)
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc)


def remote_clock(inspect_url: str, timeout: float = 10.0) -> Callable[[], datetime]:
    """A `now()` reading a running sandbox's clock (`GET {inspect_url}/clock`), for connectors in sandbox mode."""
    url = inspect_url.rstrip("/") + "/clock"

    def now() -> datetime:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only: the ready file's URL
            value = datetime.fromisoformat(json.loads(response.read())["now"])
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

    return now
