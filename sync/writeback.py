"""Write-back: desired CRM field values -> diff against what the CRM confirmed -> only changes are sent.

The basis of the diff is the `pushed` table (the last value each CRM CONFIRMED
per record and field), never a fresh read of the CRM and never what we merely
tried to send (what-users-expect.md, reverse-ETL mechanics 1 and 4):

- a field is sent when its desired value differs from the confirmed one;
- `updated` changes every run, so it never makes a record "changed" by itself:
  it is written only together with another changed field;
- a record in the `failed_records` queue is sent again on every later run, even
  if its values did not change (a lost response may have left the CRM holding
  a value we never saw confirmed), with every field it failed with;
- `pushed` is updated only for records the CRM confirmed, right after each
  batch, so a crash loses at most one batch's bookkeeping (re-sending the same
  values is harmless: updates by id are idempotent);
- records invalid before sending (bad id, value out of range) are reported
  apart from records the CRM rejected, and are not queued;
- a batch rejected whole (the connector raised, or every record failed with the
  same error) is split in halves until each record is accepted or rejected alone;
- records refused UNABLE_TO_LOCK_ROW (another transaction held them) are sent
  again at once in smaller and smaller batches (`LOCK_RETRY_ROUNDS`), then queued;
- a Bulk job still running when the connector's bounded wait ends is kept in
  state (`bulk_jobs`) and collected by a later run (sync/pending_writes.py); its
  records are not planned again until then (never sent twice);
- before each write request to a CRM whose pulls leave out our own changes
  (Salesforce), a guard sweep pulls what others changed since the cursor, so our
  write cannot hide an edit made since the pull (connectors/BEHAVIOR.md);
- the write allowlist: only the fields of `mapping.<crm>.<object>.write` are
  ever written; `assert_allowed` refuses anything else before a request is made.

Value conventions (documented for users in the CRM fields):
    score                0-100, one decimal
    band                 the band name (e.g. "Red", or "Insufficient data")
    trend                "down -12.0 (30d)" (momentum, 30-day delta)
    drivers              plain text, at most 255 characters (Salesforce Text(255))
    confidence           0-1, three decimals
    updated              the run's time (UTC)
    adjusted_probability 0-1, four decimals (a fraction like our canonical `probability`,
                         NOT Salesforce's 0-100 Probability percent)
    expected_arr         currency, two decimals

Dry run: the same plan, nothing sent, nothing stored; each record's fields as
`before -> after` with counts changed / unchanged / invalid.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from contextlib import contextmanager
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from healthsync.config.settings import Settings
from healthsync.connectors.salesforce_fields import max_abs_value
from healthsync.connectors.base import (
    Change,
    ConfigurationError,
    CrmConnector,
    HealthsyncError,
    QuotaExhaustedError,
    RecordResult,
    RetryableError,
    StopRunError,
)
from healthsync.sync.lanes import side_by_side
from healthsync.sync.state import StateStore, dumps, utc_naive

log = logging.getLogger(__name__)

#: canonical object -> mapping section
OBJECT_SECTIONS = {"accounts": "account", "opportunities": "opportunity"}
#: records per push call (Salesforce collections 200, HubSpot batch 100; crm-api-notes 1.6, 2.3)
BATCH_SIZES = {"salesforce": 200, "hubspot": 100}
#: longest drivers text (Salesforce Health_Drivers__c is Text(255))
DRIVERS_MAX = 255
#: the output never compared by itself (see the module docstring)
TIMESTAMP_OUTPUT = "updated"
#: rounds of immediate re-sends, in halving batches, for records refused UNABLE_TO_LOCK_ROW
LOCK_RETRY_ROUNDS = 4
LOCKED = "UNABLE_TO_LOCK_ROW"
#: a push result meaning "in a Bulk job that is still running" (connectors/salesforce.py)
BULK_JOB_PENDING = "BULK_JOB_PENDING"


class WriteNotAllowedError(HealthsyncError):
    """A field outside the mapping's write allowlist was about to be written (a bug, never sent)."""


# ----------------------------------------------------------------------------- desired values


def _round(series: pd.Series, digits: int) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype("float64").round(digits)


