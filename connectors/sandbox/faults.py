"""Deterministic fault injection: the failures real APIs produce, on demand.

Each API has its own `FaultSettings` and its own seeded random stream, so a run
with the same seed and the same request order sees the same faults. Faults are
decided BEFORE a request is handled, so a faulted write has no effect; the one
exception is `lost_response_rate`, where the write IS applied and then the
connection is closed without an answer (real APIs do that; the product must
converge anyway). Token endpoints and the inspection server are never faulted.

SPEC syntax (the `--faults` option of `healthsync sandbox serve`):
    api.key=value[,api.key=value...]      api in salesforce|hubspot|slack|all
e.g. salesforce.error_rate=0.1,hubspot.burst_429=5,slack.drop_rate=0.05
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, fields

APIS = ("salesforce", "hubspot", "slack")


@dataclass
class FaultSettings:
    error_rate: float = 0.0  # share of requests answered 500/502/503
    burst_429: int = 0  # the next N requests are answered 429 (a burst)
    burst_every: int = 0  # after the first burst, start another every N requests (0 = once)
    drop_rate: float = 0.0  # share of requests whose connection is closed without an answer
    lost_response_rate: float = 0.0  # share of writes applied, then the answer is lost
    lost_response_next: int = 0  # the next N writes are applied, then their answer is lost (deterministic)
    latency_ms: float = 0.0  # added to every request
    session_expiry_after: int = 0  # Salesforce: a session dies after N requests (0 = never)
    retry_after: int = 1  # seconds in Retry-After on injected 429s
    lock_rate: float = 0.0  # Salesforce: share of records in a write refused UNABLE_TO_LOCK_ROW (not applied)
    lock_burst: int = 0  # Salesforce: the next N records written are refused UNABLE_TO_LOCK_ROW

    def validate(self, api: str) -> None:
        for name in ("error_rate", "drop_rate", "lost_response_rate", "lock_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"faults: {api}.{name} must be between 0 and 1, got {v}")
        for name in ("burst_429", "burst_every", "latency_ms", "session_expiry_after", "retry_after", "lock_burst",
                     "lost_response_next"):
            if getattr(self, name) < 0:
                raise ValueError(f"faults: {api}.{name} must be >= 0, got {getattr(self, name)}")


_FIELD_TYPES = {f.name: (float if f.type in ("float", float) else int) for f in fields(FaultSettings)}


def parse_spec(spec: str | None) -> dict[str, dict]:
    """`salesforce.error_rate=0.1,hubspot.burst_429=5` -> {"salesforce": {"error_rate": 0.1}, ...}."""
    out: dict[str, dict] = {}
    if not spec:
        return out
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part or "." not in part.split("=", 1)[0]:
            raise ValueError(f"faults: {part!r} is not of the form api.key=value (e.g. salesforce.error_rate=0.1)")
        lhs, value = part.split("=", 1)
        api, key = lhs.strip().split(".", 1)
        targets = APIS if api == "all" else (api,)
        if api != "all" and api not in APIS:
            raise ValueError(f"faults: unknown api {api!r} in {part!r} (expected one of {', '.join(APIS)}, all)")
        if key not in _FIELD_TYPES:
            raise ValueError(f"faults: unknown setting {key!r} in {part!r} (known: {', '.join(_FIELD_TYPES)})")
        try:
            typed = _FIELD_TYPES[key](float(value)) if _FIELD_TYPES[key] is int else float(value)
        except ValueError:
            raise ValueError(f"faults: {lhs} needs a number, got {value!r}") from None
        for a in targets:
            out.setdefault(a, {})[key] = typed
    return out


@dataclass
class FaultDecision:
    action: str | None = None  # None | "error" | "429" | "drop" | "lost_response"
    status: int = 0
    latency_s: float = 0.0
    retry_after: int = 1


class FaultInjector:
    """Per-API fault settings and seeded random streams; thread-safe."""

    def __init__(self, seed: int = 0, settings: dict[str, dict] | None = None):
        self._lock = threading.Lock()
        self._seed = seed
        self._settings = {api: FaultSettings() for api in APIS}
        self._rng = {api: random.Random(f"{seed}:{api}") for api in APIS}
        self._burst_left = {api: 0 for api in APIS}
        self._since_burst = {api: 0 for api in APIS}
        self._lose_left = {api: 0 for api in APIS}
        self._locks_left = {api: 0 for api in APIS}
        self._lock_rng = {api: random.Random(f"{seed}:{api}:locks") for api in APIS}
        for api, values in (settings or {}).items():
            self.update(api, values)

    def update(self, api: str, values: dict) -> FaultSettings:
        if api not in APIS:
            raise ValueError(f"faults: unknown api {api!r} (expected one of {', '.join(APIS)})")
        with self._lock:
            current = asdict(self._settings[api])
            for k, v in values.items():
                if k not in _FIELD_TYPES:
                    raise ValueError(f"faults: unknown setting {k!r} for {api} (known: {', '.join(_FIELD_TYPES)})")
                current[k] = _FIELD_TYPES[k](v)
            new = FaultSettings(**current)
            new.validate(api)
            self._settings[api] = new
            if "burst_429" in values:
                self._burst_left[api] = new.burst_429
                self._since_burst[api] = 0
            if "lost_response_next" in values:
                self._lose_left[api] = new.lost_response_next
            if "lock_burst" in values:
                self._locks_left[api] = new.lock_burst
            return new

    def reset(self, api: str) -> None:
        with self._lock:
            self._settings[api] = FaultSettings()
            self._burst_left[api] = 0
            self._lose_left[api] = 0
            self._locks_left[api] = 0

    def settings(self, api: str) -> FaultSettings:
        return self._settings[api]

    def snapshot(self) -> dict:
        return {api: asdict(s) for api, s in self._settings.items()}

    def row_locked(self, api: str) -> bool:
        """One record of a write: is it refused UNABLE_TO_LOCK_ROW? (lock_burst first, then lock_rate)

        Its own random stream, so record-level lock faults never shift the request-level faults.
        """
        s = self._settings[api]
        with self._lock:
            if self._locks_left[api] > 0:
                self._locks_left[api] -= 1
                return True
            return s.lock_rate > 0 and self._lock_rng[api].random() < s.lock_rate

    def decide(self, api: str, is_write: bool) -> FaultDecision:
        s = self._settings[api]
        with self._lock:
            rng = self._rng[api]
            d = FaultDecision(latency_s=s.latency_ms / 1000.0, retry_after=s.retry_after)
            if s.burst_every and self._burst_left[api] == 0:
                self._since_burst[api] += 1
                if self._since_burst[api] >= s.burst_every:
                    self._burst_left[api] = s.burst_429
                    self._since_burst[api] = 0
            if self._burst_left[api] > 0:
                self._burst_left[api] -= 1
                d.action, d.status = "429", 429
                return d
            # always draw the same number of values so one setting does not shift the others
            r_drop, r_err, r_code, r_lost = rng.random(), rng.random(), rng.random(), rng.random()
            if is_write and self._lose_left[api] > 0:
                self._lose_left[api] -= 1
                d.action = "lost_response"
            elif r_drop < s.drop_rate:
                d.action = "drop"
            elif r_err < s.error_rate:
                d.action, d.status = "error", (500, 502, 503)[int(r_code * 3)]
            elif is_write and r_lost < s.lost_response_rate:
                d.action = "lost_response"
            return d
