"""HubSpot connector on hubspot-api-client: list backfill, windowed search, batch push, idempotent tasks.

Wire facts are in shared/reference/crm-api-notes.md section 2. Bodies are passed
to the SDK as plain dicts (it serialises them as-is) and responses are turned
into dicts with `.to_dict()`, so no HubSpot model class leaks out of here.

Pacing is proactive (`_Pacer`): a sliding window keeps every connector at the
tier's whole 10-second allowance (100 starter / 190 professional, crm-api-notes 2.8)
and search at 5 requests per second (2.4), less the configured `pacing_margin`;
a request occupies its slot until its answer arrives, so the server, which counts
on arrival, never sees more than the allowance. A 429 is then rare and, when it
comes, is retried by the one retry policy honouring `Retry-After`.

Incremental pulls page search by key, never by offset (connectors/BEHAVIOR.md):
`after` is an offset into a result set HubSpot recomputes for every page, so a
record edited between two pages shifts the rest and one is never returned.
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
import requests
import urllib3
from hubspot import HubSpot

from healthsync.config.canonical import SPECS, empty_frame
from healthsync.connectors import crm_values
from healthsync.connectors.base import (
    MAYBE_CREATED,
    CallStats,
    Change,
    CheckResult,
    ConfigurationError,
    AuthenticationError,
    CredentialsError,
    CrmConnector,
    HealthsyncError,
    OwnWrites,
    Page,
    QuotaExhaustedError,
    RecordResult,
    RetryableError,
    StopRunError,
    TaskSpec,
)
from healthsync.connectors.mapping import SECTIONS, finish, section, strip_prefix, translate_values
from healthsync.connectors.read_ahead import read_ahead
from healthsync.connectors.redact import Redactor, reveal
from healthsync.connectors.retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)

#: 10-second request allowance per tier (crm-api-notes 2.8); paced at all of it less `pacing_margin`.
TIER_LIMITS = {"free": 100, "starter": 100, "professional": 190, "enterprise": 190}
BATCH_SIZE = 100  # batch endpoints take 100 inputs (2.3)
LIST_LIMIT = 100  # list paging maximum (2.2)
SEARCH_LIMIT = 200  # search page maximum (2.4)
SEARCH_PER_SECOND = 5
ASSOC_BATCH = 1000  # ids per v4 association batch read (changelog 2025-02-10, connectors/BEHAVIOR.md)
LIST_SWITCH_MIN = 2000  # records in a search window before listing everything is even considered
PAGE_RECORDS = 2000  # rows per yielded Page (API pages are regrouped: mapping a frame has a fixed cost)
#: seconds a write may take to become searchable; the cursor never passes `run start - this` (BEHAVIOR.md)
SEARCH_LAG_S = 60.0
MODIFIED = "hs_lastmodifieddate"
TASK_TO_COMPANY = 192  # AssociationType.TASK_TO_COMPANY (2.6)
#: an attempt recorded before its request left may land this much later (transit, server queueing)
_ATTEMPT_MARGIN_S = 2.0
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
    # Not `hasUniqueValue`: HubSpot offers unique properties on contacts, companies, deals, tickets and
    # custom objects only (developers.hubspot.com/changelog/unique-properties-for-contacts), so task
    # idempotency is anchored in the state store's record of create attempts (see create_tasks).
    "tasks": [
        {"name": "healthsync_key", "label": "Healthsync key", "type": "string", "fieldType": "text"},
    ],
}
GROUP = {"name": "healthsync", "label": "Healthsync", "displayOrder": -1}


class _Pacer:
    """Sliding-window budget shared by every connector using the same HubSpot account (token).

    `slot()` blocks until one more request fits in the window and returns its slot;
    `release(slot)` stamps the slot with the time the answer arrived. A slot counts
    from the moment it is taken until `window` after its answer: the server counts a
    request when it arrives, which is between the two, so the client never has more
    requests in any server-side window than the budget, even with requests in flight
    on several threads. The windows are kept per (host, token) so a new connector in
    the same process inherits the history of the previous one.
    """

    _registry: dict[tuple, "_Pacer"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, budget: int, window: float, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.budget = budget
        self.window = window
        self.sent: deque[list] = deque()  # [answer time or None while in flight]
        self.lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def shared(cls, key: tuple, budget: int, window: float) -> "_Pacer":
        with cls._registry_lock:
            pacer = cls._registry.get(key)
            if pacer is None or pacer.budget != budget or pacer.window != window:
                pacer = cls._registry[key] = cls(budget, window)
            return pacer

    def slot(self) -> list:
        with self.lock:
            while True:
                now = self._clock()
                while self.sent and self.sent[0][0] is not None and now - self.sent[0][0] >= self.window:
                    self.sent.popleft()
                if len(self.sent) < self.budget:
                    slot: list = [None]
                    self.sent.append(slot)
                    return slot
                head = self.sent[0][0]
                self._sleep(max(0.001, self.window - (now - head)) if head is not None else 0.005)

    def release(self, slot: list) -> None:
        slot[0] = self._clock()

    def wait(self) -> None:
        """Take a slot for a request whose answer comes at once (tests, callers without an answer to wait for)."""
        self.release(self.slot())


class _HttpReply(Exception):
    """A non-200 answer to a call made without the SDK, shaped like the SDK's ApiException for `_raise_for`."""

    def __init__(self, response: "requests.Response"):
        super().__init__(f"HTTP {response.status_code}")
        self.status = response.status_code
        self.body = response.text
        self.headers = response.headers
        self.reason = response.reason


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
        identity_property: str = "salesforce_account_id",
        pacing_margin: float = 0.0,
        search_lag_s: float = SEARCH_LAG_S,
        clock: Callable[[], datetime] | None = None,
        index_lag_s: float | None = None,
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
        if not 0 <= float(pacing_margin) < 1:
            raise ConfigurationError(f"sources.hubspot.pacing_margin must be at least 0 and below 1 (got {pacing_margin!r})")
        if float(search_lag_s) < 0:
            raise ConfigurationError(f"sources.hubspot.search_lag_s must be >= 0 (got {search_lag_s!r})")
        self.search_lag = timedelta(seconds=float(search_lag_s))
        self._now = clock or (lambda: datetime.now(timezone.utc))  # HubSpot's time: the run's start bounds searches
        self.identity_property = identity_property  # config mapping.identity.hubspot_salesforce_id_property
        # how long to wait before looking up a task whose create went unanswered: a sandbox's declared lag
        # (its ready file), else sources.hubspot.search_lag_s (crm-api-notes 2.4)
        self.index_lag_s = float(search_lag_s if index_lag_s is None else index_lag_s)
        self._sleep: Callable[[float], None] = time.sleep
        self.stats = CallStats()
        self.host = (host or "https://api.hubapi.com").rstrip("/")
        self._redact = Redactor([token])
        no_retry = urllib3.util.Retry(total=0, connect=0, read=0, redirect=0, status=0, raise_on_status=False)
        self._client = HubSpot(access_token=token, host=self.host, base_url=self.host, retry=no_retry)
        key = (self.host, str(hash(token)))
        share = 1.0 - float(pacing_margin)  # sources.hubspot.pacing_margin: the share kept in reserve
        self._burst = _Pacer.shared(key + ("burst",), max(1, int(TIER_LIMITS[tier] * share)), 10.0)
        self._search_pacer = _Pacer.shared(key + ("search",), SEARCH_PER_SECOND, 1.0 / share)
        self._owners: dict[str, str] = {}
        self._owner_ids: dict[str, str] = {}
        self._owners_loaded = False
        self._owner_names: dict[str, str] = {}  # owner id -> "First Last" (the report shows CSMs by name)
        self._properties: dict[str, set[str]] = {}
        self._instance: dict[str, Any] | None = None

    # ------------------------------------------------------------------ calls

    def _call(self, fn: Callable[..., Any], *, what: str, search: bool = False, write: bool = False, retry: bool = True) -> Any:
        """One SDK call: paced, timed out, translated to the connectors.base tree, retried by the policy."""

        def attempt():
            search_slot = self._search_pacer.slot() if search else None
            burst_slot = self._burst.slot()
            self.stats.count(write=write)
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
            finally:  # the answer (or the failure) has arrived: the slots start to age
                self._burst.release(burst_slot)
                if search_slot is not None:
                    self._search_pacer.release(search_slot)
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
            raise AuthenticationError(
                "HubSpot rejected the access token (check HEALTHSYNC__HUBSPOT__ACCESS_TOKEN, the private app may be revoked)"
            ) from None
        if status == 403:
            raise CredentialsError(f"HubSpot {what}: permission denied: {message} (add the missing scope to the private app)") from None
        raise HubSpotApiError(f"HubSpot {what}: HTTP {status}: {message}", status, body.get("category"), body) from None

    # ------------------------------------------------------------------ owners and properties

    def _load_owners(self) -> None:
        """The owners, once per connector (one run): every later need reads this cache.

        An owner id or email unknown after that (an archived owner, a typo) stays unknown for
        the run instead of re-listing every owner each time it is met.
        """
        if self._owners_loaded:
            return
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
                    name = " ".join(p for p in (o.get("first_name") or o.get("firstName"), o.get("last_name") or o.get("lastName")) if p)
                    if name:
                        self._owner_names[str(o["id"])] = name
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                self._owners_loaded = True
                return

    def instance_info(self) -> dict[str, Any]:
        """The portal id and UI domain (`GET /account-info/v3/details`), once per connector.

        Records open at `https://<uiDomain>/contacts/<portalId>/record/<objectTypeId>/<id>`. The
        SDK has no account-info API and its generic `api_request` sets no timeout, so this one GET
        goes through requests with the client's token, paced and retried like every SDK call.
        """
        if self._instance is None:
            url = f"{self.host}/account-info/v3/details"

            def fetch(_request_timeout=None):
                try:
                    response = requests.get(url, headers={"Authorization": f"Bearer {self._client.access_token}",
                                                          "Accept": "application/json"}, timeout=_request_timeout)
                except requests.RequestException as exc:
                    raise RetryableError(self._redact(f"HubSpot read account details: {type(exc).__name__}")) from None
                if response.status_code != 200:
                    raise _HttpReply(response)
                return response.json()

            reply = self._call(fetch, what="read account details")
            info: dict[str, Any] = {}
            if reply.get("portalId") is not None:
                info["portal_id"] = int(reply["portalId"])
                info["ui_domain"] = str(reply.get("uiDomain") or "app.hubspot.com")
            self._instance = info
        return dict(self._instance)

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
            return object_type, read, None  # the account is part of the key: no association read
        read = dict(sec.get("read") or {})
        if object == "accounts":  # extra columns for cross-CRM identity (connectors/identity.py)
            read.setdefault("domain", "domain")
            read.setdefault(self.identity_property, self.identity_property)
        assoc = None
        for column, prop in list(read.items()):
            if prop.startswith("associations."):
                assoc = prop.split(".", 1)[1]
        return object_type, read, assoc

    def pull(self, object: str, since: datetime | None = None, own_writes: OwnWrites | None = None) -> Iterator[Page]:
        """Full backfill by list paging (since None), else keyset search of [since - lookback, run start].

        Search pages by key, never by offset (`_search_rows`). Archived records since the
        cursor come first, in their own page. Each page's cursor is the highest
        modification time seen, never past `run start - search_lag_s` (a write that recent
        may not be searchable yet); once the whole window is read, the cursor moves up to
        that bound. `own_writes`: records whose modification time is exactly the one our
        own last write got, and whose mapped values are the stored ones, are not
        rehydrated (no association read, not yielded): their only change is ours.
        """
        run_start = self._now()
        if object == "owners":
            self._load_owners()
            yield Page("owners", pd.DataFrame({"owner_id": [f"hs:{i}" for i in self._owners], "email": list(self._owners.values()),
                                               "name": [self._owner_names.get(i) for i in self._owners]}))
            return
        object_type, read, assoc = self._read_spec(object)
        props = sorted({p for p in read.values() if not p.startswith("associations.")} | {MODIFIED})
        existing = self._property_names(object_type)
        problems = [
            f"mapping.hubspot.{SECTIONS[object]}.read.{col}: property {p} not found on {object_type}; column left empty"
            for col, p in read.items()
            if not p.startswith("associations.") and p not in existing and p != "hs_object_id"
            and not (object == "accounts" and col in ("domain", self.identity_property))
        ]
        if object == "tasks" and read["key"] not in existing:
            raise ConfigurationError(f"HubSpot tasks have no property {read['key']}; run `healthsync crm setup`")
        props = [p for p in props if p in existing or p in ("hs_object_id", MODIFIED)]
        settled = run_start - self.search_lag  # every write before this is searchable (BEHAVIOR.md)

        if object == "tasks":
            # Only healthsync's tasks (key present), by search even for a full read: listing would page
            # through every task of the portal. Archived tasks are not listed (nothing reads them back).
            start = datetime(2000, 1, 1, tzinfo=timezone.utc)  # before any task healthsync made
            if since is not None:
                start = (since if since.tzinfo else since.replace(tzinfo=timezone.utc)) - self.lookback
            pages = self._search_rows(object_type, props, start, run_start, read["key"], None)
            cursor_base = None if since is None else (since if since.tzinfo else since.replace(tzinfo=timezone.utc))
        elif since is None:
            pages = self._list_pages(object_type, props, assoc)
            cursor_base = None
        else:
            cursor_base = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
            start = cursor_base - self.lookback
            archived = self._archived_since(object_type, start)
            if archived:
                yield Page(object, _empty(object), cursor=None, deleted_ids=archived)
            pages = self._search_rows(object_type, props, start, run_start, None, assoc)

        high_water: pd.Timestamp | None = None
        seen: dict[str, str] = {}
        pending: list[dict] = []
        unchecked: list[dict] = []  # read, not yet checked for being only our own write
        first = True
        skipped = 0

        def page_of(rows: list[dict], cursor: datetime | None) -> Page:
            nonlocal first
            if object == "tasks":
                rows = [r for r in rows if (r.get("properties") or {}).get(read["key"])]
            searched = [r for r in rows if not r.get("_listed")]
            if assoc and searched and since is not None:  # search results carry no associations
                self._attach_associations(object_type, assoc, searched)
            frame, page_problems = self._to_canonical(rows, object, read, assoc)
            page = Page(object, frame, cursor=cursor, problems=(problems if first else []) + page_problems)
            first = False
            return page

        for rows in pages:
            fresh = []
            for r in rows:
                stamp = str((r.get("properties") or {}).get(MODIFIED) or r.get("updated_at"))
                if seen.get(str(r["id"])) == stamp:  # keyset pages overlap on their boundary instant
                    continue
                seen[str(r["id"])] = stamp
                fresh.append(r)
                t = _parse_time(stamp)
                if t is not None:
                    high_water = max(high_water, t) if high_water is not None else t
            if own_writes is not None:
                # checked PAGE_RECORDS at a time, not per API page: mapping a frame and reading the
                # replica back have a fixed cost (a day after the first sync lists ~1,000 pages of our
                # own writes). Nothing is yielded before they are checked, so no cursor passes them.
                unchecked.extend(fresh)
                if len(unchecked) < PAGE_RECORDS:
                    continue
                fresh = self._without_own_writes(unchecked, object, read, assoc, own_writes)
                skipped += len(unchecked) - len(fresh)
                unchecked = []
            pending.extend(fresh)
            if len(pending) >= PAGE_RECORDS:
                cursor = None
                if since is not None and high_water is not None:  # list paging is unordered: no cursor before the end
                    cursor = max(cursor_base, min(high_water.to_pydatetime(), settled))
                yield page_of(pending, cursor)
                pending = []
        if unchecked:
            kept = self._without_own_writes(unchecked, object, read, assoc, own_writes)
            skipped += len(unchecked) - len(kept)
            pending.extend(kept)
        # the whole window is read: everything searchable before `settled` has been seen
        final = settled if cursor_base is None else max(cursor_base, settled)
        if skipped:
            log.info("HubSpot %s: %d records whose only change is our own write were not read again", object_type, skipped)
        yield page_of(pending, final)

    def _list_pages(self, object_type: str, props: list[str], assoc: str | None) -> Iterator[list[dict]]:
        """Every record of `object_type`, a list page at a time, the next pages requested while the caller
        maps and checks the last ones (connectors/read_ahead.py): the chain of `after` tokens keeps the pace."""
        return read_ahead(self._list_chain(object_type, props, assoc), name=f"hubspot-list-{object_type}",
                          on_thread=self.stats.share_tallies())

    def _list_chain(self, object_type: str, props: list[str], assoc: str | None) -> Iterator[list[dict]]:
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

    def _search_rows(self, object_type: str, props: list[str], low: datetime, high: datetime, key: str | None,
                     assoc: str | None = None) -> Iterator[list[dict]]:
        """Every record modified in [low, high], by keyset paging (connectors/BEHAVIOR.md).

        Each query asks for the first page only, sorted by modification time: `GTE` the last
        time seen (the records at that instant come again and are de-duplicated by the
        caller) and `LTE` the run's start, so records edited during the pull move out of
        the window instead of shifting offsets, and no query ever reaches the 10,000-result
        cap. A full page ending on the instant it started from (more than a page of records
        share one modification time) is read through by `hs_object_id` (`_instant_rows`),
        then the search goes on strictly after that instant. Every query moves the lower
        bound forward, so the loop ends whatever the data. When the window holds most of
        the object's records, they are listed instead (`_listing_is_cheaper`).
        """
        extra = [{"propertyName": key, "operator": "HAS_PROPERTY"}] if key else []
        op, bound = "GTE", low
        first_query = True
        while True:
            filters = [
                {"propertyName": MODIFIED, "operator": op, "value": _ms(bound)},
                {"propertyName": MODIFIED, "operator": "LTE", "value": _ms(high)},
                *extra,
            ]
            rows, more = self._search_page(object_type, filters, MODIFIED, props)
            if first_query and more and not key and self._listing_is_cheaper(object_type, self._last_total, props):
                yield from self._listed_rows(object_type, props, assoc, low, high)
                return
            first_query = False
            yield rows
            if not more:
                return
            first, last = (_parse_time((r.get("properties") or {}).get(MODIFIED)) for r in (rows[0], rows[-1]))
            if first is None or last is None:
                raise StopRunError(f"HubSpot search of {object_type} returned a record without {MODIFIED}")
            first, last = first.to_pydatetime(), last.to_pydatetime()
            if last < bound or (op == "GT" and last == bound):
                raise StopRunError(f"HubSpot search of {object_type} returned records out of modification order")
            if first == last:  # a whole page on one instant: read that instant by id, then go on after it
                yield from self._instant_rows(object_type, last, props, extra)
                op, bound = "GT", last
            else:
                op, bound = "GTE", last

    def _instant_rows(self, object_type: str, instant: datetime, props: list[str], extra: list[dict]) -> Iterator[list[dict]]:
        """Every record modified at exactly `instant`: `EQ` that time, `GT` the last id, sorted by id."""
        after_id = None
        while True:
            filters = [{"propertyName": MODIFIED, "operator": "EQ", "value": _ms(instant)}, *extra]
            if after_id is not None:
                filters.append({"propertyName": "hs_object_id", "operator": "GT", "value": after_id})
            rows, more = self._search_page(object_type, filters, "hs_object_id", props)
            yield rows
            if not more:
                return
            last_id = str(rows[-1]["id"])
            if after_id is not None and int(last_id) <= int(after_id):
                raise StopRunError(f"HubSpot search of {object_type} returned ids out of order")
            after_id = last_id

    def _search_page(self, object_type: str, filters: list[dict], sort: str, props: list[str], limit: int = SEARCH_LIMIT) -> tuple[list[dict], bool]:
        """One search query, its first page only (one sorting rule: HubSpot applies no more); -> (rows, more).

        The answer's `total` (records matching the query) is kept in `self._last_total`.
        """
        body = {
            "filterGroups": [{"filters": filters}] if filters else [],
            "sorts": [{"propertyName": sort, "direction": "ASCENDING"}],
            "properties": props,
            "limit": limit,
        }
        page = self._call(
            lambda **kw: self._client.crm.objects.search_api.do_search(object_type, public_object_search_request=body, **kw),
            what=f"search {object_type}",
            search=True,
        )
        rows = page.get("results") or []
        self._last_total = int(page.get("total") or 0)
        more = bool(((page.get("paging") or {}).get("next") or {}).get("after")) or len(rows) >= limit
        return rows, more and bool(rows)

    def _listing_is_cheaper(self, object_type: str, in_window: int, props: list[str]) -> bool:
        """Whether listing every record beats searching `in_window` of them (issue 14: the day after a full sync).

        Search pages 200 records at 5 requests/s (1,000 records/s) and needs association reads;
        listing pages 100 with their associations at the tier's 10-second allowance (1,900
        records/s on professional). When most records changed, as on the day after the first
        sync wrote them all, listing them all is the cheaper read.
        """
        if in_window < LIST_SWITCH_MIN:
            return False
        self._search_page(object_type, [], "hs_object_id", ["hs_object_id"], limit=1)
        everything = self._last_total
        search_s = in_window / (SEARCH_LIMIT * self._search_pacer.budget / self._search_pacer.window)
        list_s = everything / (LIST_LIMIT * self._burst.budget / self._burst.window)
        return list_s < search_s

    def _listed_rows(self, object_type: str, props: list[str], assoc: str | None, low: datetime, high: datetime) -> Iterator[list[dict]]:
        """The records modified in [low, high], found by listing them all (with their associations)."""
        low_ts, high_ts = pd.Timestamp(low), pd.Timestamp(high)
        for rows in self._list_pages(object_type, props, assoc):
            kept = []
            for r in rows:
                t = _parse_time((r.get("properties") or {}).get(MODIFIED) or r.get("updated_at"))
                if t is not None and low_ts <= t <= high_ts:  # later ones changed during the pull: next run
                    r["_listed"] = True  # its associations came with it
                    kept.append(r)
            yield kept

    def _without_own_writes(self, rows: list[dict], object: str, read: dict, assoc: str | None, own: OwnWrites) -> list[dict]:
        """`rows` less the records whose last change is our own write (stamp equal, mapped values as stored)."""
        candidates = []
        for r in rows:
            ours = own.stamps.get(f"{self.prefix}:{r['id']}")
            if ours is not None and _parse_time((r.get("properties") or {}).get(MODIFIED)) == pd.Timestamp(ours):
                candidates.append(r)
        if not candidates:
            return rows
        if assoc:  # not read for them: a stand-in id lets the rows validate, and the column is not compared
            candidates = [{**r, "associations": {assoc: {"results": [{"id": "0"}]}}} for r in candidates]
        frame, _ = self._to_canonical(candidates, object, read, assoc)
        ignore = [c for c, p in read.items() if p.startswith("associations.")]
        same = frame.loc[own.unchanged(frame, ignore).to_numpy(dtype=bool), SPECS[object].key].astype(str)
        drop = {strip_prefix(i, self.prefix) for i in same}
        return [r for r in rows if str(r["id"]) not in drop]

    def _attach_associations(self, object_type: str, to_type: str, rows: list[dict]) -> None:
        """Search results carry no associations; read them with v4 batch reads of up to 1,000 ids."""
        links: dict[str, list[str]] = {}
        for start in range(0, len(rows), ASSOC_BATCH):
            body = {"inputs": [{"id": str(r["id"])} for r in rows[start : start + ASSOC_BATCH]]}
            reply = self._call(
                lambda body=body, **kw: self._client.crm.associations.v4.batch_api.get_page(
                    object_type, to_type, batch_input_public_fetch_associations_batch_request=body, **kw
                ),
                what=f"read {object_type} associations",
            )
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
            key = frame["key"].astype("string")
            frame["playbook"] = key.str.split(":").str[0]
            # `<playbook>:<account_id>:<day>` with account_id `hs:<company id>`
            frame["account_id"] = key.str.split(":", n=1).str[1].str.rsplit(":", n=1).str[0]
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
        # the modification time our write gave each record: the next pull knows this change is ours
        done = {str(r.get("id")): _parse_time((r.get("properties") or {}).get(MODIFIED) or r.get("updated_at"))
                for r in reply.get("results") or []}
        failed: dict[str, tuple[str, str]] = {}
        for err in reply.get("errors") or []:
            ids = (err.get("context") or {}).get("ids") or []
            for rid in ids:
                failed[str(rid)] = (err.get("category") or "ERROR", err.get("message") or "")
        for i, rid, _ in chunk:
            if rid in done:
                stamp = done[rid].to_pydatetime() if done[rid] is not None else None
                results[i] = RecordResult(changes[i].record_id, "ok", crm_id=rid, stamp=stamp)
            elif rid in failed:
                code, message = failed[rid]
                results[i] = RecordResult(changes[i].record_id, "failed", code, message, code in ("RATE_LIMITS", "LOCKED"))
            else:  # a 207 may neither confirm nor reject an input (crm-api-notes 2.3): retry it next run
                results[i] = RecordResult(changes[i].record_id, "failed", "NOT_CONFIRMED", "HubSpot did not confirm this record", True)

    # ------------------------------------------------------------------ tasks

    def create_tasks(self, tasks: list[TaskSpec], *, before_send=None, after_chunk=None) -> list[RecordResult]:
        """Create tasks associated to their company (type 192), never twice for one key.

        `healthsync_key` cannot be unique on tasks, and search shows a new task only after a
        lag ("It may take a few moments for newly created or updated CRM objects to appear in
        search results", crm-api-notes 2.4). So a pre-create search would both cost a call per
        chunk and miss the tasks it exists to find. Instead the caller's record of attempts is
        the anchor:
        - a key never sent before (`TaskSpec.attempted_at` None) is created without any search;
        - `before_send(keys)` runs before each create request, so the caller records the attempt first;
        - a create that gets no definite answer (timeout, 5xx, lost answer) is never resent blindly:
          once `index_lag_s` has passed since it was sent its keys are searched; found -> that
          task, missing -> created again (bounded by the retry policy's attempts); still unsure
          -> MAYBE_CREATED, and the next run looks the keys up the same way;
        - a key attempted before this call (`attempted_at` set) is looked up that way first.
        """
        key_prop = section(self.mapping, "tasks", "hubspot").get("key_field") or "healthsync_key"
        results: list[RecordResult | None] = [None] * len(tasks)
        todo: dict[str, tuple[list[int], dict]] = {}
        attempted: dict[str, datetime] = {}
        if any(t.owner_email for t in tasks):
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
            if t.attempted_at is not None:
                attempted[t.key] = t.attempted_at
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

        def settle(outcome: dict[str, RecordResult]) -> None:
            for key, r in outcome.items():
                for i in todo[key][0]:
                    results[i] = RecordResult(key, r.outcome, r.error_code, r.message, r.retryable, r.crm_id)
            if after_chunk is not None and outcome:
                after_chunk([RecordResult(k, r.outcome, r.error_code, r.message, r.retryable, r.crm_id) for k, r in outcome.items()])

        try:
            # earlier attempts first: look their keys up once the index shows them
            earlier = [k for k in todo if k in attempted]
            fresh = [k for k in todo if k not in attempted]
            for start in range(0, len(earlier), BATCH_SIZE):
                chunk = earlier[start : start + BATCH_SIZE]
                self._wait_for_index(max(attempted[k] for k in chunk))
                found = self._existing_tasks(chunk, key_prop)
                settle({k: RecordResult(k, "ok", crm_id=found[k], message="already exists") for k in chunk if k in found})
                fresh += [k for k in chunk if k not in found]
            for start in range(0, len(fresh), BATCH_SIZE):
                chunk = fresh[start : start + BATCH_SIZE]
                settle(self._create_task_chunk(chunk, todo, key_prop, before_send))
        except QuotaExhaustedError as exc:
            exc.results = _fill(results, [Change(t.key, {}) for t in tasks], "QUOTA_EXHAUSTED", str(exc))
            raise
        return _fill(results, [Change(t.key, {}) for t in tasks], "NOT_SENT", "not sent")

    def _wait_for_index(self, sent_at: datetime | float) -> None:
        """Sleep until `index_lag_s` has passed since a create was applied.

        `sent_at` is time.monotonic() when the create's (lost) answer came back, or the aware UTC
        time an earlier attempt was recorded: that one is taken before the request left, so it
        gets `_ATTEMPT_MARGIN_S` more for the request's own transit.
        """
        if self.index_lag_s <= 0:
            return
        if isinstance(sent_at, datetime):
            sent = sent_at if sent_at.tzinfo else sent_at.replace(tzinfo=timezone.utc)
            wait = self.index_lag_s + _ATTEMPT_MARGIN_S
            left = (sent + timedelta(seconds=wait) - datetime.now(timezone.utc)).total_seconds()
        else:
            wait = self.index_lag_s
            left = sent_at + wait - time.monotonic()
        if left > 0:
            self._sleep(min(left, wait))

    def _existing_tasks(self, keys: list[str], key_prop: str) -> dict[str, str]:
        """key -> task id of the tasks carrying these keys (the oldest when a key was ever duplicated)."""
        body = {
            "filterGroups": [{"filters": [{"propertyName": key_prop, "operator": "IN", "values": keys}]}],
            "properties": [key_prop],
            "sorts": [{"propertyName": "hs_object_id", "direction": "DESCENDING"}],
            "limit": SEARCH_LIMIT,
        }
        reply = self._call(
            lambda **kw: self._client.crm.objects.search_api.do_search("tasks", public_object_search_request=body, **kw),
            what="search tasks by key",
            search=True,
        )
        # descending ids: the oldest task of a key is written last and wins
        return {(r.get("properties") or {}).get(key_prop): str(r["id"]) for r in reply.get("results") or []}

    def _create_task_chunk(self, keys: list[str], todo, key_prop: str, before_send) -> dict[str, RecordResult]:
        """One batch create (up to 100), settled per key; see create_tasks for the unanswered case."""
        out: dict[str, RecordResult] = {}
        pending = list(keys)
        attempts = 0
        while pending:
            attempts += 1
            if before_send is not None:
                before_send(list(pending))
            body = {"inputs": [{**todo[k][1], "objectWriteTraceId": k} for k in pending]}
            try:
                reply = self._call(
                    lambda body=body, **kw: self._client.crm.objects.batch_api.create(
                        "tasks", batch_input_simple_public_object_batch_input_for_create=body, **kw
                    ),
                    what="batch create tasks",
                    write=True,
                    retry=False,  # never resent blindly: see create_tasks
                )
            except HubSpotApiError as exc:  # refused as a whole: nothing was created
                for k in pending:
                    out[k] = RecordResult(k, "failed", exc.category or f"HTTP_{exc.status}", str(exc), False)
                return out
            except RetryableError as exc:
                unsure, reason = pending, str(exc)
                answered_at = time.monotonic()  # whatever was applied, was applied by now
            else:
                answered_at = time.monotonic()
                created = {(r.get("properties") or {}).get(key_prop): str(r["id"]) for r in reply.get("results") or []}
                errors: dict[str, tuple[str, str]] = {}
                for err in reply.get("errors") or []:
                    trace = (err.get("context") or {}).get("objectWriteTraceId") or []
                    for k in trace if isinstance(trace, list) else [trace]:
                        errors[k] = (err.get("category") or "ERROR", err.get("message") or "")
                unsure = []
                for k in pending:
                    if k in created:
                        out[k] = RecordResult(k, "ok", crm_id=created[k])
                    elif k in errors:
                        out[k] = RecordResult(k, "failed", errors[k][0], errors[k][1], errors[k][0] in ("RATE_LIMITS", "LOCKED"))
                    else:  # a 207 may neither confirm nor reject an input (crm-api-notes 2.3)
                        unsure.append(k)
                reason = "HubSpot did not confirm the task"
            if not unsure:
                return out
            self.stats.retries += 1
            if attempts >= self.retry.max_attempts:
                for k in unsure:
                    out[k] = RecordResult(k, "failed", MAYBE_CREATED, f"{reason}; its key is looked up before any new create", True)
                return out
            log.info("HubSpot batch create tasks: %s; looking %d key(s) up after the search lag", reason, len(unsure))
            self._wait_for_index(answered_at)
            found = self._existing_tasks(unsure, key_prop)
            for k in unsure:
                if k in found:
                    out[k] = RecordResult(k, "ok", crm_id=found[k])
            pending = [k for k in unsure if k not in found]
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
            except AuthenticationError:  # nothing else can be checked, nor set up, without a valid token (exit 2)
                raise
            except ConfigurationError as exc:
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
    """A connector for a running sandbox, from its ready-file dict.

    The sandbox's clock is HubSpot's clock there (tests move it by days), so the run's
    start, which bounds the search window, is read from it.
    """
    hs = ready["hubspot"]
    kwargs.setdefault("tier", hs.get("tier", "professional"))
    if "search_lag_s" in hs:  # the sandbox says how far its search index lags: what a task lookup waits
        kwargs.setdefault("index_lag_s", float(hs["search_lag_s"]))
    if ready.get("inspect_url") and "clock" not in kwargs:
        from healthsync.connectors.sandbox.clock import remote_clock

        kwargs["clock"] = remote_clock(ready["inspect_url"])
    return HubSpotConnector(hs["access_token"], host=hs["host"], mapping=mapping, **kwargs)