def desired_outputs(scores: pd.DataFrame, opportunities: pd.DataFrame, now: datetime) -> dict[str, pd.DataFrame]:
    """canonical object -> frame indexed by record id with one column per healthsync output, plus `crm`."""
    accounts = pd.DataFrame(index=pd.Index(scores["account_id"].astype(str), name="record_id"))
    if len(scores):
        accounts["crm"] = scores["crm"].to_numpy()
        accounts["score"] = _round(scores["score"], 1).to_numpy()
        accounts["band"] = scores["band"].astype("string").to_numpy()
        accounts["trend"] = scores["trend"].astype("string").to_numpy()
        drivers = scores["drivers"].astype("string").fillna("")
        accounts["drivers"] = drivers.str.slice(0, DRIVERS_MAX).to_numpy()
        accounts["confidence"] = _round(scores["confidence"], 3).to_numpy()
        accounts["updated"] = pd.Timestamp(utc_naive(now)).floor("s")
    opps = pd.DataFrame(index=pd.Index(opportunities["opportunity_id"].astype(str) if len(opportunities) else [], name="record_id"))
    if len(opportunities):
        opps["crm"] = opportunities["crm"].to_numpy()
        opps["adjusted_probability"] = _round(opportunities["adjusted_probability"], 4).to_numpy()
        opps["expected_arr"] = _round(opportunities["expected_arr"], 2).to_numpy()
    return {"accounts": accounts, "opportunities": opps}


#: inclusive valid range per numeric output; a value outside it makes the record invalid (never sent).
#: expected_arr is bounded by its field's digits (connectors/salesforce_fields.py: Currency(16,2)).
RANGES = {"score": (0.0, 100.0), "confidence": (0.0, 1.0), "adjusted_probability": (0.0, 1.0),
          "expected_arr": (0.0, (max_abs_value("expected_arr") or math.inf) - 0.01)}


