"""HubSpot connector on hubspot-api-client: list backfill, windowed search, batch push, idempotent tasks.

Wire facts are in shared/reference/crm-api-notes.md section 2. Bodies are passed
to the SDK as plain dicts (it serialises them as-is) and responses are turned
into dicts with `.to_dict()`, so no HubSpot model class leaks out of here.

Pacing is proactive (`_Pacer`): a sliding window keeps every connector under
the tier's 10-second budget (100 starter / 190 professional, crm-api-notes 2.8)
and search under 5 requests per second (2.4); a 429 is then rare and, when it
comes, is retried by the one retry policy honouring `Retry-After`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import pandas as pd
import urllib3
from hubspot import HubSpot

from healthsync.config.canonical import SPECS, empty_frame
from healthsync.connectors import crm_values
from healthsync.connectors.base import (
    CallStats,
    Change,
    CheckResult,
    ConfigurationError,
    CredentialsError,
    CrmConnector,
    HealthsyncError,
    Page,
    QuotaExhaustedError,
    RecordResult,
    RetryableError,
    StopRunError,
    TaskSpec,
)
from healthsync.connectors.mapping import SECTIONS, finish, section, strip_prefix, translate_values
from healthsync.connectors.redact import Redactor, reveal
from healthsync.connectors.retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)

#: 10-second request budget per tier (crm-api-notes 2.8); we keep a small margin below it.
TIER_LIMITS = {"free": 100, "starter": 100, "professional": 190, "enterprise": 190}
BATCH_SIZE = 100  # batch endpoints take 100 inputs (2.3)
LIST_LIMIT = 100  # list paging maximum (2.2)
SEARCH_LIMIT = 200  # search page maximum (2.4)
SEARCH_CAP = 10_000  # search results per query; paging beyond answers 400 (2.4)
SEARCH_PER_SECOND = 5
PAGE_RECORDS = 2000  # rows per yielded Page (API pages are regrouped; see _regroup)
TASK_TO_COMPANY = 192  # AssociationType.TASK_TO_COMPANY (2.6)
_HS_ID = re.compile(r"^\d+$")

#: HubSpot objects per canonical object, and the properties read for tasks.
_TASK_READ = {
    "task_id": "hs_object_id",
    "status": "hs_task_status",
    "created_at": "hs_createdate",
    "due_at": "hs_timestamp",
    "completed_at": "hs_task_completion_date",
}

#: The healthsync properties `setup()` creates and `check()` expects (issue 4).
HEALTHSYNC_PROPERTIES: dict[str, list[dict]] = {
    "companies": [
        {"name": "health_score", "label": "Health score", "type": "number", "fieldType": "number"},
        {"name": "health_band", "label": "Health band", "type": "string", "fieldType": "text"},
        {"name": "health_trend", "label": "Health trend", "type": "string", "fieldType": "text"},
        {"name": "health_drivers", "label": "Health drivers", "type": "string", "fieldType": "textarea"},
        {"name": "health_confidence", "label": "Health confidence", "type": "number", "fieldType": "number"},
        {"name": "health_updated", "label": "Health updated", "type": "datetime", "fieldType": "date"},
    ],
    "deals": [
        {"name": "health_adjusted_probability", "label": "Health adjusted probability", "type": "number", "fieldType": "number"},
        {"name": "health_expected_arr", "label": "Health expected ARR", "type": "number", "fieldType": "number"},
    ],
    "tasks": [
        {"name": "healthsync_key", "label": "Healthsync key", "type": "string", "fieldType": "text", "hasUniqueValue": True},
    ],
}
GROUP = {"name": "healthsync", "label": "Healthsync", "displayOrder": -1}


class _Pacer:
    """Sliding-window budget shared by every connector using the same HubSpot account (token).

    `wait()` blocks until one more request fits in the window; the windows are
    kept per (host, token) so a new connector in the same process inherits the
    history of the previous one.
    """

    _registry: dict[tuple[str, str, str], "_Pacer"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, budget: int, window: float, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.budget = budget
        self.window = window
        self.sent: deque[float] = deque()
        self.lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def shared(cls, key: tuple[str, str, str], budget: int, window: float) -> "_Pacer":
        with cls._registry_lock:
            pacer = cls._registry.get(key)
            if pacer is None or pacer.budget != budget:
                pacer = cls._registry[key] = cls(budget, window)
            return pacer

    def wait(self) -> None:
        with self.lock:
            while True:
                now = self._clock()
                while self.sent and now - self.sent[0] >= self.window:
                    self.sent.popleft()
                if len(self.sent) < self.budget:
                    self.sent.append(now)
                    return
                self._sleep(max(0.001, self.window - (now - self.sent[0])))


class HubSpotApiError(HealthsyncError):
    """A non-retryable HubSpot answer the connector handles itself (409 on setup, 400 to split a batch)."""

    def __init__(self, message: str, status: int, category: str | None, body: dict | None):
        super().__init__(message)
        self.status = status
        self.category = category
        self.body = body or {}


def _ms(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return str(int(value.timestamp() * 1000))


def _parse_time(value: Any) -> pd.Timestamp | None:
    """HubSpot dates arrive as ISO strings or epoch milliseconds (BEHAVIOR.md); both are accepted."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        ts = pd.Timestamp(value)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    text = str(value)
    if text.isdigit():
        return pd.Timestamp(int(text), unit="ms", tz="UTC")
    try:  # pd.Timestamp parses ISO text ~100x faster than pd.to_datetime's format guessing
        ts = pd.Timestamp(text)
    except (ValueError, TypeError):
        ts = pd.to_datetime(text, utc=True, errors="coerce")
        return None if pd.isna(ts) else ts
    if pd.isna(ts):
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _prop_value(value: Any) -> str | None:
    """A property value as HubSpot wants it (strings; datetimes as epoch ms; NaN -> empty)."""
    if value is None:
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    if isinstance(value, (pd.Timestamp, datetime)):
        return _ms(pd.Timestamp(value).to_pydatetime())
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class HubSpotConnector(CrmConnector):
    """HubSpot through hubspot-api-client; see the module docstring."""

    name = "hubspot"
    prefix = "hs"

    def __init__(
        self,
        access_token: Any,
        *,
        host: str | None = None,
        mapping: dict | None = None,
        tier: str = "professional",
        lookback_minutes: float = 5,
        timeout: float = 30,
        retry: RetryPolicy | None = None,
        search_cap: int = SEARCH_CAP,
        identity_property: str = "salesforce_account_id",
    ):
        token = reveal(access_token)
        if not token:
            raise ConfigurationError("HubSpot needs a private app token (HEALTHSYNC__HUBSPOT__ACCESS_TOKEN)")
        if tier not in TIER_LIMITS:
            raise ConfigurationError(f"sources.hubspot.tier must be one of {', '.join(TIER_LIMITS)} (got {tier!r})")
        if not mapping:
            raise ConfigurationError("mapping.hubspot is missing from the configuration")
        self.mapping = mapping
        self.tier = tier
        self.lookback = timedelta(minutes=float(lookback_minutes))
        self.retry = retry or RetryPolicy(timeout=timeout)
        self.timeout = self.retry.timeout if retry else timeout
        self.search_cap = int(search_cap)
        self.identity_property = identity_property  # config mapping.identity.hubspot_salesforce_id_property
        self.stats = CallStats()
        self.host = (host or "https://api.hubapi.com").rstrip("/")
        self._redact = Redactor([token])
        no_retry = urllib3.util.Retry(total=0, connect=0, read=0, redirect=0, status=0, raise_on_status=False)
        self._client = HubSpot(access_token=token, host=self.host, base_url=self.host, retry=no_retry)
        key = (self.host, tier, str(hash(token)))
        self._burst = _Pacer.shared(key + ("burst",), TIER_LIMITS[tier] - 10, 10.0)
        self._search_pacer = _Pacer.shared(key + ("search",), SEARCH_PER_SECOND, 1.1)
        self._owners: dict[str, str] = {}
        self._owner_ids: dict[str, str] = {}
        self._properties: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ calls

    def _call(self, fn: Callable[..., Any], *, what: str, search: bool = False, write: bool = False, retry: bool = True) -> Any:
        """One SDK call: paced, timed out, translated to the connectors.base tree, retried by the policy."""

        def attempt():
            if search:
                self._search_pacer.wait()
            self._burst.wait()
            self.stats.calls += 1
            if write:
                self.stats.write_calls += 1
            try:
                result = fn(_request_timeout=self.timeout)
            except urllib3.exceptions.HTTPError as exc:
                raise RetryableError(self._redact(f"HubSpot {what}: {type(exc).__name__}")) from None
            except HealthsyncError:
                raise
            except Exception as exc:  # each SDK package has its own ApiException class (2.1)
                status = getattr(exc, "status", None)
                if status is None:
                    raise
                self._raise_for(exc, status, what)
            return result.to_dict() if hasattr(result, "to_dict") else result

        if not retry:
            return attempt()
        return self.retry.call(attempt, stats=self.stats, what=f"HubSpot {what}")

    def _raise_for(self, exc: Exception, status: int, what: str):
        try:
            body = json.loads(getattr(exc, "body", None) or "{}")
        except (TypeError, ValueError):
            body = {}
        if not isinstance(body, dict):
            body = {}
        message = self._redact(body.get("message") or getattr(exc, "reason", "") or f"HTTP {status}")
        headers = getattr(exc, "headers", None) or {}
        if status == 429:
            if body.get("policyName") == "DAILY":
                raise QuotaExhaustedError(f"HubSpot daily API limit reached ({what}); resume next run") from None
            retry_after = parse_retry_after(headers.get("Retry-After"))
            if retry_after is None and headers.get("X-HubSpot-RateLimit-Interval-Milliseconds"):
                retry_after = None  # fall back to backoff; the window length alone is not a wait time
            raise RetryableError(f"HubSpot {what}: rate limited ({body.get('policyName', '429')})", retry_after=retry_after) from None
        if status in RETRYABLE_STATUSES or status >= 500 or status == 0:
            raise RetryableError(
                f"HubSpot {what}: HTTP {status}", retry_after=parse_retry_after(headers.get("Retry-After"))
            ) from None
        if status == 401:
            raise CredentialsError(
                "HubSpot rejected the access token (check HEALTHSYNC__HUBSPOT__ACCESS_TOKEN, the private app may be revoked)"
            ) from None
        if status == 403:
            raise CredentialsError(f"HubSpot {what}: permission denied: {message} (add the missing scope to the private app)") from None
        raise HubSpotApiError(f"HubSpot {what}: HTTP {status}: {message}", status, body.get("category"), body) from None

    # ------------------------------------------------------------------ owners and properties

    def _load_owners(self) -> None:
        after = None
        while True:
            page = self._call(
                lambda after=after, **kw: self._client.crm.owners.owners_api.get_page(limit=100, after=after, **kw),
                what="list owners",
            )
            for o in page.get("results") or []:
                if o.get("email"):
                    self._owners[str(o["id"])] = o["email"]
                    self._owner_ids[o["email"].lower()] = str(o["id"])
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return

    def _property_names(self, object_type: str) -> set[str]:
        if object_type not in self._properties:
            reply = self._call(
                lambda **kw: self._client.crm.properties.core_api.get_all(object_type=object_type, **kw),
                what=f"list {object_type} properties",
            )
            self._properties[object_type] = {p["name"] for p in reply.get("results") or []}
        return self._properties[object_type]

    # ------------------------------------------------------------------ pull

    def _read_spec(self, object: str) -> tuple[str, dict, str | None]:
        sec = section(self.mapping, object, "hubspot")
        object_type = sec.get("object") or {"tasks": "tasks"}[object]
        if object == "tasks":
            read = dict(_TASK_READ)
            read["key"] = sec.get("key_field") or "healthsync_key"
            return object_type, read, "companies"
        read = dict(sec.get("read") or {})
        if object == "accounts":  # extra columns for cross-CRM identity (connectors/identity.py)
            read.setdefault("domain", "domain")
            read.setdefault(self.identity_property, self.identity_property)
        assoc = None
        for column, prop in list(read.items()):
            if prop.startswith("associations."):
                assoc = prop.split(".", 1)[1]
        return object_type, read, assoc

    def pull(self, object: str, since: datetime | None = None) -> Iterator[Page]:
        """Full backfill by list paging (since None), else search on hs_lastmodifieddate >= since - lookback.

        The search is windowed: before a window reaches the 10,000-result cap it
        restarts from the last modification time seen (records sharing that time
        are read again and de-duplicated by id). Archived records since the
        cursor come first, in their own page.
        """
        run_start = datetime.now(timezone.utc)
        if object == "owners":
            self._load_owners()
            yield Page("owners", pd.DataFrame({"owner_id": [f"hs:{i}" for i in self._owners], "email": list(self._owners.values())}))
            return
        object_type, read, assoc = self._read_spec(object)
        props = sorted({p for p in read.values() if not p.startswith("associations.")} | {"hs_lastmodifieddate"})
        existing = self._property_names(object_type)
        problems = [
            f"mapping.hubspot.{SECTIONS[object]}.read.{col}: property {p} not found on {object_type}; column left empty"
            for col, p in read.items()
            if not p.startswith("associations.") and p not in existing and p != "hs_object_id"
            and not (object == "accounts" and col in ("domain", self.identity_property))
        ]
        if object == "tasks" and read["key"] not in existing:
            raise ConfigurationError(f"HubSpot tasks have no property {read['key']}; run `healthsync crm setup`")
        props = [p for p in props if p in existing or p in ("hs_object_id", "hs_lastmodifieddate")]

        if since is None:
            pages = self._list_pages(object_type, props, assoc)
            cursor_base = None
        else:
            start = (since if since.tzinfo else since.replace(tzinfo=timezone.utc)) - self.lookback
            archived = self._archived_since(object_type, start)
            if archived:
                yield Page(object, _empty(object), cursor=None, deleted_ids=archived)
            pages = self._search_pages(object_type, props, start, assoc, key=read.get("key") if object == "tasks" else None)
            cursor_base = since if since.tzinfo else since.replace(tzinfo=timezone.utc)

        high_water = None
        seen: dict[str, str] = {}
        first = True
        yielded = False
        for rows, last in _regroup(pages, PAGE_RECORDS):
            fresh = []
            for r in rows:
                stamp = str((r.get("properties") or {}).get("hs_lastmodifieddate") or r.get("updated_at"))
                if seen.get(str(r["id"])) == stamp:
                    continue
                seen[str(r["id"])] = stamp
                fresh.append(r)
                t = _parse_time(stamp)
                if t is not None:
                    high_water = max(high_water, t) if high_water is not None else t
            if object == "tasks":
                fresh = [r for r in fresh if (r.get("properties") or {}).get(read["key"])]
            frame, page_problems = self._to_canonical(fresh, object, read, assoc)
            cursor = min(high_water.to_pydatetime(), run_start) if high_water is not None else cursor_base
            if since is None and not last:
                cursor = None  # list paging is not ordered by time: the cursor is safe only once every page is read
            yield Page(object, frame, cursor=cursor, problems=(problems if first else []) + page_problems)
            first = False
            yielded = True
        if not yielded:
            yield Page(object, _empty(object), cursor=cursor_base, problems=problems)

    def _list_pages(self, object_type: str, props: list[str], assoc: str | None) -> Iterator[list[dict]]:
        after = None
        seen_after = set()
        while True:
            page = self._call(
                lambda after=after, **kw: self._client.crm.objects.basic_api.get_page(
                    object_type, limit=LIST_LIMIT, after=after, properties=props, associations=[assoc] if assoc else None, **kw
                ),
                what=f"list {object_type}",
            )
            yield page.get("results") or []
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after or after in seen_after:  # never follow the same token twice
                return
            seen_after.add(after)

    def _search_pages(self, object_type, props, start: datetime, assoc, key: str | None) -> Iterator[list[dict]]:
        window_start = start
        while True:
            offset = 0
            after = None
            last_stamp = None
            restarted = False
            while True:
                filters = [{"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": _ms(window_start)}]
                if key:
                    filters.append({"propertyName": key, "operator": "HAS_PROPERTY"})
                body = {
                    "filterGroups": [{"filters": filters}],
                    "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}],
                    "properties": props,
                    "limit": SEARCH_LIMIT,
                }
                if after:
                    body["after"] = after
                page = self._call(
                    lambda body=body, **kw: self._client.crm.objects.search_api.do_search(object_type, public_object_search_request=body, **kw),
                    what=f"search {object_type}",
                    search=True,
                )
                rows = page.get("results") or []
                if assoc and rows:
                    self._attach_associations(object_type, assoc, rows)
                yield rows
                offset += len(rows)
                if rows:
                    last_stamp = _parse_time((rows[-1].get("properties") or {}).get("hs_lastmodifieddate"))
                after = ((page.get("paging") or {}).get("next") or {}).get("after")
                if not after:
                    return
                if offset + SEARCH_LIMIT > self.search_cap:  # next page would cross the cap: re-window
                    if last_stamp is None or last_stamp.to_pydatetime() <= window_start:
                        raise StopRunError(
                            f"HubSpot search of {object_type}: more than {self.search_cap} records share the modification time "
                            f"{window_start.isoformat()}; cannot page past the search cap"
                        )
                    window_start = last_stamp.to_pydatetime()
                    restarted = True
                    break
            if not restarted:
                return

    def _attach_associations(self, object_type: str, to_type: str, rows: list[dict]) -> None:
        """Search results carry no associations; read them in one v4 batch call per page."""
        body = {"inputs": [{"id": str(r["id"])} for r in rows]}
        reply = self._call(
            lambda **kw: self._client.crm.associations.v4.batch_api.get_page(
                object_type, to_type, batch_input_public_fetch_associations_batch_request=body, **kw
            ),
            what=f"read {object_type} associations",
        )
        links: dict[str, list[str]] = {}
        for item in reply.get("results") or []:
            frm = str((item.get("_from") or item.get("from") or {}).get("id"))
            links[frm] = [str(t.get("to_object_id") or t.get("toObjectId")) for t in item.get("to") or []]
        for r in rows:
            r["associations"] = {to_type: {"results": [{"id": i} for i in links.get(str(r["id"]), [])]}}

    def _archived_since(self, object_type: str, start: datetime) -> list[str]:
        out = []
        after = None
        while True:
            page = self._call(
                lambda after=after, **kw: self._client.crm.objects.basic_api.get_page(
                    object_type, limit=LIST_LIMIT, after=after, archived=True, properties=["hs_object_id"], **kw
                ),
                what=f"list archived {object_type}",
            )
            for r in page.get("results") or []:
                when = _parse_time(r.get("archived_at") or r.get("updated_at"))
                if when is None or when.to_pydatetime() >= start:
                    out.append(f"hs:{r['id']}")
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return out

    def _to_canonical(self, rows: list[dict], object: str, read: dict, assoc: str | None) -> tuple[pd.DataFrame, list[str]]:
        data: dict[str, list] = {column: [] for column in read}
        for r in rows:
            props = r.get("properties") or {}
            for column, prop in read.items():
                if prop.startswith("associations.") or (object == "tasks" and column == "account_id"):
                    continue
                data[column].append(str(r["id"]) if prop == "hs_object_id" else props.get(prop))
        if assoc:
            column = next((c for c, p in read.items() if p.startswith("associations.")), "account_id")
            data[column] = [_first_association(r, assoc) for r in rows]
        frame = pd.DataFrame(data)
        if "owner_email" in frame.columns and len(frame):
            if (~frame["owner_email"].dropna().astype(str).isin(self._owners.keys())).any():
                self._load_owners()
            frame["owner_email"] = frame["owner_email"].map(self._owners)
        for column in ("created_at", "due_at", "completed_at", "closed_at", "close_date", "customer_since", "renewal_date"):
            if column in frame.columns:
                frame[column] = frame[column].map(_parse_time)
        if object == "tasks" and "key" in frame.columns:
            frame["playbook"] = frame["key"].astype("string").str.split(":").str[0]
        frame = translate_values(frame, object, crm_values.HUBSPOT, crm_values.HUBSPOT_READ_ALIASES)
        return finish(frame, object, self.prefix)

    # ------------------------------------------------------------------ push

    def push(self, object: str, changes: list[Change]) -> list[RecordResult]:
        """Batch update (100 per call); 207 answers reconciled per input id; exactly one result per change, in order."""
        sec = section(self.mapping, object, "hubspot")
        object_type = sec["object"]
        allowed = set((sec.get("write") or {}).values())
        results: list[RecordResult | None] = [None] * len(changes)
        valid: list[tuple[int, str, dict]] = []
        seen_ids: dict[str, int] = {}
        for i, change in enumerate(changes):
            raw = strip_prefix(change.record_id, self.prefix)
            if raw is None or not _HS_ID.match(raw):
                results[i] = RecordResult(change.record_id, "invalid", "INVALID_ID", "not a HubSpot record id")
                continue
            outside = sorted(set(change.fields) - allowed)
            if outside:
                results[i] = RecordResult(
                    change.record_id, "invalid", "FIELD_NOT_ALLOWED", f"{', '.join(outside)} not in mapping.hubspot.{SECTIONS[object]}.write"
                )
                continue
            if not change.fields:
                results[i] = RecordResult(change.record_id, "invalid", "NO_FIELDS", "nothing to write")
                continue
            if raw in seen_ids:  # one write per record per push; the caller merges changes first
                results[i] = RecordResult(change.record_id, "invalid", "DUPLICATE_ID", "the same record appears twice in one push")
                continue
            seen_ids[raw] = i
            valid.append((i, raw, {k: _prop_value(v) for k, v in change.fields.items()}))
        try:
            for start in range(0, len(valid), BATCH_SIZE):
                self._update_batch(object_type, changes, valid[start : start + BATCH_SIZE], results)
        except QuotaExhaustedError as exc:
            exc.results = _fill(results, changes, "QUOTA_EXHAUSTED", str(exc))
            raise
        return _fill(results, changes, "NOT_SENT", "not sent")

    def _update_batch(self, object_type: str, changes, chunk, results) -> None:
        body = {"inputs": [{"id": rid, "properties": props} for _, rid, props in chunk]}
        try:
            reply = self._call(
                lambda **kw: self._client.crm.objects.batch_api.update(object_type, batch_input_simple_public_object_batch_input=body, **kw),
                what=f"batch update {object_type}",
                write=True,
            )
        except HubSpotApiError as exc:
            if exc.status == 400 and len(chunk) > 1:  # one bad input rejects the batch: split until isolated
                mid = len(chunk) // 2
                self._update_batch(object_type, changes, chunk[:mid], results)
                self._update_batch(object_type, changes, chunk[mid:], results)
                return
            for i, _, _ in chunk:
                results[i] = RecordResult(changes[i].record_id, "failed", exc.category or f"HTTP_{exc.status}", str(exc), False)
            return
        done = {str(r.get("id")) for r in reply.get("results") or []}
        failed: dict[str, tuple[str, str]] = {}
        for err in reply.get("errors") or []:
            ids = (err.get("context") or {}).get("ids") or []
            for rid in ids:
                failed[str(rid)] = (err.get("category") or "ERROR", err.get("message") or "")
        for i, rid, _ in chunk:
            if rid in done:
                results[i] = RecordResult(changes[i].record_id, "ok", crm_id=rid)
            elif rid in failed:
                code, message = failed[rid]
                results[i] = RecordResult(changes[i].record_id, "failed", code, message, code in ("RATE_LIMITS", "LOCKED"))
            else:  # a 207 may neither confirm nor reject an input (crm-api-notes 2.3): retry it next run
                results[i] = RecordResult(changes[i].record_id, "failed", "NOT_CONFIRMED", "HubSpot did not confirm this record", True)

    # ------------------------------------------------------------------ tasks

    def create_tasks(self, tasks: list[TaskSpec]) -> list[RecordResult]:
        """Create tasks associated to their company (type 192), idempotent by `healthsync_key`."""
        key_prop = section(self.mapping, "tasks", "hubspot").get("key_field") or "healthsync_key"
        results: list[RecordResult | None] = [None] * len(tasks)
        todo: dict[str, tuple[list[int], dict]] = {}
        if {t.owner_email.lower() for t in tasks if t.owner_email} - set(self._owner_ids):
            self._load_owners()
        for i, t in enumerate(tasks):
            company = strip_prefix(t.account_id, self.prefix)
            if not t.key:
                results[i] = RecordResult(t.account_id, "invalid", "NO_KEY", "task has no idempotency key")
                continue
            if company is None or not _HS_ID.match(company):
                results[i] = RecordResult(t.key, "invalid", "INVALID_ID", f"account id {t.account_id!r} is not a HubSpot id")
                continue
            if t.key in todo:
                todo[t.key][0].append(i)
                continue
            props = {
                "hs_task_subject": t.subject or "",
                "hs_task_body": t.description or "",
                "hs_timestamp": _prop_value(pd.Timestamp(t.due_at)),
                "hs_task_status": crm_values.HUBSPOT["task_status"]["open"],
                "hs_task_priority": crm_values.to_crm(crm_values.HUBSPOT, "task_priority", t.priority),
                "hs_task_type": "TODO",
                key_prop: t.key,
            }
            owner = self._owner_ids.get(t.owner_email.lower()) if t.owner_email else None
            if owner:
                props["hubspot_owner_id"] = owner
            record = {
                "properties": props,
                "associations": [
                    {"to": {"id": company}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": TASK_TO_COMPANY}]}
                ],
            }
            todo[t.key] = ([i], record)
        keys = list(todo)
        try:
            for start in range(0, len(keys), BATCH_SIZE):
                chunk = keys[start : start + BATCH_SIZE]
                outcome = self.retry.call(lambda chunk=chunk: self._create_task_chunk(chunk, todo, key_prop), stats=self.stats, what="HubSpot create tasks")
                for key, r in outcome.items():
                    for i in todo[key][0]:
                        results[i] = RecordResult(key, r.outcome, r.error_code, r.message, r.retryable, r.crm_id)
        except QuotaExhaustedError as exc:
            exc.results = _fill(results, [Change(t.key, {}) for t in tasks], "QUOTA_EXHAUSTED", str(exc))
            raise
        return _fill(results, [Change(t.key, {}) for t in tasks], "NOT_SENT", "not sent")

    def _existing_tasks(self, keys: list[str], key_prop: str) -> dict[str, str]:
        body = {
            "filterGroups": [{"filters": [{"propertyName": key_prop, "operator": "IN", "values": keys}]}],
            "properties": [key_prop],
            "limit": SEARCH_LIMIT,
        }
        reply = self._call(
            lambda **kw: self._client.crm.objects.search_api.do_search("tasks", public_object_search_request=body, **kw),
            what="search tasks by key",
            search=True,
            retry=False,
        )
        return {(r.get("properties") or {}).get(key_prop): str(r["id"]) for r in reply.get("results") or []}

    def _create_task_chunk(self, keys: list[str], todo, key_prop: str) -> dict[str, RecordResult]:
        existing = self._existing_tasks(keys, key_prop)
        out = {k: RecordResult(k, "ok", crm_id=existing[k], message="already exists") for k in keys if k in existing}
        missing = [k for k in keys if k not in existing]
        if not missing:
            return out
        body = {"inputs": [{**todo[k][1], "objectWriteTraceId": k} for k in missing]}
        try:
            reply = self._call(
                lambda **kw: self._client.crm.objects.batch_api.create(
                    "tasks", batch_input_simple_public_object_batch_input_for_create=body, **kw
                ),
                what="batch create tasks",
                write=True,
                retry=False,
            )
        except HubSpotApiError as exc:
            for k in missing:
                out[k] = RecordResult(k, "failed", exc.category or f"HTTP_{exc.status}", str(exc), False)
            return out
        created = {(r.get("properties") or {}).get(key_prop): str(r["id"]) for r in reply.get("results") or []}
        errors: dict[str, tuple[str, str]] = {}
        for err in reply.get("errors") or []:
            trace = (err.get("context") or {}).get("objectWriteTraceId") or []
            for k in trace if isinstance(trace, list) else [trace]:
                errors[k] = (err.get("category") or "ERROR", err.get("message") or "")
        for k in missing:
            if k in created:
                out[k] = RecordResult(k, "ok", crm_id=created[k])
            elif k in errors:
                # a CONFLICT on the unique key means the task exists but search did not show it yet (index lag):
                # retryable, so the next run finds it by key instead of creating it
                out[k] = RecordResult(k, "failed", errors[k][0], errors[k][1], errors[k][0] == "CONFLICT")
            else:
                out[k] = RecordResult(k, "failed", "NOT_CONFIRMED", "HubSpot did not confirm the task", True)
        return out

    # ------------------------------------------------------------------ setup / check

    def setup(self) -> list[str]:
        """Create the `healthsync` property group and properties; 409 means already there."""
        created: list[str] = []
        for object_type, properties in HEALTHSYNC_PROPERTIES.items():
            try:
                self._call(
                    lambda ot=object_type, **kw: self._client.crm.properties.groups_api.create(ot, property_group_create=dict(GROUP), **kw),
                    what=f"create {object_type} property group",
                    write=True,
                )
                created.append(f"{object_type} group healthsync")
            except HubSpotApiError as exc:
                if exc.status != 409:
                    raise
            for prop in properties:
                body = {**prop, "groupName": GROUP["name"], "description": "Written by healthsync"}
                try:
                    self._call(
                        lambda ot=object_type, body=body, **kw: self._client.crm.properties.core_api.create(ot, property_create=body, **kw),
                        what=f"create {object_type}.{prop['name']}",
                        write=True,
                    )
                    created.append(f"{object_type}.{prop['name']}")
                except HubSpotApiError as exc:
                    if exc.status != 409:
                        raise
            self._properties.pop(object_type, None)
        return created

    def check(self) -> CheckResult:
        """Token valid, scopes granted (each object readable), mapped and healthsync properties present."""
        problems: list[str] = []
        for object in ("accounts", "opportunities", "tickets", "tasks"):
            sec = section(self.mapping, object, "hubspot")
            object_type = sec.get("object") or "tasks"
            try:
                names = self._property_names(object_type)
            except ConfigurationError as exc:
                if "access token" in str(exc):  # nothing else can be checked, nor set up, without a valid token
                    raise
                problems.append(f"{object_type}: {exc}")
                continue
            except StopRunError:  # unreachable, quota, retries exhausted: not a missing scope (exit 3)
                raise
            except (HubSpotApiError, RetryableError) as exc:
                problems.append(f"{object_type}: cannot read its properties ({exc}); the private app needs the crm.schemas.{object_type}.read scope")
                continue
            for column, prop in (sec.get("read") or {}).items():
                if not prop.startswith("associations.") and prop not in names and prop != "hs_object_id":
                    problems.append(f"{object_type}.{prop} (mapping.hubspot.{SECTIONS[object]}.read.{column}) does not exist")
            writes = (sec.get("write") or {}).items() if object != "tasks" else [("key_field", (sec.get("key_field") or "healthsync_key"))]
            for column, prop in writes:
                key = f"mapping.hubspot.{SECTIONS[object]}." + (column if column == "key_field" else f"write.{column}")
                if prop not in names:
                    problems.append(f"{object_type}.{prop} ({key}) is missing; run `healthsync crm setup`")
        try:
            self._load_owners()
        except StopRunError:
            raise
        except (ConfigurationError, HubSpotApiError, RetryableError) as exc:
            problems.append(f"owners: {exc} (the private app needs the crm.objects.owners.read scope)")
        return CheckResult(ok=not problems, problems=problems, details={"tier": self.tier})


def _regroup(pages: Iterator[list[dict]], size: int) -> Iterator[tuple[list[dict], bool]]:
    """API pages (100-200 rows) regrouped into pages of about `size` rows, each flagged whether it is the last.

    Mapping and validating a frame has a fixed cost per call, so a few large pages
    are much cheaper than many small ones.
    """
    buffer: list[dict] = []
    full: list[dict] | None = None
    for rows in pages:
        buffer.extend(rows)
        if len(buffer) >= size:
            if full is not None:
                yield full, False
            full, buffer = buffer, []
    if buffer:
        if full is not None:
            yield full, False
        yield buffer, True
    elif full is not None:
        yield full, True


def _first_association(row: dict, to_type: str) -> str | None:
    assoc = (row.get("associations") or {}).get(to_type) or {}
    results = assoc.get("results") if isinstance(assoc, dict) else None
    if not results:
        return None
    return str(results[0].get("id"))


def _empty(object: str) -> pd.DataFrame:
    return empty_frame(SPECS[object])


def _fill(results: list, changes: list, code: str, message: str) -> list[RecordResult]:
    return [r if r is not None else RecordResult(c.record_id, "failed", code, message, True) for r, c in zip(results, changes)]


def hubspot_from_ready(ready: dict, mapping: dict, **kwargs) -> HubSpotConnector:
    """A connector for a running sandbox, from its ready-file dict."""
    hs = ready["hubspot"]
    kwargs.setdefault("tier", hs.get("tier", "professional"))
    return HubSpotConnector(hs["access_token"], host=hs["host"], mapping=mapping, **kwargs)
