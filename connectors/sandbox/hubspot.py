"""HubSpot CRM v3/v4 emulator: objects, batch, search, properties, owners, associations, rate limits.

Wire facts follow shared/reference/crm-api-notes.md §2 and §4. The SDK deserializes only
the exact status codes it expects (201 on create, 207 on partial batches), so those are
kept exact. Every property value is stored and returned as a string, as HubSpot does.
Rate limits use real (monotonic) time: the 10-second rolling window per tier with the
X-HubSpot-RateLimit-* headers, 5 searches per second (no headers on search), a daily cap.

Search works like HubSpot's (BEHAVIOR.md, "Search"): the result set is recomputed on every
request and `after` is an offset into it, so records edited between two pages shift the
offsets; at most 10,000 results per query, 200 per page, one sorting rule; and the search
index lags the records: each new version of a record becomes searchable only after its own
delay (up to `search_lag_seconds` of the emulator clock), and until then search answers
with the previous indexed version, or not at all for a new record.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import zlib
from bisect import bisect_left
from collections import deque
from itertools import repeat
from datetime import datetime, timedelta, timezone
from typing import Any

from healthsync.connectors.sandbox import schema
from healthsync.connectors.sandbox.clock import Clock, hs_datetime, parse_datetime
from healthsync.connectors.sandbox.faults import FaultDecision, FaultInjector
from healthsync.connectors.sandbox.http_base import Api, HttpError, Request, Response, Router

TIERS = {  # crm-api-notes 2.8: (burst per 10 s, daily)
    "starter": (100, 250_000),
    "professional": (190, 625_000),
    "enterprise": (190, 1_000_000),
}
LIST_MAX, BATCH_MAX, SEARCH_MAX, SEARCH_CAP, SEARCH_PER_SECOND = 100, 100, 200, 10_000, 5
#: filterGroups per query, filters per group, filters in total (search guide "Limits", BEHAVIOR.md)
SEARCH_GROUPS, SEARCH_FILTERS_PER_GROUP, SEARCH_FILTERS = 5, 6, 18
OWNERS_MAX = 500
ASSOC_READ_MAX = 1000  # ids per v4 association batch read (developer changelog, February 2025)
TYPE_ALIASES = {"companies": "companies", "company": "companies", "0-2": "companies",
                "deals": "deals", "deal": "deals", "0-3": "deals",
                "tickets": "tickets", "ticket": "tickets", "0-5": "tickets",
                "tasks": "tasks", "task": "tasks", "0-27": "tasks"}
# (from, to) -> (default type id, inverse type id, label) (hubspot/crm/association_type.py)
ASSOC_TYPES = {
    ("tasks", "companies"): (192, 191), ("companies", "tasks"): (191, 192),
    ("deals", "companies"): (341, 342), ("companies", "deals"): (342, 341),
    ("tickets", "companies"): (339, 340), ("companies", "tickets"): (340, 339),
    ("tasks", "deals"): (216, 215), ("deals", "tasks"): (215, 216),
    ("tasks", "tickets"): (230, 229), ("tickets", "tasks"): (229, 230),
    ("deals", "tickets"): (27, 28), ("tickets", "deals"): (28, 27),
}
TYPE_ID_PAIRS = {v[0]: k for k, v in ASSOC_TYPES.items()}
#: objects whose properties may be created with hasUniqueValue (tasks may not; BEHAVIOR.md)
UNIQUE_PROPERTY_OBJECTS = frozenset({"companies", "deals", "tickets", "contacts"})
_SINGULAR = {"companies": "company", "deals": "deal", "tickets": "ticket", "tasks": "task"}


def hs_error(status: int, category: str, message: str, headers: dict | None = None, **extra) -> Response:
    body = {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), "category": category}
    body.update(extra)
    return Response.json(status, body, headers)


def _num(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _fmt_num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


#: The sandbox portal's id (a fixed, realistic 8-digit Hub id, so record URLs are stable across runs).
PORTAL_ID = 24_681_357


class HubSpotApi(Api):
    name = "hubspot"

    #: rate-limit windows (monotonic time), test hooks (callables) and the port belong to the process
    PROCESS_ATTRS = Api.PROCESS_ATTRS | {"_window", "_search_window", "_search_hooks", "base_url"}

    def __init__(self, clock: Clock, faults: FaultInjector | None, *, tier: str = "professional",
                 daily_limit: int | None = None, access_token: str | None = None,
                 search_lag_seconds: float = 0.0) -> None:
        super().__init__(Router())
        if tier not in TIERS:
            raise ValueError(f"hubspot_tier must be one of {', '.join(TIERS)}, got {tier!r}")
        self.clock, self.faults, self.tier = clock, faults, tier
        self.burst_max, default_daily = TIERS[tier]
        self.daily_limit = daily_limit or default_daily
        self.access_token = access_token or "sandbox-hubspot-" + str(uuid.uuid4())  # not a real token format, on purpose
        self.search_lag_seconds = float(search_lag_seconds)
        #: the portal (Hub) id GET /account-info/v3/details answers; record URLs in the UI carry it
        self.portal_id = PORTAL_ID
        #: (type, id) -> (from stamp, seconds): a fixed index delay for a record's versions from then on (tests)
        self.index_delays: dict[tuple[str, str], tuple[str, float]] = {}
        self._indexing: deque[tuple[str, str, str]] = deque()  # (expires, type, id) of stale snapshots
        self._search_hooks: list[list] = []  # [searches left, action]: someone edits the CRM mid-pull (tests)
        self.lock = threading.RLock()
        self.props = schema.hubspot_properties()
        self.groups: dict[str, dict[str, dict]] = {
            t: {schema.HS_GROUP[t]: {"name": schema.HS_GROUP[t], "label": schema.HS_GROUP[t].title(),
                                     "displayOrder": -1, "archived": False}} for t in schema.HS_OBJECTS}
        self.objects: dict[str, dict[str, dict]] = {t: {} for t in schema.HS_OBJECTS}
        self.order: dict[str, list[int]] = {t: [] for t in schema.HS_OBJECTS}
        self.assoc: dict[tuple[str, str], dict[str, dict[str, frozenset]]] = {}
        self._seed_fwd: dict[tuple[str, str], dict[str, str]] = {}  # seeded links not yet touched (link_many)
        self._seed_back: dict[tuple[str, str], dict[str, list[str]]] = {}
        self.owners: list[dict] = []
        self._next_id = {"companies": 4_000_000_001, "deals": 8_000_000_001, "tickets": 2_000_000_001,
                         "tasks": 6_000_000_001}
        self._window: deque[float] = deque()
        self._search_window: deque[float] = deque()
        self.used_today = 0
        self._day = clock.now().date()
        self.base_url = ""
        self._routes()

    # --- plumbing ---------------------------------------------------------------------------
    def _routes(self) -> None:
        r = self.router.add
        o = r"/crm/v3/objects/(?P<type>[\w-]+)"
        r("POST", o + r"/search/?", self.search, "POST /crm/v3/objects/{type}/search")
        r("POST", o + r"/batch/(?P<op>read|create|update|upsert|archive)/?", self.batch,
          "POST /crm/v3/objects/{type}/batch/{op}")
        r("GET", o + r"/?", self.list, "GET /crm/v3/objects/{type}")
        r("POST", o + r"/?", self.create, "POST /crm/v3/objects/{type}")
        r("GET", o + r"/(?P<id>[^/]+)/?", self.get, "GET /crm/v3/objects/{type}/{id}")
        r("PATCH", o + r"/(?P<id>[^/]+)/?", self.update, "PATCH /crm/v3/objects/{type}/{id}")
        r("DELETE", o + r"/(?P<id>[^/]+)/?", self.archive, "DELETE /crm/v3/objects/{type}/{id}")
        p = r"/crm/v3/properties/(?P<type>[\w-]+)"
        r("GET", p + r"/groups/?", self.groups_list, "GET /crm/v3/properties/{type}/groups")
        r("POST", p + r"/groups/?", self.group_create, "POST /crm/v3/properties/{type}/groups")
        r("GET", p + r"/groups/(?P<name>[^/]+)/?", self.group_get, "GET /crm/v3/properties/{type}/groups/{name}")
        r("POST", p + r"/batch/create/?", self.property_batch_create, "POST /crm/v3/properties/{type}/batch/create")
        r("GET", p + r"/?", self.properties_list, "GET /crm/v3/properties/{type}")
        r("POST", p + r"/?", self.property_create, "POST /crm/v3/properties/{type}")
        r("GET", p + r"/(?P<name>[^/]+)/?", self.property_get, "GET /crm/v3/properties/{type}/{name}")
        r("GET", r"/account-info/v3/details/?", self.account_details, "GET /account-info/v3/details")
        r("GET", r"/crm/v3/owners/?", self.owners_list, "GET /crm/v3/owners")
        r("GET", r"/crm/v3/owners/(?P<id>[^/]+)/?", self.owner_get, "GET /crm/v3/owners/{id}")
        a = r"/crm/v4/objects/(?P<from>[\w-]+)/(?P<id>\d+)/associations"
        r("PUT", a + r"/default/(?P<to>[\w-]+)/(?P<to_id>\d+)/?", self.assoc_default,
          "PUT /crm/v4/objects/{from}/{id}/associations/default/{to}/{toId}")
        r("PUT", a + r"/(?P<to>[\w-]+)/(?P<to_id>\d+)/?", self.assoc_create,
          "PUT /crm/v4/objects/{from}/{id}/associations/{to}/{toId}")
        r("DELETE", a + r"/(?P<to>[\w-]+)/(?P<to_id>\d+)/?", self.assoc_delete,
          "DELETE /crm/v4/objects/{from}/{id}/associations/{to}/{toId}")
        r("GET", a + r"/(?P<to>[\w-]+)/?", self.assoc_list, "GET /crm/v4/objects/{from}/{id}/associations/{to}")
        b = r"/crm/v4/associations/(?P<from>[\w-]+)/(?P<to>[\w-]+)/batch"
        r("POST", b + r"/read/?", self.assoc_batch_read, "POST /crm/v4/associations/{from}/{to}/batch/read")
        r("POST", b + r"/create/?", self.assoc_batch_create, "POST /crm/v4/associations/{from}/{to}/batch/create")
        r("POST", b + r"/associate/default/?", self.assoc_batch_default,
          "POST /crm/v4/associations/{from}/{to}/batch/associate/default")

    def fault_response(self, decision: FaultDecision) -> Response:
        if decision.status == 429:
            return self._rate_limited("TEN_SECONDLY_ROLLING", decision.retry_after)
        return hs_error(decision.status, "INTERNAL_ERROR" if decision.status == 500 else "SERVICE_UNAVAILABLE",
                        "internal error" if decision.status == 500 else "Service unavailable")

    def _rate_limited(self, policy: str, retry_after: int | None = 1) -> Response:
        label = {"TEN_SECONDLY_ROLLING": "ten_secondly_rolling", "SECONDLY": "secondly", "DAILY": "daily"}[policy]
        body = {"status": "error", "message": f"You have reached your {label} limit.", "errorType": "RATE_LIMIT",
                "correlationId": str(uuid.uuid4()), "policyName": policy, "groupName": "api"}
        # no Retry-After on DAILY: urllib3 honours it by default and would sleep until the quota resets
        return Response.json(429, body, {} if retry_after is None else {"Retry-After": str(retry_after)})

    def not_found(self, req: Request, method_mismatch: bool) -> Response:
        if method_mismatch:
            return hs_error(405, "METHOD_NOT_ALLOWED", f"{req.method} is not allowed here")
        return hs_error(404, "OBJECT_NOT_FOUND", f"resource not found: {req.path}")

    def dispatch(self, req: Request) -> tuple[Response, str]:
        auth = req.header("authorization") or ""
        if auth != f"Bearer {self.access_token}":
            return hs_error(401, "INVALID_AUTHENTICATION",
                            "Authentication credentials not found. This API supports OAuth 2.0 authentication and "
                            "you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"), \
                self.endpoint_of(req)
        is_search = req.path.endswith("/search") or req.path.endswith("/search/")
        req.params["_search"] = is_search
        now = time.monotonic()
        with self.lock:
            today = self.clock.now().date()
            if today != self._day:
                self._day, self.used_today = today, 0
            if self.used_today >= self.daily_limit:
                return self._rate_limited("DAILY", None), self.endpoint_of(req)
            if is_search:
                while self._search_window and now - self._search_window[0] >= 1.0:
                    self._search_window.popleft()
                if len(self._search_window) >= SEARCH_PER_SECOND:
                    return self._rate_limited("SECONDLY"), self.endpoint_of(req)
                self._search_window.append(now)
            else:
                while self._window and now - self._window[0] >= 10.0:
                    self._window.popleft()
                if len(self._window) >= self.burst_max:
                    return self._rate_limited("TEN_SECONDLY_ROLLING"), self.endpoint_of(req)
                self._window.append(now)
            self.used_today += 1
        return super().dispatch(req)

    def finalize(self, req: Request, resp: Response) -> None:
        if req.params.get("_search"):
            return  # crm-api-notes 2.4: search responses carry no rate-limit headers
        with self.lock:
            now = time.monotonic()
            in_window = sum(1 for t in self._window if now - t < 10.0)
            in_second = sum(1 for t in self._window if now - t < 1.0)
            resp.headers.update({
                "X-HubSpot-RateLimit-Daily": str(self.daily_limit),
                "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - self.used_today)),
                "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
                "X-HubSpot-RateLimit-Max": str(self.burst_max),
                "X-HubSpot-RateLimit-Remaining": str(max(0, self.burst_max - in_window)),
                "X-HubSpot-RateLimit-Secondly": str(self.burst_max // 10),
                "X-HubSpot-RateLimit-Secondly-Remaining": str(max(0, self.burst_max // 10 - in_second)),
            })

    def reset_rate_windows(self) -> None:
        with self.lock:
            self._window.clear()
            self._search_window.clear()

    # --- helpers -------------------------------------------------------------------------------
    def _type(self, name: str) -> str:
        t = TYPE_ALIASES.get(name.lower())
        if t is None:
            raise HttpError(hs_error(400, "VALIDATION_ERROR", f"Unable to infer object type from: {name}"))
        return t

    def _body(self, req: Request) -> Any:
        try:
            body = req.json()
        except (ValueError, UnicodeDecodeError):
            raise HttpError(hs_error(400, "VALIDATION_ERROR", "Invalid input JSON on line 1"))
        return {} if body is None else body

    def new_id(self, t: str) -> str:
        n = self._next_id[t]
        self._next_id[t] = n + 1
        return str(n)

    def _validate(self, t: str, values: dict, existing: dict | None) -> tuple[dict, list[dict]]:
        """-> (normalized string values, [{"name","error","message"}])."""
        out, errors = {}, []
        props = self.props[t]
        for name, value in (values or {}).items():
            p = props.get(name)
            if p is None:
                errors.append({"name": name, "error": "PROPERTY_DOESNT_EXIST",
                               "message": f'Property "{name}" does not exist'})
                continue
            if p.read_only and name != "hs_object_id":
                errors.append({"name": name, "error": "READ_ONLY_VALUE",
                               "message": f"{name} is a read only property; its value cannot be set."})
                continue
            if name == "hs_object_id":
                continue
            if value is None or value == "":
                out[name] = ""
                continue
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if p.type == "number":
                if _num(text) is None:
                    errors.append({"name": name, "error": "INVALID_FLOAT",
                                   "message": f"{text} was not a valid number."})
                    continue
                text = _fmt_num(float(text))
            elif p.type == "bool":
                if text.lower() not in ("true", "false"):
                    errors.append({"name": name, "error": "INVALID_BOOLEAN",
                                   "message": f"{text} was not a valid boolean."})
                    continue
                text = text.lower()
            elif p.type == "datetime":
                try:
                    text = hs_datetime(parse_datetime(text))
                except ValueError:
                    errors.append({"name": name, "error": "INVALID_DATETIME",
                                   "message": f"{text} was not a valid datetime (epoch milliseconds or ISO-8601)."})
                    continue
            elif p.type == "date":
                try:
                    d = parse_datetime(text)
                    if (d.hour, d.minute, d.second) != (0, 0, 0):
                        raise ValueError
                    text = d.strftime("%Y-%m-%d")
                except ValueError:
                    errors.append({"name": name, "error": "INVALID_DATE",
                                   "message": f"{text} is not a valid date (midnight UTC)."})
                    continue
            elif p.type == "enumeration" and p.options:
                allowed = {o["value"] for o in p.options}
                if any(v not in allowed for v in text.split(";")):
                    errors.append({"name": name, "error": "INVALID_OPTION",
                                   "message": f"{text} was not one of the allowed options: "
                                              f"{', '.join(sorted(allowed))}"})
                    continue
            if name == "hubspot_owner_id" and not any(o["id"] == text for o in self.owners):
                errors.append({"name": name, "error": "INVALID_OWNER_ID",
                               "message": f"No owner with id {text} exists."})
                continue
            if p.unique:
                holder = self._find_by(t, name, text)
                if holder is not None and (existing is None or holder["id"] != existing["id"]):
                    errors.append({"name": name, "error": "DUPLICATE_UNIQUE_VALUE",
                                   "message": f"A {_SINGULAR[t]} with {name} '{text}' already exists. "
                                              f"Existing ID: {holder['id']}", "existing_id": holder["id"]})
                    continue
            out[name] = text
        if t == "tasks" and existing is None and not (out.get("hs_timestamp")):
            errors.append({"name": "hs_timestamp", "error": "REQUIRED_PROPERTY",
                           "message": "hs_timestamp is required to create a task"})
        return out, errors

    def _validation_error(self, errors: list[dict]) -> Response:
        if any(e["error"] == "DUPLICATE_UNIQUE_VALUE" for e in errors):
            e = next(e for e in errors if e["error"] == "DUPLICATE_UNIQUE_VALUE")
            return hs_error(409, "CONFLICT", e["message"])
        detail = json.dumps([{"isValid": False, "message": e["message"], "error": e["error"], "name": e["name"]}
                              for e in errors])
        return hs_error(400, "VALIDATION_ERROR", f"Property values were not valid: {detail}",
                        errors=[{"message": e["message"], "code": e["error"],
                                 "context": {"propertyName": [e["name"]]}} for e in errors])

    def _find_by(self, t: str, prop: str, value: str) -> dict | None:
        for rec in self.objects[t].values():
            if not rec["archived"] and rec["properties"].get(prop) == value:
                return rec
        return None

    def insert(self, t: str, values: dict, created_at: datetime | None = None) -> dict:
        """Insert already-valid string values (seeding and create)."""
        now = self.clock.now()
        rid = self.new_id(t)
        created = hs_datetime(created_at or now)
        stamp = hs_datetime(now)
        props = {k: v for k, v in values.items() if v is not None}
        props.update({"hs_object_id": rid, "createdate": created, "hs_lastmodifieddate": stamp})
        if t == "tasks":
            props["hs_createdate"] = created
        rec = {"id": rid, "properties": props, "createdAt": created, "updatedAt": stamp, "archived": False}
        self.objects[t][rid] = rec
        self.order[t].append(int(rid))
        return rec

    def insert_columns(self, t: str, cols: dict, n: int, created: list | None = None,
                       stamps: list[str] | None = None) -> list[str]:
        """Seed `n` records given as string-valued columns (lists or itertools.repeat).

        `stamps` are the records' modification times (HubSpot datetime strings), default now;
        `created` their creation times (None entries and the default: their modification time).
        """
        now = hs_datetime(self.clock.now())
        first = self._next_id[t]
        self._next_id[t] = first + n
        ids = [str(i) for i in range(first, first + n)]
        stamp_col = list(stamps) if stamps is not None else repeat(now)
        cols = dict(cols)
        if created is not None:
            cols["createdate"] = [s if c is None else c for c, s in zip(created, stamps or repeat(now))]
        else:
            cols["createdate"] = stamp_col
        cols["hs_object_id"] = ids
        cols["hs_lastmodifieddate"] = stamp_col
        names = list(cols)
        props = list(map(dict, map(zip, repeat(names), zip(*cols.values()))))
        self.objects[t].update((rid, {"id": rid, "properties": p, "createdAt": p["createdate"],
                                      "updatedAt": p["hs_lastmodifieddate"], "archived": False})
                               for rid, p in zip(ids, props))
        self.order[t].extend(range(first, first + n))
        return ids

    def link_many(self, from_t: str, from_ids: list[str], to_t: str, to_ids: list[str | None]) -> None:
        """Default associations for many pairs (seeding); a None target is skipped.

        Kept in two flat dicts and moved into `self.assoc` the first time either end is touched
        (`links`), so seeding 1.5 million deal/ticket links costs one dict insert per pair.
        """
        fwd = self._seed_fwd.setdefault((from_t, to_t), {})
        back = self._seed_back.setdefault((to_t, from_t), {})
        for fid, tid in zip(from_ids, to_ids):
            if tid is None:
                continue
            fwd[fid] = tid
            ids = back.get(tid)
            if ids is None:
                back[tid] = [fid]
            else:
                ids.append(fid)

    def links(self, t: str, rid: str) -> dict[str, dict[str, frozenset]]:
        """All associations of one record: {to_type: {to_id: frozenset(type ids)}} (materialises seeded ones)."""
        mine = self.assoc.get((t, rid))
        for (f, to_t), pairs in self._seed_fwd.items():
            if f == t and rid in pairs:
                tid = pairs.pop(rid)
                mine = self.assoc.setdefault((t, rid), {})
                mine.setdefault(to_t, {})[tid] = frozenset((ASSOC_TYPES[(t, to_t)][0],))
                self._seed_back[(to_t, t)][tid].remove(rid)
                self.assoc.setdefault((to_t, tid), {}).setdefault(t, {})[rid] = frozenset((ASSOC_TYPES[(to_t, t)][0],))
        for (f, to_t), groups in self._seed_back.items():
            if f == t and groups.get(rid):
                type_set = frozenset((ASSOC_TYPES[(t, to_t)][0],))
                inverse = frozenset((ASSOC_TYPES[(to_t, t)][0],))
                mine = self.assoc.setdefault((t, rid), {})
                targets = mine.setdefault(to_t, {})
                for other in groups.pop(rid):
                    targets[other] = type_set
                    self._seed_fwd[(to_t, t)].pop(other, None)
                    self.assoc.setdefault((to_t, other), {}).setdefault(t, {})[rid] = inverse
        return mine if mine is not None else {}

    def apply_update(self, t: str, rec: dict, values: dict, stamp: str | None = None) -> dict:
        """Write `values` on a live record; its modification time moves to now (or `stamp`)."""
        stamp = stamp or hs_datetime(self.clock.now())
        self._keep_indexed_version(t, rec, stamp)
        for k, v in values.items():
            if v in ("", None):
                rec["properties"].pop(k, None)
            else:
                rec["properties"][k] = v
        rec["properties"]["hs_lastmodifieddate"] = stamp
        rec["updatedAt"] = stamp
        return rec

    def archive_record(self, t: str, rec: dict) -> None:
        stamp = hs_datetime(self.clock.now())
        rec["archived"] = True
        rec["archivedAt"] = stamp
        rec["updatedAt"] = stamp
        rec["properties"]["hs_lastmodifieddate"] = stamp

    def associate(self, from_t: str, from_id: str, to_t: str, to_id: str, type_id: int | None = None) -> None:
        pair = ASSOC_TYPES.get((from_t, to_t))
        if pair is None:
            raise HttpError(hs_error(400, "VALIDATION_ERROR", f"{from_t} cannot be associated with {to_t}"))
        fwd, inv = pair if type_id is None or type_id == pair[0] else (type_id, pair[1])
        self.links(from_t, from_id)
        self.links(to_t, to_id)
        fwd_links = self.assoc.setdefault((from_t, from_id), {}).setdefault(to_t, {})
        fwd_links[to_id] = frozenset(fwd_links.get(to_id, frozenset()) | {fwd})
        inv_links = self.assoc.setdefault((to_t, to_id), {}).setdefault(from_t, {})
        inv_links[from_id] = frozenset(inv_links.get(from_id, frozenset()) | {inv})

    # --- search index (BEHAVIOR.md "Search index lag") ----------------------------------------
    def _lagging(self) -> bool:
        return bool(self.search_lag_seconds or self.index_delays)

    def index_delay(self, t: str, rid: str, stamp: str) -> float:
        """Seconds after `stamp` until that version of the record is searchable.

        HubSpot only says it "may take a few moments"; each version waits a pseudo-random
        share of `search_lag_seconds` (fixed per record and stamp), so records can become
        searchable out of modification order. `delay_indexing` pins it for one record (tests).
        """
        fixed = self.index_delays.get((t, rid))
        if fixed is not None and stamp >= fixed[0]:
            return fixed[1]
        if not self.search_lag_seconds:
            return 0.0
        return self.search_lag_seconds * (zlib.crc32(f"{rid}@{stamp}".encode()) % 1000) / 1000.0

    def delay_indexing(self, t: str, rid: str, seconds: float) -> None:
        """Versions of one record written from now on become searchable `seconds` after their write."""
        with self.lock:
            self.index_delays[(self._type(t), rid)] = (hs_datetime(self.clock.now()), float(seconds))

    def _indexed_at(self, t: str, rid: str, stamp: str) -> str:
        delay = self.index_delay(t, rid, stamp)
        return stamp if not delay else hs_datetime(parse_datetime(stamp) + timedelta(seconds=delay))

    def _keep_indexed_version(self, t: str, rec: dict, stamp: str) -> None:
        """Before a record changes, keep the version search still answers with until the new one is indexed."""
        if not self._lagging():
            return
        self._forget_indexed_versions(stamp)
        if self._indexed_at(t, rec["id"], rec["updatedAt"]) <= stamp:
            rec["_indexed"] = (rec["updatedAt"], rec["properties"])
        rec["properties"] = dict(rec["properties"])  # copy on write: the snapshot keeps the old dict
        self._indexing.append((self._indexed_at(t, rec["id"], stamp), t, rec["id"]))

    def _forget_indexed_versions(self, now: str) -> None:
        """Drop the kept versions of records whose current version is searchable by now (bounded memory)."""
        for _ in range(len(self._indexing)):
            if not self._indexing or self._indexing[0][0] > now:
                return
            _, t, rid = self._indexing.popleft()
            rec = self.objects[t].get(rid)
            if rec is None or "_indexed" not in rec:
                continue
            ready = self._indexed_at(t, rid, rec["updatedAt"])
            if ready <= now:
                del rec["_indexed"]
            else:
                self._indexing.append((ready, t, rid))

    def _searchable(self, t: str, rec: dict, now: str, settled: str) -> dict | None:
        """The version of `rec` the search index holds at `now` (None: not searchable)."""
        if rec["archived"]:
            return None
        if rec["updatedAt"] <= settled or self._indexed_at(t, rec["id"], rec["updatedAt"]) <= now:
            return rec
        kept = rec.get("_indexed")
        if kept is None:
            return None
        return {"id": rec["id"], "properties": kept[1], "createdAt": rec["createdAt"], "updatedAt": kept[0],
                "archived": False}

    def touch_many(self, t: str, ids: list[str], values: dict | None = None) -> str:
        """Update many records at ONE modification time, as HubSpot's imports and workflows do; returns it."""
        stamp = hs_datetime(self.clock.now())
        with self.lock:
            recs = []
            for rid in ids:
                rec = self.objects[t].get(rid)
                if rec is None or rec["archived"]:
                    raise KeyError(f"hubspot {t} {rid} does not exist")
                recs.append(rec)
            checked, errors = self._validate(t, dict(values or {}), recs[0] if recs else None)
            if errors:
                raise ValueError(f"hubspot {t}: {errors[0]['error']}: {errors[0]['message']}")
            for rec in recs:
                self.apply_update(t, rec, checked, stamp)
        return stamp

    def _present(self, t: str, rec: dict, props: list[str] | None, assoc: list[str] | None = None) -> dict:
        names = props if props else schema.HS_DEFAULT_PROPERTIES[t]
        names = list(dict.fromkeys(list(names) + ["createdate", "hs_lastmodifieddate", "hs_object_id"]))
        out = {"id": rec["id"], "properties": {n: rec["properties"].get(n) for n in names},
               "createdAt": rec["createdAt"], "updatedAt": rec["updatedAt"], "archived": rec["archived"]}
        if rec.get("archivedAt"):
            out["archivedAt"] = rec["archivedAt"]
        if assoc:
            links = {}
            for a in assoc:
                to_t = TYPE_ALIASES.get(a.lower())
                if to_t is None:
                    continue
                targets = self.links(t, rec["id"]).get(to_t, {})
                results = []
                for tid, types in targets.items():
                    for type_id in sorted(types):
                        results.append({"id": tid, "type": f"{_SINGULAR[t]}_to_{_SINGULAR[to_t]}"
                                        if type_id == ASSOC_TYPES[(t, to_t)][0] else str(type_id)})
                if results:
                    links[a] = {"results": results}
            if links:
                out["associations"] = links
        return out

    def _live(self, t: str, rid: str, id_property: str | None = None, archived: bool = False) -> dict:
        rec = self._find_by(t, id_property, rid) if id_property and id_property != "hs_object_id" \
            else self.objects[t].get(rid)
        if rec is None or rec["archived"] != archived:
            raise HttpError(hs_error(404, "OBJECT_NOT_FOUND", "Object not found.  objectId are usually numeric."))
        return rec

    @staticmethod
    def _flag(req: Request, name: str) -> bool:
        return (req.arg(name) or "false").lower() == "true"

    # --- objects -------------------------------------------------------------------------------
    def list(self, req: Request) -> Response:
        t = self._type(req.params["type"])
        limit = int(req.arg("limit") or 10)
        if not 1 <= limit <= LIST_MAX:
            return hs_error(400, "VALIDATION_ERROR", f"limit must be between 1 and {LIST_MAX}, got {limit}")
        after = req.arg("after")
        archived = self._flag(req, "archived")
        props, assoc = req.args("properties"), req.args("associations")
        with self.lock:
            ids = self.order[t]
            start = bisect_left(ids, int(after)) if after and after.isdigit() else 0
            page, next_after = [], None
            for i in range(start, len(ids)):
                rec = self.objects[t][str(ids[i])]
                if rec["archived"] != archived:
                    continue
                if len(page) == limit:
                    next_after = str(ids[i])
                    break
                page.append(self._present(t, rec, props, assoc))
        body: dict[str, Any] = {"results": page}
        if next_after:
            body["paging"] = {"next": {"after": next_after,
                                       "link": f"{self.base_url}/crm/v3/objects/{t}?after={next_after}"}}
        return Response.json(200, body)

    def get(self, req: Request) -> Response:
        t = self._type(req.params["type"])
        with self.lock:
            rec = self._live(t, req.params["id"], req.arg("idProperty"), self._flag(req, "archived"))
            return Response.json(200, self._present(t, rec, req.args("properties"), req.args("associations")))

    def _inline_associations(self, t: str, items: Any) -> list[tuple[str, str, int]]:
        out = []
        for a in items or []:
            to_id = str(((a or {}).get("to") or {}).get("id", ""))
            for spec in (a or {}).get("types") or []:
                type_id = int(spec.get("associationTypeId", 0))
                pair = TYPE_ID_PAIRS.get(type_id)
                if pair is None or pair[0] != t:
                    raise HttpError(hs_error(400, "VALIDATION_ERROR",
                                             f"association type {type_id} is not valid from {t}"))
                if to_id not in self.objects[pair[1]] or self.objects[pair[1]][to_id]["archived"]:
                    raise HttpError(hs_error(400, "VALIDATION_ERROR",
                                             f"{pair[1]} {to_id} does not exist (association {type_id})"))
                out.append((pair[1], to_id, type_id))
        return out

    def create(self, req: Request) -> Response:
        t = self._type(req.params["type"])
        body = self._body(req)
        with self.lock:
            values, errors = self._validate(t, body.get("properties") or {}, None)
            if errors:
                return self._validation_error(errors)
            links = self._inline_associations(t, body.get("associations"))
            rec = self.insert(t, values)
            for to_t, to_id, type_id in links:
                self.associate(t, rec["id"], to_t, to_id, type_id)
            return Response.json(201, self._present(t, rec, list(values) or None))

    def update(self, req: Request) -> Response:
        t = self._type(req.params["type"])
        body = self._body(req)
        with self.lock:
            rec = self._live(t, req.params["id"], req.arg("idProperty"))
            values, errors = self._validate(t, body.get("properties") or {}, rec)
            if errors:
                return self._validation_error(errors)
            self.apply_update(t, rec, values)
            return Response.json(200, self._present(t, rec, list(values) or None))

    def archive(self, req: Request) -> Response:
        t = self._type(req.params["type"])
        with self.lock:
            rec = self.objects[t].get(req.params["id"])
            if rec is not None and not rec["archived"]:
                self.archive_record(t, rec)
        return Response(204)

    # --- batch ---------------------------------------------------------------------------------
    def _batch_envelope(self, results: list, errors: list, started: str) -> Response:
        body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": started,
                                "completedAt": hs_datetime(self.clock.now())}
        if errors:
            body["numErrors"] = len(errors)
            body["errors"] = errors
            return Response.json(207, body)
        return body  # type: ignore[return-value]

    def _not_found_error(self, t: str, ids: list[str]) -> dict:
        return {"status": "error", "category": "OBJECT_NOT_FOUND",
                "message": f"Could not get some {_SINGULAR[t].upper()} objects, they may be deleted or not exist. "
                           f"Check that ids are valid.", "context": {"ids": ids}}

    def batch(self, req: Request) -> Response:
        t = self._type(req.params["type"])
        op = req.params["op"]
        body = self._body(req)
        inputs = body.get("inputs")
        if not isinstance(inputs, list):
            return hs_error(400, "VALIDATION_ERROR", "inputs must be a list")
        if len(inputs) > BATCH_MAX:
            return hs_error(400, "VALIDATION_ERROR", f"Too many inputs: {len(inputs)}. The maximum is {BATCH_MAX}.",
                            context={"inputs": [str(len(inputs))]})
        started = hs_datetime(self.clock.now())
        with self.lock:
            resp = getattr(self, f"_batch_{op}")(t, body, inputs)
        if isinstance(resp, Response):
            return resp
        return Response.json(201 if op == "create" else 200, resp)

    def _batch_read(self, t, body, inputs):
        started = hs_datetime(self.clock.now())
        id_prop = body.get("idProperty")
        results, missing = [], []
        for it in inputs:
            rid = str((it or {}).get("id", ""))
            rec = self._find_by(t, id_prop, rid) if id_prop and id_prop != "hs_object_id" else self.objects[t].get(rid)
            if rec is None or rec["archived"]:
                missing.append(rid)
            else:
                results.append(self._present(t, rec, body.get("properties")))
        return self._batch_envelope(results, [self._not_found_error(t, missing)] if missing else [], started)

    def _batch_create(self, t, body, inputs):
        started = hs_datetime(self.clock.now())
        checked = []
        for it in inputs:
            values, errors = self._validate(t, (it or {}).get("properties") or {}, None)
            links = []
            if not errors:
                try:
                    links = self._inline_associations(t, (it or {}).get("associations"))
                except HttpError as e:
                    errors = [{"name": "associations", "error": "INVALID_ASSOCIATION",
                               "message": json.loads(e.response.body)["message"]}]
            checked.append((it or {}, values, links, errors))
        traced = all(it.get("objectWriteTraceId") for it, *_ in checked)
        if any(errs for *_, errs in checked) and not traced:
            # without objectWriteTraceId one bad input fails the whole batch (crm-api-notes 2.3)
            return self._validation_error(next(errs for *_, errs in checked if errs))
        results, errors = [], []
        for it, values, links, errs in checked:
            if errs:
                errors.append({"status": "error", "category": "VALIDATION_ERROR", "message": errs[0]["message"],
                               "context": {"objectWriteTraceId": [it.get("objectWriteTraceId")],
                                           "propertyName": [errs[0]["name"]]}})
                continue
            rec = self.insert(t, values)
            for to_t, to_id, type_id in links:
                self.associate(t, rec["id"], to_t, to_id, type_id)
            out = self._present(t, rec, list(values) or None)
            if it.get("objectWriteTraceId"):
                out["objectWriteTraceId"] = it["objectWriteTraceId"]
            results.append(out)
        return self._batch_envelope(results, errors, started)

    def _batch_update(self, t, body, inputs):
        started = hs_datetime(self.clock.now())
        found, missing = [], []
        for it in inputs:
            it = it or {}
            rid = str(it.get("id", ""))
            id_prop = it.get("idProperty")
            rec = self._find_by(t, id_prop, rid) if id_prop and id_prop != "hs_object_id" else self.objects[t].get(rid)
            if rec is None or rec["archived"]:
                missing.append(rid)
                continue
            values, errs = self._validate(t, it.get("properties") or {}, rec)
            if errs:
                return self._validation_error(errs)
            found.append((rec, values))
        results = [self._present(t, self.apply_update(t, rec, values), list(values) or None) for rec, values in found]
        return self._batch_envelope(results, [self._not_found_error(t, missing)] if missing else [], started)

    def _batch_upsert(self, t, body, inputs):
        started = hs_datetime(self.clock.now())
        prepared = []
        for it in inputs:
            it = it or {}
            id_prop = it.get("idProperty") or body.get("idProperty")
            p = self.props[t].get(id_prop or "")
            if p is None or not p.unique:
                return hs_error(400, "VALIDATION_ERROR",
                                f"Unable to perform update/upsert by non-unique {schema.HS_TYPE_IDS[t]} property "
                                f"{id_prop}")
            key = str(it.get("id", ""))
            rec = self._find_by(t, id_prop, key)
            props = dict(it.get("properties") or {})
            if rec is None:
                props[id_prop] = key
            values, errs = self._validate(t, props, rec)
            if errs:
                return self._validation_error(errs)
            prepared.append((rec, values))
        results = []
        for rec, values in prepared:
            new = rec is None
            rec = self.insert(t, values) if new else self.apply_update(t, rec, values)
            out = self._present(t, rec, list(values) or None)
            out["new"] = new
            results.append(out)
        return self._batch_envelope(results, [], started)

    def _batch_archive(self, t, body, inputs):
        for it in inputs:
            rec = self.objects[t].get(str((it or {}).get("id", "")))
            if rec is not None and not rec["archived"]:
                self.archive_record(t, rec)
        return Response(204)

    # --- search --------------------------------------------------------------------------------
    def search(self, req: Request) -> Response:
        """POST .../search: filter, ONE sort, offset paging over a result set recomputed per request."""
        t = self._type(req.params["type"])
        body = self._body(req)
        try:
            limit = int(body.get("limit") or 10)
            after = int(body.get("after") or 0)
        except (TypeError, ValueError):
            return hs_error(400, "VALIDATION_ERROR", "limit and after must be integers")
        if not 1 <= limit <= SEARCH_MAX:
            return hs_error(400, "VALIDATION_ERROR", f"limit must be between 1 and {SEARCH_MAX}, got {limit}")
        if after < 0 or after + limit > SEARCH_CAP:
            return hs_error(400, "VALIDATION_ERROR",
                            f"The search endpoints are limited to {SEARCH_CAP} total results for any given query; "
                            f"after={after} limit={limit} pages beyond it.")
        groups = body.get("filterGroups") or []
        n_filters = sum(len(g.get("filters") or []) for g in groups)
        if (len(groups) > SEARCH_GROUPS or any(len(g.get("filters") or []) > SEARCH_FILTERS_PER_GROUP for g in groups)
                or n_filters > SEARCH_FILTERS):
            return hs_error(400, "VALIDATION_ERROR",
                            f"Too many filters: at most {SEARCH_GROUPS} filterGroups, {SEARCH_FILTERS_PER_GROUP} "
                            f"filters per group and {SEARCH_FILTERS} filters in total.")
        sorts = body.get("sorts") or []
        if len(sorts) > 1:
            return hs_error(400, "VALIDATION_ERROR", "Only one sorting rule can be applied to any search.")
        try:
            preds = [[self._filter(t, f) for f in g.get("filters") or []] for g in groups]
        except ValueError as e:
            return hs_error(400, "VALIDATION_ERROR", str(e))
        text = (body.get("query") or "").lower()
        now_t = self.clock.now()
        now = hs_datetime(now_t)
        longest = max([self.search_lag_seconds, *(d for _, d in self.index_delays.values())]) if self._lagging() else 0.0
        settled = hs_datetime(now_t - timedelta(seconds=longest))
        with self.lock:
            self._forget_indexed_versions(now)
            rows = []
            for rec in self.objects[t].values():
                rec = self._searchable(t, rec, now, settled)
                if rec is None:
                    continue
                if preds and not any(all(p(rec["properties"]) for p in g) for g in preds):
                    continue
                if text and not any(v is not None and text in str(v).lower() for v in rec["properties"].values()):
                    continue
                rows.append(rec)
            if sorts:
                s = sorts[0]
                if isinstance(s, str):
                    name, desc = s.lstrip("-"), s.startswith("-")
                else:
                    name, desc = s.get("propertyName"), str(s.get("direction", "ASCENDING")).upper() == "DESCENDING"
                # ties come back in an order of HubSpot's choosing: here a hash of the id, NOT the id
                rows.sort(key=lambda r: zlib.crc32(r["id"].encode()))
                rows.sort(key=self._sort_key(t, name), reverse=desc)
            page = [self._present(t, r, body.get("properties")) for r in rows[after:after + limit]]
        out: dict[str, Any] = {"total": len(rows), "results": page}
        if after + limit < len(rows):
            out["paging"] = {"next": {"after": str(after + limit)}}
        self._run_search_hooks()
        return Response.json(200, out)

    def after_searches(self, n: int, action) -> None:
        """Run `action()` once the next `n` searches have been answered: a user editing records while a pull pages."""
        with self.lock:
            self._search_hooks.append([n, action])

    def _run_search_hooks(self) -> None:
        due = []
        with self.lock:
            for hook in self._search_hooks:
                hook[0] -= 1
                if hook[0] == 0:
                    due.append(hook[1])
            self._search_hooks = [h for h in self._search_hooks if h[0] > 0]
        for action in due:
            action()

    def _sort_key(self, t: str, name: str):
        p = self.props[t].get(name)
        if p is not None and p.type == "number":
            return lambda r: (_num(r["properties"].get(name)) is None, _num(r["properties"].get(name)) or 0.0)
        return lambda r: (r["properties"].get(name) is None, str(r["properties"].get(name) or "").lower())

    def _filter(self, t: str, f: dict):
        name, op = f.get("propertyName"), str(f.get("operator", "EQ")).upper()
        p = self.props[t].get(name or "")
        if p is None:
            raise ValueError(f"There was a problem with the request: property {name!r} does not exist on {t}")
        if op == "HAS_PROPERTY":
            return lambda props: props.get(name) not in (None, "")
        if op == "NOT_HAS_PROPERTY":
            return lambda props: props.get(name) in (None, "")

        def conv(v):
            if v is None:
                return None
            s = str(v).lower() if isinstance(v, bool) else str(v)
            if p.type == "number":
                n = _num(s)
                if n is None:
                    raise ValueError(f"{s!r} is not a number for property {name}")
                return n
            if p.type == "datetime":
                return hs_datetime(parse_datetime(s))
            if p.type == "date":
                return parse_datetime(s).strftime("%Y-%m-%d")
            return s.lower()

        def val(props):
            v = props.get(name)
            if v in (None, ""):
                return None
            return _num(v) if p.type == "number" else (v if p.type in ("datetime", "date") else str(v).lower())

        if op in ("IN", "NOT_IN"):
            values = {conv(v) for v in f.get("values") or []}
            return (lambda props: val(props) in values) if op == "IN" else (lambda props: val(props) not in values)
        if op == "BETWEEN":
            lo, hi = conv(f.get("value")), conv(f.get("highValue"))
            return lambda props: (v := val(props)) is not None and lo <= v <= hi
        if op in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
            token = str(f.get("value", "")).strip("*").lower()
            hit = lambda props: token in str(props.get(name) or "").lower()
            return hit if op == "CONTAINS_TOKEN" else (lambda props: not hit(props))
        target = conv(f.get("value"))
        ops = {"EQ": lambda v: v == target, "NEQ": lambda v: v != target, "LT": lambda v: v < target,
               "LTE": lambda v: v <= target, "GT": lambda v: v > target, "GTE": lambda v: v >= target}
        if op not in ops:
            raise ValueError(f"unsupported operator {op}")
        cmp = ops[op]
        if op == "NEQ":
            return lambda props: (v := val(props)) is None or cmp(v)
        return lambda props: (v := val(props)) is not None and cmp(v)

    # --- properties ----------------------------------------------------------------------------
    def properties_list(self, req: Request) -> Response:
        t = self._type(req.params["type"])
        with self.lock:
            return Response.json(200, {"results": [p.as_json() for p in self.props[t].values()]})

    def property_get(self, req: Request) -> Response:
        t = self._type(req.params["type"])
        p = self.props[t].get(req.params["name"])
        if p is None:
            return hs_error(404, "OBJECT_NOT_FOUND", f"property {req.params['name']} does not exist")
        return Response.json(200, p.as_json())

    _PAIRS = {"string": {"text", "textarea", "file", "html", "phonenumber"}, "number": {"number", "calculation_equation"},
              "date": {"date"}, "datetime": {"date"}, "bool": {"booleancheckbox", "calculation_equation"},
              "enumeration": {"select", "radio", "checkbox", "booleancheckbox", "calculation_equation"}}

    def _make_property(self, t: str, body: dict) -> schema.HsProperty | Response:
        missing = [k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)]
        if missing:
            return hs_error(400, "VALIDATION_ERROR", f"Missing required fields: {', '.join(missing)}")
        name = str(body["name"])
        if not name[0].isalpha() or name != name.lower() or not name.replace("_", "").isalnum():
            return hs_error(400, "VALIDATION_ERROR", f"Property name {name!r} must be lower case letters, digits "
                                                     f"and underscores, starting with a letter")
        if body["type"] not in self._PAIRS or body["fieldType"] not in self._PAIRS[body["type"]]:
            return hs_error(400, "VALIDATION_ERROR", f"fieldType {body['fieldType']!r} is not valid for type "
                                                     f"{body['type']!r}")
        if body["groupName"] not in self.groups[t]:
            return hs_error(400, "VALIDATION_ERROR", f"property group {body['groupName']!r} does not exist")
        if name in self.props[t]:
            return hs_error(409, "CONFLICT", f"Property named '{name}' already exists.",
                            subCategory="PropertyValidationError.PROPERTY_EXISTS")
        if body.get("hasUniqueValue") and t not in UNIQUE_PROPERTY_OBJECTS:
            # unique properties exist for companies, deals, tickets, contacts and custom objects only
            # (BEHAVIOR.md); the exact refusal is unverified, this is the stricter reading
            return hs_error(400, "VALIDATION_ERROR", f"hasUniqueValue is not supported for {t} properties "
                                                     f"(property {name!r})")
        return schema.HsProperty(name, body["type"], body["fieldType"], label=body["label"],
                                 group=body["groupName"], hubspot_defined=False,
                                 unique=bool(body.get("hasUniqueValue")), options=body.get("options") or [],
                                 description=body.get("description") or "",
                                 created_at=hs_datetime(self.clock.now()))

    def property_create(self, req: Request) -> Response:
        t = self._type(req.params["type"])
        with self.lock:
            p = self._make_property(t, self._body(req))
            if isinstance(p, Response):
                return p
            self.props[t][p.name] = p
        return Response.json(201, p.as_json())

    def property_batch_create(self, req: Request) -> Response:
        t = self._type(req.params["type"])
        started = hs_datetime(self.clock.now())
        results, errors = [], []
        with self.lock:
            for item in self._body(req).get("inputs") or []:
                p = self._make_property(t, item or {})
                if isinstance(p, Response):
                    e = json.loads(p.body)
                    errors.append({"status": "error", "category": e["category"], "message": e["message"],
                                   "context": {"name": [str((item or {}).get("name"))]}})
                    continue
                self.props[t][p.name] = p
                results.append(p.as_json())
        body = {"status": "COMPLETE", "results": results, "startedAt": started,
                "completedAt": hs_datetime(self.clock.now())}
        if errors:
            body.update(numErrors=len(errors), errors=errors)
            return Response.json(207, body)
        return Response.json(201, body)

    def groups_list(self, req: Request) -> Response:
        t = self._type(req.params["type"])
        return Response.json(200, {"results": list(self.groups[t].values())})

    def group_get(self, req: Request) -> Response:
        t = self._type(req.params["type"])
        g = self.groups[t].get(req.params["name"])
        if g is None:
            return hs_error(404, "OBJECT_NOT_FOUND", f"property group {req.params['name']} does not exist")
        return Response.json(200, g)

    def group_create(self, req: Request) -> Response:
        t = self._type(req.params["type"])
        body = self._body(req)
        if not body.get("name") or not body.get("label"):
            return hs_error(400, "VALIDATION_ERROR", "name and label are required")
        with self.lock:
            if body["name"] in self.groups[t]:
                return hs_error(409, "CONFLICT", f"A property group named '{body['name']}' already exists.")
            g = {"name": body["name"], "label": body["label"], "displayOrder": int(body.get("displayOrder", -1)),
                 "archived": False}
            self.groups[t][g["name"]] = g
        return Response.json(201, g)

    # --- account information -------------------------------------------------------------------
    def account_details(self, req: Request) -> Response:
        """The portal's details: every field the public schema marks required (BEHAVIOR.md)."""
        return Response.json(200, {
            "portalId": self.portal_id,
            "accountType": "STANDARD",
            "timeZone": "US/Eastern",
            "companyCurrency": "USD",
            "additionalCurrencies": [],
            "utcOffset": "-05:00",
            "utcOffsetMilliseconds": -18_000_000,
            "uiDomain": "app.hubspot.com",
            "dataHostingLocation": "na1",
        })

    # --- owners --------------------------------------------------------------------------------
    def owners_list(self, req: Request) -> Response:
        limit = int(req.arg("limit") or 100)
        if not 1 <= limit <= OWNERS_MAX:
            return hs_error(400, "VALIDATION_ERROR", f"limit must be between 1 and {OWNERS_MAX}")
        email = (req.arg("email") or "").lower()
        archived = self._flag(req, "archived")
        rows = [o for o in self.owners if o["archived"] == archived and (not email or o["email"].lower() == email)]
        start = int(req.arg("after") or 0)
        body: dict[str, Any] = {"results": rows[start:start + limit]}
        if start + limit < len(rows):
            body["paging"] = {"next": {"after": str(start + limit),
                                       "link": f"{self.base_url}/crm/v3/owners/?after={start + limit}"}}
        return Response.json(200, body)

    def owner_get(self, req: Request) -> Response:
        key = req.params["id"]
        by_user = (req.arg("idProperty") or "id") == "userId"
        for o in self.owners:
            if (str(o["userId"]) if by_user else o["id"]) == key:
                return Response.json(200, o)
        return hs_error(404, "OBJECT_NOT_FOUND", f"owner {key} not found")

    def add_owner(self, email: str, first: str, last: str) -> dict:
        n = len(self.owners) + 1
        stamp = hs_datetime(self.clock.now())
        owner = {"id": str(100_000_000 + n), "email": email, "firstName": first, "lastName": last,
                 "userId": 9_000_000 + n, "userIdIncludingInactive": 9_000_000 + n, "type": "PERSON",
                 "createdAt": stamp, "updatedAt": stamp, "archived": False, "teams": []}
        self.owners.append(owner)
        return owner

    # --- associations v4 -----------------------------------------------------------------------
    def _pair(self, req: Request) -> tuple[str, str, str, str]:
        f, t = self._type(req.params["from"]), self._type(req.params["to"])
        fid, tid = req.params["id"], req.params.get("to_id", "")
        if fid not in self.objects[f] or self.objects[f][fid]["archived"]:
            raise HttpError(hs_error(404, "OBJECT_NOT_FOUND", f"{_SINGULAR[f]} {fid} does not exist"))
        if tid and (tid not in self.objects[t] or self.objects[t][tid]["archived"]):
            raise HttpError(hs_error(404, "OBJECT_NOT_FOUND", f"{_SINGULAR[t]} {tid} does not exist"))
        return f, fid, t, tid

    def assoc_create(self, req: Request) -> Response:
        specs = self._body(req)
        with self.lock:
            f, fid, t, tid = self._pair(req)
            if not isinstance(specs, list) or not specs:
                return hs_error(400, "VALIDATION_ERROR", "body must be a list of association specs")
            for s in specs:
                type_id = int(s.get("associationTypeId", 0))
                if type_id != ASSOC_TYPES.get((f, t), (None,))[0] and str(s.get("associationCategory")) == "HUBSPOT_DEFINED":
                    return hs_error(400, "VALIDATION_ERROR", f"association type {type_id} is not valid between {f} and {t}")
                self.associate(f, fid, t, tid, type_id)
        return Response.json(201, {"fromObjectTypeId": schema.HS_TYPE_IDS[f], "fromObjectId": int(fid),
                                   "toObjectTypeId": schema.HS_TYPE_IDS[t], "toObjectId": int(tid), "labels": []})

    def assoc_default(self, req: Request) -> Response:
        with self.lock:
            f, fid, t, tid = self._pair(req)
            self.associate(f, fid, t, tid)
            type_id = ASSOC_TYPES[(f, t)][0]
        started = hs_datetime(self.clock.now())
        return Response.json(200, {"status": "COMPLETE", "results": [
            {"from": {"id": fid}, "to": {"id": tid},
             "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}}],
            "startedAt": started, "completedAt": started})

    def assoc_delete(self, req: Request) -> Response:
        with self.lock:
            f, t = self._type(req.params["from"]), self._type(req.params["to"])
            fid, tid = req.params["id"], req.params["to_id"]
            self.links(f, fid).get(t, {}).pop(tid, None)
            self.links(t, tid).get(f, {}).pop(fid, None)
        return Response(204)

    def _assoc_targets(self, f: str, fid: str, t: str) -> list[dict]:
        out = []
        for tid, types in self.links(f, fid).get(t, {}).items():
            if self.objects[t].get(tid, {}).get("archived"):
                continue
            out.append({"toObjectId": int(tid), "associationTypes": [
                {"category": "HUBSPOT_DEFINED", "typeId": ty, "label": None} for ty in sorted(types)]})
        return out

    def assoc_list(self, req: Request) -> Response:
        with self.lock:
            f, fid, t, _ = self._pair(req)
            return Response.json(200, {"results": self._assoc_targets(f, fid, t)})

    def assoc_batch_read(self, req: Request) -> Response:
        f, t = self._type(req.params["from"]), self._type(req.params["to"])
        inputs = self._body(req).get("inputs") or []
        if len(inputs) > ASSOC_READ_MAX:
            return hs_error(400, "VALIDATION_ERROR", f"Too many inputs: {len(inputs)}. The maximum is {ASSOC_READ_MAX}.")
        started = hs_datetime(self.clock.now())
        results, missing = [], []
        with self.lock:
            for it in inputs:
                fid = str((it or {}).get("id", ""))
                if fid not in self.objects[f]:
                    missing.append(fid)
                    continue
                targets = self._assoc_targets(f, fid, t)
                if targets:
                    results.append({"from": {"id": fid}, "to": targets})
        body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": started,
                                "completedAt": hs_datetime(self.clock.now())}
        if missing:
            body.update(numErrors=1, errors=[self._not_found_error(f, missing)])
            return Response.json(207, body)
        return Response.json(200, body)

    def assoc_batch_create(self, req: Request) -> Response:
        f, t = self._type(req.params["from"]), self._type(req.params["to"])
        inputs = self._body(req).get("inputs") or []
        started = hs_datetime(self.clock.now())
        results, errors = [], []
        with self.lock:
            for it in inputs:
                fid = str(((it or {}).get("from") or {}).get("id", ""))
                tid = str(((it or {}).get("to") or {}).get("id", ""))
                if fid not in self.objects[f] or tid not in self.objects[t]:
                    errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                                   "message": f"{fid} or {tid} does not exist", "context": {"ids": [fid, tid]}})
                    continue
                for s in (it or {}).get("types") or [{}]:
                    self.associate(f, fid, t, tid, s.get("associationTypeId"))
                results.append({"fromObjectTypeId": schema.HS_TYPE_IDS[f], "fromObjectId": int(fid),
                                "toObjectTypeId": schema.HS_TYPE_IDS[t], "toObjectId": int(tid), "labels": []})
        body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": started,
                                "completedAt": hs_datetime(self.clock.now())}
        if errors:
            body.update(numErrors=len(errors), errors=errors)
            return Response.json(207, body)
        return Response.json(201, body)

    def assoc_batch_default(self, req: Request) -> Response:
        f, t = self._type(req.params["from"]), self._type(req.params["to"])
        inputs = self._body(req).get("inputs") or []
        started = hs_datetime(self.clock.now())
        results = []
        with self.lock:
            for it in inputs:
                fid = str(((it or {}).get("from") or {}).get("id", ""))
                tid = str(((it or {}).get("to") or {}).get("id", ""))
                if fid in self.objects[f] and tid in self.objects[t]:
                    self.associate(f, fid, t, tid)
                    results.append({"from": {"id": fid}, "to": {"id": tid}, "associationSpec": {
                        "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": ASSOC_TYPES[(f, t)][0]}})
        return Response.json(200, {"status": "COMPLETE", "results": results, "startedAt": started,
                                   "completedAt": hs_datetime(self.clock.now())})