def _plain(value: Any) -> Any:
    """A value to send and to store: NaN/NA -> None, numpy -> python, timestamps -> datetime."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if hasattr(value, "item") and not isinstance(value, str):
        return _plain(value.item())
    return value


# ----------------------------------------------------------------------------- plan


@dataclass
class RecordPlan:
    """One record to write: `fields` = CRM field -> value to send; `before` = CRM field -> last confirmed value."""

    crm: str
    object: str
    record_id: str
    fields: dict[str, Any]
    before: dict[str, Any]
    retry: bool = False  # in the failed-records queue: sent even if unchanged

    def diff(self) -> dict[str, dict[str, Any]]:
        return {f: {"before": self.before.get(f), "after": _json_safe(v)} for f, v in self.fields.items()}


@dataclass
class InvalidRecord:
    crm: str
    object: str
    record_id: str
    error_code: str
    message: str

    def to_json(self) -> dict:
        return {"crm": self.crm, "object": self.object, "record_id": self.record_id, "error_code": self.error_code, "message": self.message}


@dataclass
class WritePlan:
    records: list[RecordPlan] = field(default_factory=list)
    invalid: list[InvalidRecord] = field(default_factory=list)
    unchanged: dict[tuple[str, str], int] = field(default_factory=dict)
    stale: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # queued records no longer written
    pending: dict[tuple[str, str], int] = field(default_factory=dict)  # in a Bulk job still running: not planned

    def counts(self) -> dict[str, int]:
        return {"changed": len(self.records), "unchanged": sum(self.unchanged.values()), "invalid": len(self.invalid)}

    def to_json(self) -> dict:
        """The dry-run answer: counts and, per record, each field `before -> after`."""
        per_crm: dict[str, dict[str, int]] = {}
        for r in self.records:
            per_crm.setdefault(r.crm, {"changed": 0, "unchanged": 0, "invalid": 0})["changed"] += 1
        for (crm, _), n in self.unchanged.items():
            per_crm.setdefault(crm, {"changed": 0, "unchanged": 0, "invalid": 0})["unchanged"] += n
        for r in self.invalid:
            per_crm.setdefault(r.crm, {"changed": 0, "unchanged": 0, "invalid": 0})["invalid"] += 1
        return {
            "counts": self.counts(),
            "by_crm": per_crm,
            "records": [
                {"crm": r.crm, "object": r.object, "record_id": r.record_id, "retry": r.retry, "fields": r.diff()} for r in self.records
            ],
            "invalid": [r.to_json() for r in self.invalid],
        }


def _json_safe(value: Any) -> Any:
    return json.loads(dumps(value))


def write_mapping(settings: Settings, crm: str, object: str) -> dict[str, str]:
    """healthsync output -> CRM field: the write allowlist of one CRM object."""
    section = getattr(getattr(settings.mapping, crm), OBJECT_SECTIONS[object])
    return dict(section.write)


def assert_allowed(settings: Settings, crm: str, object: str, fields: dict[str, Any]) -> None:
    """Refuse (before any request) a field outside `mapping.<crm>.<object>.write`."""
    allowed = set(write_mapping(settings, crm, object).values())
    outside = sorted(set(fields) - allowed)
    if outside:
        raise WriteNotAllowedError(
            f"refusing to write {', '.join(outside)} to {crm} {object}: not in mapping.{crm}.{OBJECT_SECTIONS[object]}.write"
        )


class ConfirmedPrefetch:
    """Each CRM's confirmed values (`StateStore.pushed_values`), read beside the pull instead of after it.

    The write plan compares every desired value with what the CRM confirmed: at 100,000 accounts per
    CRM that is ~3M stored (record, field) values, ~6 s of reading between the scoring and the first write.
    They change only when a write is confirmed: a Bulk job collected at the start of the CRM's pull
    (sync/pending_writes.py), or the write-back after the plan. So once a lane has collected its jobs and
    its replica moved (the run will rescore and plan, not reuse the memo), its values are read on a
    thread of their own while the other pulls go on; `take` waits for them (or returns None if never
    started: the plan reads them itself). Read-only; never started for a run that plans nothing.
    """

    def __init__(self, store: StateStore, settings: Settings):
        self.store, self.settings = store, settings
        self._threads: dict[str, threading.Thread] = {}
        self._values: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def start(self, crm: str) -> None:
        with self._lock:
            if crm in self._threads:
                return
            objects = [obj for obj in OBJECT_SECTIONS if write_mapping(self.settings, crm, obj)]

            def read() -> None:
                for obj in objects:
                    try:
                        values = self.store.pushed_values(crm, obj)
                    except Exception:  # noqa: BLE001 - a prefetch that failed is a prefetch not made: the plan reads
                        log.warning("confirmed values of %s %s not read ahead", crm, obj, exc_info=True)
                        return
                    with self._lock:
                        self._values[(crm, obj)] = values

            thread = self._threads[crm] = threading.Thread(target=read, name=f"confirmed-{crm}", daemon=True)
        thread.start()

    def take(self, crm: str, obj: str) -> dict[str, dict[str, str]] | None:
        thread = self._threads.get(crm)
        if thread is None:
            return None
        thread.join()
        with self._lock:
            return self._values.pop((crm, obj), None)


def plan_writes(store: StateStore, settings: Settings, desired: dict[str, pd.DataFrame], crms: list[str],
                prefetched: ConfirmedPrefetch | None = None) -> WritePlan:
    """Diff desired values against what each CRM confirmed; queue retries; catch invalid records. Reads only.

    `prefetched`: the confirmed values, when they were read beside the pull (`ConfirmedPrefetch`)."""
    plan = WritePlan()
    for crm in crms:
        prefix = {"salesforce": "sf:", "hubspot": "hs:"}.get(crm, f"{crm}:")
        for obj, frame in desired.items():
            mapping = write_mapping(settings, crm, obj)
            if not mapping:
                continue
            rows = frame[frame["crm"] == crm] if "crm" in frame.columns else frame.iloc[0:0]
            confirmed = prefetched.take(crm, obj) if prefetched is not None else None
            if confirmed is None:
                confirmed = store.pushed_values(crm, obj)
            queue = store.failed_queue(crm, obj)
            in_flight = store.pending_bulk_records(crm, obj)
            outputs = [o for o in mapping if o in rows.columns]
            compared = [o for o in outputs if o != TIMESTAMP_OUTPUT]
            values = rows[outputs].astype(object).where(rows[outputs].notna(), None)
            # the common case, vectorised per column: a record whose every compared value equals what the CRM
            # confirmed, and that nothing else concerns (retry queue, pending Bulk job, duplicate, bad id, out of
            # range), is unchanged; only the others go through the per-record checks below
            settled = _settled(values, prefix, confirmed, {rid for (_, _, rid) in queue}, in_flight,
                               [(o, mapping[o]) for o in compared])
            seen: set[str] = set(values.index[settled])
            unchanged = int(settled.sum())
            rest = values[~settled]
            for record_id, record in zip(rest.index, rest.to_dict("records")):
                if record_id in seen:
                    plan.invalid.append(InvalidRecord(crm, obj, record_id, "DUPLICATE_ID", "the record appears twice in the scores"))
                    continue
                seen.add(record_id)
                if not record_id.startswith(prefix) or len(record_id) <= len(prefix):
                    plan.invalid.append(InvalidRecord(crm, obj, record_id, "INVALID_ID", f"not a {crm} record id"))
                    continue
                if record_id in in_flight:  # a Bulk job still carries it: its outcome is collected, never resent
                    plan.pending[(crm, obj)] = plan.pending.get((crm, obj), 0) + 1
                    continue
                problem = _out_of_range(record)
                if problem:
                    plan.invalid.append(InvalidRecord(crm, obj, record_id, "OUT_OF_RANGE", problem))
                    continue
                before = confirmed.get(record_id, {})
                send: dict[str, Any] = {}
                for output in compared:
                    crm_field = mapping[output]
                    value = _plain(record[output])
                    if before.get(crm_field) != dumps(value):
                        send[crm_field] = value
                queued = queue.get((crm, obj, record_id))
                if queued is not None:
                    retry_fields = set(json.loads(queued["fields_json"] or "{}"))
                    for output in compared:
                        if mapping[output] in retry_fields and mapping[output] not in send:
                            send[mapping[output]] = _plain(record[output])
                if not send and queued is None:
                    unchanged += 1
                    continue
                if TIMESTAMP_OUTPUT in mapping and TIMESTAMP_OUTPUT in rows.columns:
                    send[mapping[TIMESTAMP_OUTPUT]] = _plain(record[TIMESTAMP_OUTPUT])
                if not send:
                    unchanged += 1
                    continue
                assert_allowed(settings, crm, obj, send)
                plan.records.append(
                    RecordPlan(crm, obj, record_id, send, {f: _loads(before.get(f)) for f in send}, retry=queued is not None)
                )
            plan.unchanged[(crm, obj)] = unchanged
            stale = [rid for (_, _, rid) in queue if rid not in seen]
            if stale:
                plan.stale[(crm, obj)] = stale
    return plan


def _canonical(column: pd.Series) -> list[str]:
    """`dumps(_plain(v))` of every value of a column, as the per-record diff computes it; a float is its
    `repr` (what JSON writes for it), any other value is encoded once per distinct value."""
    cache: dict[tuple, str] = {}
    out: list[str] = []
    for value in column.tolist():
        kind = type(value)
        if kind is float:
            out.append(repr(value) if math.isfinite(value) else "null")
            continue
        if value is None:
            out.append("null")
            continue
        try:
            text = cache.get((kind, value))
        except TypeError:  # unhashable (a list): encoded each time
            out.append(dumps(_plain(value)))
            continue
        if text is None:
            text = cache[(kind, value)] = dumps(_plain(value))
        out.append(text)
    return out


def _settled(values: pd.DataFrame, prefix: str, confirmed: dict[str, dict[str, str]], queued: set[str], in_flight: set[str],
             compared: list[tuple[str, str]]) -> "np.ndarray":
    """Per row of `values` (indexed by record id): True when the record needs no write and no check at all."""
    ids = values.index.tolist()
    n = len(ids)
    ok = np.fromiter((isinstance(r, str) and len(r) > len(prefix) and r.startswith(prefix)
                      and r not in queued and r not in in_flight for r in ids), dtype=bool, count=n)
    ok &= ~values.index.duplicated(keep=False)
    for output, (low, high) in RANGES.items():
        if output in values.columns:
            ok &= ~np.fromiter((_outside(v, low, high) for v in values[output].tolist()), dtype=bool, count=n)
    for output, crm_field in compared:
        before = [confirmed[r].get(crm_field) if r in confirmed else None for r in ids]
        ok &= np.fromiter((a == b for a, b in zip(_canonical(values[output]), before)), dtype=bool, count=n)
    return ok


def _outside(value: Any, low: float, high: float) -> bool:
    """`_out_of_range` for one value (None is never out of range)."""
    value = _plain(value)
    if value is None:
        return False
    return not isinstance(value, (int, float)) or not (low <= float(value) <= high)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _out_of_range(record: dict) -> str | None:
    for output, (low, high) in RANGES.items():
        value = _plain(record.get(output))
        if value is None:
            continue
        if not isinstance(value, (int, float)) or not (low <= float(value) <= high):
            return f"{output} {value!r} is outside [{low:g}, {high:g}]"
    return None


def _drop_from_queue(store: StateStore, crm: str, object: str, ids: list[str]) -> None:
    """Records no longer desired (deleted, closed, gone from the replica) leave the retry queue."""
    from sqlalchemy import delete

    from healthsync.sync.state import failed_records

    with store.begin() as conn:
        conn.execute(
            delete(failed_records).where(
                failed_records.c.crm == crm, failed_records.c.object == object, failed_records.c.record_id.in_(ids)
            )
        )


# ----------------------------------------------------------------------------- execute


@dataclass
class CrmWriteReport:
    """Outcome of one CRM's write-back (the run summary's `writes.<crm>`)."""

    records_changed: int = 0  # records the CRM confirmed
    fields_written: int = 0
    api_calls: int = 0
    failed: int = 0
    invalid: int = 0
    unchanged: int = 0
    retried: int = 0
    pending: int = 0  # in a Bulk job still running when the bounded wait ended (collected next run)
    by_object: dict[str, int] = field(default_factory=dict)  # records confirmed per object (accounts, opportunities)
    errors: list[str] = field(default_factory=list)
    written: dict[str, dict[str, Any]] = field(default_factory=dict)  # record_id -> fields confirmed (not in JSON)

    def to_json(self) -> dict:
        return {
            "records_changed": self.records_changed,
            "fields_written": self.fields_written,
            "api_calls": self.api_calls,
            "failed": self.failed,
            "invalid": self.invalid,
            "unchanged": self.unchanged,
            "retried": self.retried,
            "pending": self.pending,
            "by_object": dict(self.by_object),
        }


def execute_plan(
    store: StateStore,
    settings: Settings,
    plan: WritePlan,
    connectors: dict[str, CrmConnector],
    *,
    run_id: str,
    now: datetime,
    hooks: Callable[[str], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, CrmWriteReport]:
    """Send the plan batch by batch; after each batch store what was confirmed and queue what failed.

    A StopRunError (quota, auth, CRM unreachable) stops at once, after storing the
    outcome of the batch in flight; it propagates with the reports so far on `.reports`.
    """
    reports = {crm: CrmWriteReport() for crm in connectors}
    for (crm, obj), ids in plan.stale.items():
        _drop_from_queue(store, crm, obj, ids)
    for inv in plan.invalid:
        if inv.crm in reports:
            reports[inv.crm].invalid += 1
            reports[inv.crm].errors.append(f"{inv.crm} {inv.object} {inv.record_id}: invalid ({inv.error_code}): {inv.message}")
    for (crm, _), n in plan.unchanged.items():
        if crm in reports:
            reports[crm].unchanged += n
    groups: dict[str, dict[str, list[RecordPlan]]] = {}
    for r in plan.records:
        groups.setdefault(r.crm, {}).setdefault(r.object, []).append(r)
    try:
        for crm, by_object in groups.items():
            connector = connectors.get(crm)
            if connector is None:
                continue
            with _guarded(store, connector, now):
                _push_objects(store, settings, connector, crm, by_object, reports[crm], run_id, now, hooks, on_batch)
    except StopRunError as exc:
        exc.reports = reports
        raise
    return reports


def sends_bulk_jobs(connector: CrmConnector, records_per_object: Iterable[int]) -> bool:
    """Whether a write-back of so many records per object goes (in part) as Bulk API 2.0 jobs: more records of
    an object than the connector's `bulk_threshold` (Salesforce; a connector without one never does)."""
    threshold = getattr(connector, "bulk_threshold", None)
    return bool(threshold) and any(n > threshold for n in records_per_object)


