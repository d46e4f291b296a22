"""The one retry policy every connector uses (tenacity).

What is retried: 429, 5xx, timeouts and dropped connections, i.e. every
`RetryableError` (each connector translates its SDK's exceptions into the
`connectors.base` tree before they reach this module). A `Retry-After` the
server sent is honoured; otherwise the wait is exponential backoff with full
jitter, so parallel workers do not retry in lockstep. Attempts and the total
time spent are both bounded: a connector never hangs a run. When they run out,
the last failure becomes a `StopRunError` that says what happened and what to do
(`connectors.errors.EXHAUSTED`): `UnreachableError` when there was no answer at
all (connection refused, DNS, timeouts), `RetriesExhaustedError` for 429 / 5xx.
The sync layer stops that CRM's lane and keeps its state (exit 3). Subclasses of
`RetryableError` that carry their own meaning (Slack's "may have been posted")
propagate unchanged; an exhausted error is never retried again by an outer loop.

Retried calls must be idempotent (updates by id, reads, searches). Creates are
made idempotent by the connectors first (tasks carry an idempotency key and
are looked up before being created), so a retried create never duplicates.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_random_exponential

from healthsync.connectors.base import CallStats, RetryableError, StopRunError
from healthsync.connectors.errors import DISPLAY, EXHAUSTED, split_call

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
            # an exhausted error (a StopRunError) from an inner loop is final: never multiply the attempts
            retry=retry_if_exception(lambda e: isinstance(e, RetryableError) and not isinstance(e, StopRunError)),
            wait=wait,
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_total_seconds) | too_long_retry_after,
            before_sleep=before_sleep,
            reraise=True,
            sleep=time.sleep,
        )
        started = time.monotonic()
        try:
            return retrying(fn)
        except RetryableError as exc:
            if type(exc) is not RetryableError:  # a subclass with its own meaning, or already final
                raise
            attempts = retrying.statistics.get("attempt_number", 1)
            raise exhausted(exc, what, attempts, time.monotonic() - started) from exc


def failure_kind(exc: BaseException) -> str:
    """`network` (no answer at all), `rate_limited` (429) or `server_error` (5xx and the like)."""
    kind = getattr(exc, "kind", None)
    if kind in EXHAUSTED:
        return kind
    text = str(exc).lower()
    if "rate limit" in text or "429" in text:
        return "rate_limited"
    seen: set[int] = set()
    cause: BaseException | None = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        reason = getattr(cause, "reason", None)  # urllib3 MaxRetryError: the real reason
        if reason is not None and "429" in str(reason):
            return "rate_limited"
        if _is_network(cause) or (isinstance(reason, BaseException) and _is_network(reason)):
            return "network"
        cause = cause.__cause__ or cause.__context__
    if any(word in text for word in ("connectionerror", "timeout", "newconnectionerror", "maxretryerror",
                                     "protocolerror", "remotedisconnected", "urlerror", "connection")):
        return "network"
    return "server_error"


def _is_network(exc: BaseException) -> bool:
    import requests
    import urllib3

    if isinstance(exc, urllib3.exceptions.ResponseError):
        return False
    return isinstance(exc, (OSError, requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError))


def exhausted(exc: RetryableError, what: str, attempts: int, seconds: float) -> StopRunError:
    """The StopRunError a transient failure becomes when the bounded retries ran out."""
    system, call = split_call(what)
    row = EXHAUSTED[failure_kind(exc)]
    detail = str(exc)
    prefix = what + ": "
    if detail.startswith(prefix):
        detail = detail[len(prefix):]
    name = DISPLAY.get(system or "", "the API")
    message = f"{name} {call}: " + row.what.format(detail=detail, attempts=attempts, seconds=seconds)
    stop = row.error(message, system=system, call=call, action=row.action.format(system=name))
    stop.retry_after = exc.retry_after
    return stop


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
