"""The one retry policy every connector uses (tenacity).

What is retried: 429, 5xx, timeouts and dropped connections, i.e. every
`RetryableError` (each connector translates its SDK's exceptions into the
`connectors.base` tree before they reach this module). A `Retry-After` the
server sent is honoured; otherwise the wait is exponential backoff with full
jitter, so parallel workers do not retry in lockstep. Attempts and the total
time spent are both bounded: a connector never hangs a run, it gives up with
the last `RetryableError` and the sync layer stops cleanly.

Retried calls must be idempotent (updates by id, reads, searches). Creates are
made idempotent by the connectors first (tasks carry an idempotency key and
are looked up before being created), so a retried create never duplicates.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_random_exponential

from healthsync.connectors.base import CallStats, RetryableError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses worth retrying: rate limited, locked (HubSpot 423), and server errors.
RETRYABLE_STATUSES = frozenset({408, 423, 429, 477, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the retry loop; tests use tiny waits, production the defaults.

    max_attempts: total tries of one call (first try included).
    max_total_seconds: give up once this much time was spent on one call.
    base_wait / max_wait: exponential backoff bounds (seconds) when the server sent no Retry-After.
    max_retry_after: a Retry-After longer than this is not waited for (the call gives up instead).
    timeout: per-HTTP-request timeout in seconds (connect and read), used by every connector.
    """

    max_attempts: int = 6
    max_total_seconds: float = 120.0
    base_wait: float = 0.5
    max_wait: float = 20.0
    max_retry_after: float = 60.0
    timeout: float = 30.0

    def call(self, fn: Callable[[], T], *, stats: CallStats | None = None, what: str = "call") -> T:
        """Run `fn()` under the policy; `RetryableError` is retried, anything else propagates at once."""
        backoff = wait_random_exponential(multiplier=self.base_wait, max=self.max_wait)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                return max(0.0, min(float(retry_after), self.max_retry_after))
            return backoff(state)

        def before_sleep(state: RetryCallState) -> None:
            if stats is not None:
                stats.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            log.info("%s: retrying after %s (attempt %d of %d)", what, exc, state.attempt_number, self.max_attempts)

        def too_long_retry_after(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            retry_after = getattr(exc, "retry_after", None)
            return retry_after is not None and float(retry_after) > self.max_retry_after

        retrying = Retrying(
            retry=retry_if_exception_type(RetryableError),
            wait=wait,
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_total_seconds) | too_long_retry_after,
            before_sleep=before_sleep,
            reraise=True,
            sleep=time.sleep,
        )
        return retrying(fn)


#: The policy used when a connector is given none.
DEFAULT_POLICY = RetryPolicy()


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds (integer or decimal); HTTP-date forms are ignored (backoff applies)."""
    if value is None:
        return None
    try:
        seconds = float(str(value).strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