def _push_objects(store, settings, connector, crm, by_object: dict[str, list[RecordPlan]], report: CrmWriteReport, run_id, now,
                  hooks, on_batch) -> None:
    """Push one CRM's objects: one after the other, or side by side when some go as Bulk API 2.0 jobs.

    A Bulk job is mostly waiting (status polls back off from `bulk_poll_s`), so the accounts' and the
    opportunities' jobs run at once (a thread each, sync/lanes.py `side_by_side`); each object keeps
    its own batches, guard sweep and settling. A stop in one ends its own object; the first is raised
    once the other has ended (its confirmed records are stored either way).
    """
    lock = threading.Lock()
    if len(by_object) < 2 or not sends_bulk_jobs(connector, [len(records) for records in by_object.values()]):
        for obj, records in by_object.items():
            _push_group(store, settings, connector, crm, obj, records, report, run_id, now, hooks, on_batch, lock)
        return
    stops: list[StopRunError] = []

    def pusher(obj: str, records: list[RecordPlan]) -> Callable[[], None]:
        def push() -> None:
            try:
                _push_group(store, settings, connector, crm, obj, records, report, run_id, now, hooks, on_batch, lock)
            except StopRunError as exc:
                stops.append(exc)
        return push

    side_by_side(*[pusher(obj, records) for obj, records in by_object.items()])
    if stops:
        raise stops[0]


