"""The contract every CRM connector implements, and the errors it raises.

A connector hides its SDK: nothing above `connectors/` sees `sf.Account` magic
or HubSpot model classes (shared/reference/style.md). The sync layer talks to
Salesforce and HubSpot only through `CrmConnector`, and to Slack only through
`connectors.slack`.

Errors are grouped by what happens next (design.md, "Errors"; the exit codes are
the command line's contract, README "Exit codes"):

    HealthsyncError
    ├── ConfigurationError       a setting or credential is wrong: exit 2, nothing sent
    │   └── CredentialsError     a permission or scope is missing
    │       └── AuthenticationError  the CRM refused the token / login
    ├── RetryableError           429, 5xx, timeout, dropped connection: retried (tenacity), bounded
    ├── RecordError              one record is bad: skipped and reported, the rest go on
    └── StopRunError             this CRM cannot go on now: its lane stops, state is kept, exit 3
        ├── QuotaExhaustedError      the daily API quota (or the configured share) is spent
        ├── UnreachableError         no connection / timeouts, after the bounded retries (*)
        └── RetriesExhaustedError    429 / 5xx answers outlasted the bounded retries (*)

(*) also `RetryableError`s, so a caller that treats a transient failure as "may have
been applied" still does; the retry loop never retries them a second time.

A `StopRunError` names the system (`salesforce`, `hubspot`, `slack`), the call
that failed and what to do (`system`, `call`, `action`), so the run summary's
`stopped_reason` can tell a user where and why without a traceback. The table
`connectors.errors.ERROR_KINDS` maps each class to its exit code and kind.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Mapping, Sequence

if TYPE_CHECKING:  # annotations only: importing the error classes must not cost a pandas import
    import pandas as pd


class HealthsyncError(Exception):
    """Base of every error healthsync raises on purpose (messages never carry secrets)."""


class ConfigurationError(HealthsyncError):
    """A configuration key or credential is wrong or missing; names the key."""


class CredentialsError(ConfigurationError):
    """The CRM refused the credentials (401, failed login) or a permission/scope is missing: exit 2."""


class AuthenticationError(CredentialsError):
    """The credentials themselves were refused (401, failed login): nothing else can be checked or set up."""


class RetryableError(HealthsyncError):
    """A transient failure worth retrying (429, 5xx, timeout, dropped connection).

    `kind` says which (`network` for no answer at all, `rate_limited`, `server_error`);
    None lets `connectors.retry` tell it from the exception that caused this one.
    """

    def __init__(self, message: str, retry_after: float | None = None, kind: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.kind = kind


class RecordError(HealthsyncError):
    """One record was rejected; the rest of the batch goes on."""


class StopRunError(HealthsyncError):
    """This CRM (or Slack) cannot go on now: its remaining stages are skipped, state is kept (exit 3).

    `system` is the API (`salesforce`, `hubspot`, `slack`), `call` the request that
    failed, `action` what the user can do; all optional, for the run summary's
    `stopped_reason`. `str()` is the full sentence.
    """

    def __init__(self, message: str, *, system: str | None = None, call: str | None = None, action: str | None = None):
        super().__init__(message)
        self.message = message
        self.system = system
        self.call = call
        self.action = action

    def __str__(self) -> str:
        text = self.message
        if self.action and self.action not in text:
            text = f"{text}; {self.action}"
        return text


class QuotaExhaustedError(StopRunError):
    """The API quota (or the configured share of it) is spent: stop, keep state, resume next run."""


class UnreachableError(StopRunError, RetryableError):
    """No answer (connection refused, DNS, timeouts) even after the bounded retries.

    Also a `RetryableError`: code that treats a transient failure as "may have been
    applied" (a Slack post, a write) keeps doing so; `connectors.retry` never retries it again.
    """


class RetriesExhaustedError(StopRunError, RetryableError):
    """The API kept answering 429 / 5xx until the bounded retries ran out (also a `RetryableError`, see above)."""


#: Canonical object names the sync layer asks for.
ObjectName = Literal["accounts", "opportunities", "tickets", "tasks", "owners"]


@dataclass
class Page:
    """One page of pulled records, already mapped to canonical columns.

    `records` has the canonical columns of config/canonical.py (ids prefixed
    `sf:` / `hs:`), plus any extra mapped columns. `deleted_ids` lists records
    deleted or archived in the CRM since the cursor. `cursor` is the value to
    store once this page is safely stored (the high-water mark, capped at the
    run's start; None when the pull is not incremental). `live_ids`, when set,
    lists every live id of the object (see the field).
    """

    object: str
    records: pd.DataFrame
    cursor: datetime | None = None
    deleted_ids: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # record-level problems found while mapping
    # the complete set of live ids of the object in the CRM (a full reconcile, when the CRM can no longer
    # list deletions since the cursor): every replica record not in it was deleted. None = not a reconcile.
    live_ids: list[str] | None = None


@dataclass
class OwnWrites:
    """Our own confirmed writes to one object, for a pull that reads only what others changed.

    `stamps`: canonical record id -> the modification time the CRM gave our last write to it.
    `unchanged(frame, ignore)`: for canonical rows, True where the stored replica already holds
    the same values in every column but `ignore` (columns the connector did not read), i.e.
    nobody else changed the record's mapped fields. A connector skips a record only when its
    modification time is exactly ours AND it is unchanged.
    """

    stamps: Mapping[str, datetime]
    unchanged: Callable[[pd.DataFrame, Sequence[str]], pd.Series]


Outcome = Literal["ok", "failed", "invalid"]


@dataclass
class Change:
    """The fields to write on one CRM record. `record_id` is the canonical id (`sf:001...`)."""

    record_id: str
    fields: dict[str, Any]  # CRM field name -> value


@dataclass
class RecordResult:
    """What happened to one record of a push or task creation.

    outcome: "ok" (the CRM confirmed), "failed" (the CRM rejected it or it could not be
    sent; `retryable` says whether trying again may help), "invalid" (caught before sending).
    """

    record_id: str
    outcome: Outcome
    error_code: str | None = None
    message: str | None = None
    retryable: bool = False
    crm_id: str | None = None  # e.g. the id of a created task
    #: the record's modification time after this write, when the CRM reports it (HubSpot `updatedAt`):
    #: lets the next pull recognise a change that is only our own (see `OwnWrites`)
    stamp: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


#: `RecordResult.error_code` of a task create that was sent but never answered: it may exist.
#: The caller keeps the attempt on record and the next try looks the key up before creating.
MAYBE_CREATED = "NOT_CONFIRMED"


@dataclass
class TaskSpec:
    """A playbook task to create in the CRM, never twice for one `key`.

    `key` is stored in the CRM's idempotency field (`Healthsync_Key__c` /
    `healthsync_key`). Salesforce upserts on it (an existing key returns its
    task). HubSpot cannot make it unique on tasks, so the caller's record of
    attempts is the anchor: `attempted_at` (real UTC time) says a create for this
    key was sent before without a definite answer; the connector then looks the
    key up (after the search index lag) before creating. None: never sent.
    """

    key: str
    account_id: str  # canonical id
    owner_email: str | None
    subject: str
    description: str
    due_at: datetime
    priority: Literal["high", "normal", "low"] = "normal"
    playbook: str = ""
    attempted_at: datetime | None = None


@dataclass
class CheckResult:
    """Outcome of `check()`: problems name the missing field, scope or setting and what to do."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CallStats:
    """API calls made by a connector, for the run summary (`writes.<crm>.api_calls`).

    A lane's write-back and its task creation run at once on the same connector (sync/lanes.py
    `side_by_side`), so a stage does not read its calls off the shared totals: `tally()` counts the
    calls made by the current thread only.
    """

    calls: int = 0
    write_calls: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _local: threading.local = field(default_factory=threading.local, repr=False, compare=False)

    def count(self, *, write: bool = False) -> None:
        """One request sent (and a write, for `write_calls`)."""
        tallies = getattr(self._local, "tallies", None)
        with self._lock:  # a tally may be shared with a thread fetching ahead (share_tallies)
            self.calls += 1
            if write:
                self.write_calls += 1
            for tally in tallies or ():
                tally.calls += 1

    def share_tallies(self) -> Callable[[], None]:
        """A function that makes the thread running it count toward this thread's open tallies
        (a page fetched ahead on another thread is still this stage's call: connectors/read_ahead.py)."""
        tallies = list(getattr(self._local, "tallies", None) or [])

        def adopt() -> None:
            self._local.tallies = list(tallies)

        return adopt

    @contextmanager
    def tally(self) -> Iterator["Tally"]:
        """Count the calls this thread makes inside the block (`.calls`)."""
        tally = Tally()
        tallies = getattr(self._local, "tallies", None)
        if tallies is None:
            tallies = self._local.tallies = []
        tallies.append(tally)
        try:
            yield tally
        finally:
            tallies.remove(tally)