@contextmanager
def _guarded(store: StateStore, connector: CrmConnector, now: datetime):
    """Install the guard sweep on a connector that leaves its own changes out of pulls (Salesforce).

    Before each write request the connector calls it: a pull of what OTHERS changed since the
    cursor (records only). Our write sets LastModifiedById to us, which would hide from the next
    filtered pull an edit someone made between our pull and this write; the sweep reads that edit
    first. The hidden window shrinks to one request in flight (connectors/BEHAVIOR.md).
    """
    if not hasattr(connector, "before_write") or not getattr(connector, "exclude_own_changes", False):
        yield
        return
    from healthsync.sync.pull import pull_object

    def sweep(object: str) -> None:
        # without a cursor nothing was pulled incrementally yet: the next pull reads everything anyway
        if object in OBJECT_SECTIONS and store.cursor(connector.name, object) is not None:
            pull_object(store, connector, object, now=now, deletions=False)

    connector.before_write = sweep
    try:
        yield
    finally:
        connector.before_write = None


def _push_group(store, settings, connector, crm, obj, records: list[RecordPlan], report: CrmWriteReport, run_id, now,
                hooks, on_batch, lock: threading.Lock) -> None:
    """Push one (crm, object) group batch by batch; after each batch store what was confirmed and queue what failed.

    `lock` guards `report` (another object's group may be settling into it at the same time); the
    calls counted are this thread's own (`CallStats.tally`): the lane's tasks share the connector.
    """
    size = BATCH_SIZES.get(crm, 100)
    threshold = getattr(connector, "bulk_threshold", None)
    if threshold and len(records) > threshold:
        size = len(records)  # one push call: the connector switches to Bulk API 2.0
    for start in range(0, len(records), size):
        batch = records[start : start + size]
        with connector.stats.tally() as calls:
            try:
                changes = [Change(r.record_id, dict(r.fields)) for r in batch]
                results = _retry_locked(connector, obj, changes, _push_split(connector, obj, changes, settings, crm), settings, crm)
            except StopRunError as exc:
                results = getattr(exc, "results", None) or [
                    RecordResult(r.record_id, "failed", "NOT_SENT", str(exc), True) for r in batch
                ]
                with lock:
                    _settle(store, report, crm, obj, batch, results, run_id, now)
                    report.api_calls += calls.calls
                raise
        with lock:
            report.api_calls += calls.calls
            _settle(store, report, crm, obj, batch, results, run_id, now)
        if on_batch:
            on_batch(len(batch))
        if hooks:
            hooks("after_push_batch")


def _settle(store, report: CrmWriteReport, crm, object, batch: list[RecordPlan], results: list[RecordResult], run_id, now) -> None:
    """Store confirmed values and queue failures for one batch (the record's own transaction per kind)."""
    confirmed: dict[str, dict[str, str]] = {}
    stamps: dict[str, datetime] = {}  # the CRM's modification time of each write: the next pull skips our own change
    failures: list[dict] = []
    pending: dict[str, dict[str, dict]] = {}
    for plan, result in zip(batch, results):
        if plan.retry:
            report.retried += 1
        if result.outcome == "failed" and result.error_code == BULK_JOB_PENDING and result.crm_id:
            # still running after the bounded wait: remembered, collected by a later run, never resent
            pending.setdefault(result.crm_id, {})[plan.record_id] = {f: _json_safe(v) for f, v in plan.fields.items()}
            report.pending += 1
            continue
        if result.outcome == "ok":
            confirmed[plan.record_id] = {f: dumps(v) for f, v in plan.fields.items()}
            if result.stamp is not None:
                stamps[plan.record_id] = result.stamp
            report.records_changed += 1
            report.by_object[object] = report.by_object.get(object, 0) + 1
            report.fields_written += len(plan.fields)
            report.written[plan.record_id] = dict(plan.fields)
        elif result.outcome == "invalid":
            report.invalid += 1
            report.errors.append(f"{crm} {object} {plan.record_id}: invalid ({result.error_code}): {result.message}")
        else:
            report.failed += 1
            report.errors.append(f"{crm} {object} {plan.record_id}: failed ({result.error_code}): {result.message}")
            failures.append(
                {
                    "record_id": plan.record_id,
                    "fields": {f: _json_safe(v) for f, v in plan.fields.items()},
                    "error_code": result.error_code,
                    "message": result.message,
                    "retryable": result.retryable,
                }
            )
    store.record_confirmed(crm, object, confirmed, run_id, now)
    store.record_own_writes(crm, object, stamps)
    store.record_failed(crm, object, failures, run_id, now)
    for job_id, records in pending.items():
        store.add_bulk_job(crm, object, job_id, records, run_id, now)