@dataclass
class Tally:
    """Calls one thread made inside a `CallStats.tally()` block."""

    calls: int = 0


class CrmConnector(ABC):
    """Salesforce and HubSpot both implement this; the sync layer uses nothing else."""

    #: "salesforce" or "hubspot"; also the id prefix ("sf", "hs") via `prefix`.
    name: str
    prefix: str

    stats: CallStats

    @abstractmethod
    def pull(self, object: ObjectName, since: datetime | None = None) -> Iterator[Page]:
        """Yield pages of canonical records changed since `since` (all when None).

        A connector whose push reports `RecordResult.stamp` also takes `own_writes: OwnWrites`
        (keyword) and leaves out records whose only change since `since` is our own write.
        """

    @abstractmethod
    def push(self, object: ObjectName, changes: list[Change]) -> list[RecordResult]:
        """Write field changes; exactly one result per change, in the same order."""

    @abstractmethod
    def create_tasks(
        self,
        tasks: list[TaskSpec],
        *,
        before_send: Callable[[list[str]], None] | None = None,
        after_chunk: Callable[[list[RecordResult]], None] | None = None,
    ) -> list[RecordResult]:
        """Create playbook tasks, never twice per key; one result per task, same order.

        `before_send(keys)` is called before each create request leaves (the caller
        records the attempt first), `after_chunk(results)` after each chunk is settled
        (the caller records the task ids before anything else is looked up). A result
        with error_code MAYBE_CREATED was sent and never answered.
        """

    @abstractmethod
    def check(self) -> CheckResult:
        """Credentials, permissions and healthsync fields present, with actionable messages."""

    @abstractmethod
    def setup(self) -> list[str]:
        """Create the healthsync fields/properties; idempotent. Returns what was created."""

    def instance_info(self) -> dict[str, Any]:
        """What the CRM says about this instance, for links to its records (the report).

        Salesforce: {"instance_url"}; HubSpot: {"portal_id", "ui_domain"}. {} when unknown.
        """
        return {}

    def close(self) -> None:  # pragma: no cover - optional
        """Release sessions."""