def _retry_locked(connector, object, changes: list[Change], results: list[RecordResult], settings, crm) -> list[RecordResult]:
    """Send records refused UNABLE_TO_LOCK_ROW again at once, in halving batches; what stays locked is queued.

    Lock contention (another transaction, a trigger, a roll-up on the parent) is short-lived and
    grows with the batch size, so Salesforce's advice is to retry with smaller batches.
    """
    results = list(results)
    size = len(changes)
    for round_ in range(LOCK_RETRY_ROUNDS):
        locked = [i for i, r in enumerate(results) if r.outcome == "failed" and r.error_code == LOCKED]
        if not locked:
            break
        size = max(1, min(size, len(locked)) // 2)
        time.sleep(min(1.0, 0.05 * 2**round_))
        for start in range(0, len(locked), size):
            idx = locked[start : start + size]
            try:
                again = _push_split(connector, object, [changes[i] for i in idx], settings, crm)
            except StopRunError as exc:
                done = getattr(exc, "results", None) or [RecordResult(changes[i].record_id, "failed", "NOT_SENT", str(exc), True) for i in idx]
                for i, r in zip(idx, done):
                    results[i] = r
                exc.results = results
                raise
            for i, r in zip(idx, again):
                results[i] = r
    return results


def _whole_batch_rejected(results: list[RecordResult]) -> bool:
    """Every record failed with one and the same error: most likely one bad record sank the batch."""
    if len(results) < 2 or any(r.outcome != "failed" for r in results):
        return False
    return len({(r.error_code, r.message) for r in results}) == 1 and not results[0].retryable


def _push_split(connector: CrmConnector, object: str, changes: list[Change], settings: Settings, crm: str) -> list[RecordResult]:
    """push(), splitting a batch rejected whole in halves until each record stands alone."""
    for change in changes:
        assert_allowed(settings, crm, object, change.fields)
    try:
        results = connector.push(object, changes)
    except (StopRunError, ConfigurationError):
        raise
    except RetryableError as exc:
        # the connector already retried within its bounds: the CRM is unreachable now
        stop = StopRunError(f"{crm} unreachable while writing {object}: {exc}")
        stop.results = [RecordResult(c.record_id, "failed", "UNREACHABLE", str(exc), True) for c in changes]
        raise stop from None
    except HealthsyncError as exc:
        if len(changes) == 1:
            return [RecordResult(changes[0].record_id, "failed", "BATCH_REJECTED", str(exc), False)]
        return _split(connector, object, changes, settings, crm)
    if len(results) != len(changes):
        raise StopRunError(f"{crm} push of {object} returned {len(results)} results for {len(changes)} records")
    if _whole_batch_rejected(results):
        return _split(connector, object, changes, settings, crm)
    return results


def _split(connector, object, changes, settings, crm) -> list[RecordResult]:
    mid = len(changes) // 2
    try:
        left = _push_split(connector, object, changes[:mid], settings, crm)
    except StopRunError as exc:
        done = getattr(exc, "results", None) or [RecordResult(c.record_id, "failed", "NOT_SENT", str(exc), True) for c in changes[:mid]]
        exc.results = done + [RecordResult(c.record_id, "failed", "NOT_SENT", "not sent (the run stopped)", True) for c in changes[mid:]]
        raise
    try:
        right = _push_split(connector, object, changes[mid:], settings, crm)
    except StopRunError as exc:
        rest = getattr(exc, "results", None) or [RecordResult(c.record_id, "failed", "NOT_SENT", str(exc), True) for c in changes[mid:]]
        exc.results = left + rest
        raise
    return left + right
