"""Salesforce REST emulator: OAuth token, SOQL query/queryAll, sObjects, Collections, Bulk 2.0 ingest, Tooling.

Wire facts follow shared/reference/crm-api-notes.md §1 and §4; where the notes mark
something unverified, BEHAVIOR.md beside this file says which behaviour was picked.
Records live in memory, one dict per object keyed by Id, in insertion order. Every
error body is a JSON array (simple-salesforce indexes `[0]['errorCode']` on a 401).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
import secrets
import string
import threading
import time
from collections import OrderedDict
from itertools import repeat
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Callable
from urllib.parse import unquote_plus

from healthsync.connectors.sandbox import schema
from healthsync.connectors.sandbox.clock import Clock, parse_datetime, sf_datetime
from healthsync.connectors.sandbox.faults import FaultDecision, FaultInjector
from healthsync.connectors.sandbox.http_base import Api, HttpError, Request, Response, Router
from healthsync.connectors.sandbox.soql import NUMERIC, SoqlError, compile_where, parse, sort_records

V = r"/services/data/v(?P<version>\d+\.\d+)"
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
MAX_COLLECTION = 200  # crm-api-notes 1.6
DEFAULT_BATCH = 2000  # crm-api-notes 1.3
BATCH_MIN, BATCH_MAX = 200, 2000
#: deleted records stay in the Recycle Bin (queryAll, sobjects/{O}/deleted) this long, then are purged
RECYCLE_BIN_DAYS = 15
#: sobjects/{O}/deleted: the window may not start more than this many days before now
GET_DELETED_MAX_DAYS = 30
#: sobjects/{O}/deleted: at most this many ids per answer (EXCEEDED_ID_LIMIT above)
GET_DELETED_MAX_IDS = 600_000
#: Bulk 2.0 ingest jobs report UploadComplete/InProgress for this many status polls before JobComplete
DEFAULT_BULK_POLLS_IN_PROGRESS = 3
PERMISSION_SET_NAME = "Healthsync_Integration"


def sf_error(status: int, code: str, message: str, fields: list[str] | None = None,
             headers: dict | None = None) -> Response:
    item: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        item["fields"] = fields
    return Response.json(status, [item], headers)


def _checksum(id15: str) -> str:
    """The 3-character case-safe suffix that turns a 15-character id into 18."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    out = ""
    for chunk in (id15[0:5], id15[5:10], id15[10:15]):
        bits = sum(1 << i for i, c in enumerate(chunk) if "A" <= c <= "Z")
        out += alphabet[bits]
    return out


_PAIRS = [a + b for a in BASE62 for b in BASE62]
_UPPER_BITS = [(1 if "A" <= p[0] <= "Z" else 0) | ((1 if "A" <= p[1] <= "Z" else 0) << 1) for p in _PAIRS]
_CHECK = {}


def _chunk_check(chunk: str) -> str:
    c = _CHECK.get(chunk)
    if c is None:
        bits = sum(1 << i for i, ch in enumerate(chunk) if "A" <= ch <= "Z")
        c = _CHECK[chunk] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"[bits]
    return c


class IdFactory:
    """Realistic 18-character ids: 3-char key prefix, pod, counter in base 62, case-safe suffix."""

    def __init__(self, pod: str = "Hs") -> None:
        self._counters: dict[str, int] = {}
        self._lock = threading.Lock()
        self.pod = pod

    def __getstate__(self) -> dict:  # saved with the world (world.py); the lock is the process's
        return {"counters": dict(self._counters), "pod": self.pod}

    def __setstate__(self, state: dict) -> None:
        self._counters, self.pod, self._lock = dict(state["counters"]), state["pod"], threading.Lock()

    def new(self, prefix: str) -> str:
        return self.new_many(prefix, 1)[0]

    def new_many(self, prefix: str, count: int) -> list[str]:
        with self._lock:
            start = self._counters.get(prefix, 0) + 1
            self._counters[prefix] = start + count - 1
        head = prefix + self.pod + "0"
        c1 = _chunk_check(head[:5])
        h5 = 1 if "A" <= head[5] <= "Z" else 0
        pairs, upb, alpha = _PAIRS, _UPPER_BITS, "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
        out: list[str] = []
        n, stop = start, start + count
        while n < stop:
            # ids sharing everything but the last two base-62 digits are built from one prefix and a tail table
            block, r1_start = divmod(n, 3844)
            r1_stop = min(3844, r1_start + (stop - n))
            rest, r2 = divmod(block, 3844)
            rest, r3 = divmod(rest, 3844)
            rest, r4 = divmod(rest, 3844)
            d = BASE62[rest % 62]
            bits2 = h5 | ((1 if "A" <= d <= "Z" else 0) << 1) | (upb[r4] << 2) | ((upb[r3] & 1) << 4)
            base3 = (upb[r3] >> 1) | (upb[r2] << 1)
            stem = head + d + pairs[r4] + pairs[r3] + pairs[r2]
            fixed = c1 + alpha[bits2]
            out.extend([stem + pairs[r1] + fixed + alpha[base3 | (upb[r1] << 3)] for r1 in range(r1_start, r1_stop)])
            n += r1_stop - r1_start
        return out


@dataclass
class Session:
    token: str
    user_id: str
    uses: int = 0
    issued_at: float = 0.0


@dataclass
class WriteError:
    code: str
    message: str
    fields: list[str]

    def as_result(self) -> dict:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}


class SalesforceApi(Api):
    name = "salesforce"

    #: the port and open query cursors belong to the process (a cursor does not outlive a restart)
    PROCESS_ATTRS = Api.PROCESS_ATTRS | {"instance_url", "locators"}

    def __init__(self, clock: Clock, faults: FaultInjector | None, *, daily_limit: int = 100_000,
                 username: str = "integration@healthsync.sandbox", password: str | None = None,
                 consumer_key: str | None = None, session_timeout_s: float | None = None,
                 manage_permissions: bool = True, bulk_polls_in_progress: int = DEFAULT_BULK_POLLS_IN_PROGRESS,
                 recycle_bin_days: float = RECYCLE_BIN_DAYS) -> None:
        super().__init__(Router())
        self.clock, self.faults = clock, faults
        self.lock = threading.RLock()
        self.ids = IdFactory()
        self.fields = schema.salesforce_fields()
        self.records: dict[str, dict[str, dict]] = {o: {} for o in schema.SF_OBJECTS}
        self.ext_index: dict[tuple[str, str], dict[str, str]] = {}
        self.daily_limit = daily_limit
        self.used = 0
        self._usage_day = clock.now().date()
        self.username = username
        self.password = password or secrets.token_urlsafe(12)
        self.consumer_key = consumer_key or "3MVG9sandbox" + secrets.token_hex(8)
        self.session_timeout_s = session_timeout_s
        self.sessions: dict[str, Session] = {}
        self.locators: OrderedDict[str, tuple] = OrderedDict()
        self.jobs: dict[str, dict] = {}
        self.instance_url = ""  # set once the server has a port
        self.org_id = "00D" + "Hs0" + "000000001"
        self.org_id += _checksum(self.org_id)
        # the integration user may create permission sets and assign them (Manage Users /
        # Manage Profiles and Permission Sets); False = the admin must grant field access
        self.manage_permissions = manage_permissions
        self.bulk_polls_in_progress = max(0, int(bulk_polls_in_progress))
        self.recycle_bin = timedelta(days=recycle_bin_days)
        self._grants: dict[str, dict[tuple[str, str], bool]] | None = None  # user -> (obj, field) -> editable
        started = clock.now()
        # earliestDateAvailable: as in an org whose Recycle Bin has been purging for a while (nothing of
        # ours purged yet); it moves to the newest purged deletion as records age out
        self.earliest_deleted: dict[str, datetime] = {o: started - self.recycle_bin for o in schema.SF_OBJECTS}
        now = sf_datetime(started)
        # an administrator (no email, cannot log in): owns seeded data and the inspection endpoint's edits,
        # sees every field, and is "someone else" to the integration user (LastModifiedById)
        self.admin_user_id = self._insert_raw("User", {
            "Username": "admin@healthsync.sandbox", "Email": None, "Name": "Sandbox Admin", "FirstName": "Sandbox",
            "LastName": "Admin", "Title": "System Administrator", "IsActive": True}, now, "")
        self.records["User"][self.admin_user_id].update(CreatedById=self.admin_user_id, LastModifiedById=self.admin_user_id)
        self.integration_user_id = self._insert_raw("User", {
            "Username": username, "Email": username, "Name": "Healthsync Integration", "FirstName": "Healthsync",
            "LastName": "Integration", "Title": "Integration", "IsActive": True}, now)
        self.access_token = self.new_session(self.integration_user_id)
        self._routes()

    # --- plumbing ---------------------------------------------------------------------------
    def _routes(self) -> None:
        r = self.router.add
        r("POST", r"/services/oauth2/token", self.token, "POST /services/oauth2/token")
        r("GET", r"/services/oauth2/userinfo/?", self.userinfo, "GET /services/oauth2/userinfo")
        r("GET", r"/services/data/?", self.versions, "GET /services/data")
        r("GET", V + r"/?", self.resources, "GET /services/data/vXX.X")
        r("GET", V + r"/limits/?", self.limits, "GET limits")
        r("GET", V + r"/(?P<kind>query|queryAll)/?", self.query, "GET query")
        r("GET", V + r"/(?P<kind>query|queryAll)/(?P<locator>01g[A-Za-z0-9]+)-(?P<offset>\d+)", self.query_more,
          "GET query (next page)")
        r("GET", V + r"/sobjects/?", self.describe_global, "GET sobjects")
        r("GET", V + r"/sobjects/(?P<obj>\w+)/describe/?", self.describe, "GET sobjects/{O}/describe")
        r("GET", V + r"/sobjects/(?P<obj>\w+)/deleted/?", self.get_deleted, "GET sobjects/{O}/deleted")
        r("GET", V + r"/sobjects/(?P<obj>\w+)/?", self.metadata, "GET sobjects/{O}")
        r("POST", V + r"/sobjects/(?P<obj>\w+)/?", self.create, "POST sobjects/{O}")
        r("GET", V + r"/sobjects/(?P<obj>\w+)/(?P<id>[A-Za-z0-9]{15,18})/?", self.read, "GET sobjects/{O}/{Id}")
        r("PATCH", V + r"/sobjects/(?P<obj>\w+)/(?P<id>[A-Za-z0-9]{15,18})/?", self.update, "PATCH sobjects/{O}/{Id}")
        r("DELETE", V + r"/sobjects/(?P<obj>\w+)/(?P<id>[A-Za-z0-9]{15,18})/?", self.delete,
          "DELETE sobjects/{O}/{Id}")
        r("PATCH", V + r"/sobjects/(?P<obj>\w+)/(?P<field>\w+)/(?P<value>[^/]+)/?", self.upsert,
          "PATCH sobjects/{O}/{Field}/{value}")
        r("GET", V + r"/sobjects/(?P<obj>\w+)/(?P<field>\w+)/(?P<value>[^/]+)/?", self.read_by_external_id,
          "GET sobjects/{O}/{Field}/{value}")
        r("POST", V + r"/composite/sobjects/?", self.collection_create, "POST composite/sobjects")
        r("PATCH", V + r"/composite/sobjects/?", self.collection_update, "PATCH composite/sobjects")
        r("DELETE", V + r"/composite/sobjects/?", self.collection_delete, "DELETE composite/sobjects")
        r("PATCH", V + r"/composite/sobjects/(?P<obj>\w+)/(?P<field>\w+)/?", self.collection_upsert,
          "PATCH composite/sobjects/{O}/{Field}")
        r("POST", V + r"/jobs/ingest/?", self.job_create, "POST jobs/ingest")
        r("GET", V + r"/jobs/ingest/?", self.job_list, "GET jobs/ingest")
        r("PUT", V + r"/jobs/ingest/(?P<job>750\w+)/batches/?", self.job_upload, "PUT jobs/ingest/{id}/batches")
        r("PATCH", V + r"/jobs/ingest/(?P<job>750\w+)/?", self.job_state, "PATCH jobs/ingest/{id}")
        r("GET", V + r"/jobs/ingest/(?P<job>750\w+)/?", self.job_get, "GET jobs/ingest/{id}")
        r("DELETE", V + r"/jobs/ingest/(?P<job>750\w+)/?", self.job_delete, "DELETE jobs/ingest/{id}")
        r("GET", V + r"/jobs/ingest/(?P<job>750\w+)/(?P<which>successfulResults|failedResults|unprocessedrecords|unprocessedRecords)/?",
          self.job_results, "GET jobs/ingest/{id}/{results}")
        r("POST", V + r"/tooling/sobjects/CustomField/?", self.tooling_create_field,
          "POST tooling/sobjects/CustomField")

    def fault_exempt(self, req: Request) -> bool:
        return not req.path.startswith("/services/data/v")

    def fault_response(self, decision: FaultDecision) -> Response:
        if decision.status == 429:  # Salesforce REST has no 429 (crm-api-notes 1.7): a burst is a 503
            return sf_error(503, "SERVER_UNAVAILABLE", "Server temporarily unavailable, try again later",
                            headers={"Retry-After": str(decision.retry_after)})
        return sf_error(decision.status, "UNKNOWN_EXCEPTION" if decision.status == 500 else "SERVER_UNAVAILABLE",
                        "An unexpected error occurred. Please include this ErrorId if you contact support: "
                        "1234567890-12345 (-1234567890)")

    def not_found(self, req: Request, method_mismatch: bool) -> Response:
        if method_mismatch:
            return sf_error(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{req.method}' not allowed. ")
        return sf_error(404, "NOT_FOUND", "The requested resource does not exist")

    def finalize(self, req: Request, resp: Response) -> None:
        if req.path.startswith("/services/data/v"):
            resp.headers["Sforce-Limit-Info"] = f"api-usage={self.used}/{self.daily_limit}"

    def dispatch(self, req: Request) -> tuple[Response, str]:
        if req.path.startswith("/services/data/v"):
            denied = self._authorize(req)
            if denied is not None:
                return denied, self.endpoint_of(req)
        return super().dispatch(req)

    def _authorize(self, req: Request) -> Response | None:
        """Session check, then the daily quota (a refused request does not count)."""
        auth = req.header("authorization") or ""
        token = auth.split(" ", 1)[1].strip() if " " in auth else ""
        with self.lock:
            sess = self.sessions.get(token)
            expiry = self.faults.settings(self.name).session_expiry_after if self.faults else 0
            expired = sess is not None and (
                (expiry and sess.uses >= expiry)
                or (self.session_timeout_s and self.clock.now().timestamp() - sess.issued_at > self.session_timeout_s))
            if sess is None or expired:
                if expired:
                    del self.sessions[token]
                return sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
            sess.uses += 1
            today = self.clock.now().date()
            if today != self._usage_day:
                self._usage_day, self.used = today, 0
            if self.used >= self.daily_limit:
                return sf_error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            self.used += 1
            req.params["_user"] = sess.user_id
        return None

    def new_session(self, user_id: str) -> str:
        token = self.org_id[:15] + "!AR" + secrets.token_urlsafe(48).replace("-", "x").replace("_", "y")
        with self.lock:
            self.sessions[token] = Session(token, user_id, 0, self.clock.now().timestamp())
        return token

    # --- auth ----------------------------------------------------------------------------------
    def token(self, req: Request) -> Response:
        form = req.form()
        grant = form.get("grant_type", "")
        bad = Response.json(400, {"error": "invalid_grant", "error_description": "authentication failure"})
        if grant == "password":
            if form.get("client_id") != self.consumer_key:
                return Response.json(400, {"error": "invalid_client_id", "error_description": "client identifier invalid"})
            user = self._user_by_username(form.get("username", ""))
            if user is None or user["Id"] != self.integration_user_id or form.get("password") != self.password:
                return bad
            return self._token_response(user["Id"])
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            claims = _jwt_claims(form.get("assertion", ""))
            if claims is None:
                return Response.json(400, {"error": "invalid_grant", "error_description": "invalid assertion"})
            if claims.get("iss") != self.consumer_key:
                return Response.json(400, {"error": "invalid_client_id", "error_description": "client identifier invalid"})
            try:  # simple-salesforce sends exp as a string (crm-api-notes 1.1): accept both
                exp = float(claims.get("exp"))
            except (TypeError, ValueError):
                return Response.json(400, {"error": "invalid_grant", "error_description": "expired authorization code"})
            if exp < time.time():
                return Response.json(400, {"error": "invalid_grant", "error_description": "expired authorization code"})
            user = self._user_by_username(str(claims.get("sub", "")))
            if user is None:
                return Response.json(400, {"error": "invalid_grant", "error_description": "user hasn't approved this consumer"})
            return self._token_response(user["Id"])
        return Response.json(400, {"error": "unsupported_grant_type", "error_description": "grant type not supported"})

    def _user_by_username(self, username: str) -> dict | None:
        for u in self.records["User"].values():
            if u["Username"].lower() == username.lower() and u.get("IsActive", True):
                return u
        return None

    def _token_response(self, user_id: str) -> Response:
        tok = self.new_session(user_id)
        issued = str(int(time.time() * 1000))
        return Response.json(200, {
            "access_token": tok, "instance_url": self.instance_url,
            "id": f"https://login.salesforce.com/id/{self.org_id}/{user_id}", "token_type": "Bearer",
            "issued_at": issued, "scope": "api", "signature": base64.b64encode(secrets.token_bytes(32)).decode()})

    def userinfo(self, req: Request) -> Response:
        """OpenID Connect UserInfo: who the access token belongs to (`user_id`); not an API-quota call."""
        auth = req.header("authorization") or ""
        token = auth.split(" ", 1)[1].strip() if " " in auth else ""
        with self.lock:
            sess = self.sessions.get(token)
            user = self.records["User"].get(sess.user_id) if sess else None
        if user is None:
            return sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        return Response.json(200, {
            "sub": f"https://login.salesforce.com/id/{self.org_id}/{user['Id']}", "user_id": user["Id"],
            "organization_id": self.org_id, "preferred_username": user["Username"], "name": user.get("Name"),
            "email": user.get("Email"), "email_verified": True, "active": True})

    # --- metadata ------------------------------------------------------------------------------
    def versions(self, req: Request) -> Response:
        return Response.json(200, [{"label": "Winter '24", "url": "/services/data/v59.0", "version": "59.0"}])

    def resources(self, req: Request) -> Response:
        v = req.params["version"]
        return Response.json(200, {k: f"/services/data/v{v}/{k}" for k in ("sobjects", "query", "queryAll", "limits",
                                                                              "composite", "jobs", "tooling")})

    def limits(self, req: Request) -> Response:
        return Response.json(200, {
            "DailyApiRequests": {"Max": self.daily_limit, "Remaining": max(0, self.daily_limit - self.used)},
            "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
            "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000 - len(self.jobs)},
        })

    def _obj(self, name: str) -> str:
        for o in schema.SF_OBJECTS:
            if o.lower() == name.lower():
                return o
        raise HttpError(sf_error(404, "NOT_FOUND", "The requested resource does not exist"))

    def _sobject_summary(self, obj: str, version: str) -> dict:
        return {"name": obj, "label": obj, "labelPlural": obj + "s", "custom": False,
                "keyPrefix": schema.SF_PREFIX[obj], "createable": obj != "User", "updateable": obj != "User",
                "deletable": obj != "User", "queryable": True,
                "urls": {"sobject": f"/services/data/v{version}/sobjects/{obj}",
                         "describe": f"/services/data/v{version}/sobjects/{obj}/describe",
                         "rowTemplate": f"/services/data/v{version}/sobjects/{obj}/{{ID}}"}}

    def describe_global(self, req: Request) -> Response:
        v = req.params["version"]
        return Response.json(200, {"encoding": "UTF-8", "maxBatchSize": 200,
                                   "sobjects": [self._sobject_summary(o, v) for o in schema.SF_OBJECTS]})

    def describe(self, req: Request) -> Response:
        obj = self._obj(req.params["obj"])
        body = self._sobject_summary(obj, req.params["version"])
        user = req.params.get("_user")
        with self.lock:
            out = []
            for f in self._visible_fields(obj, user).values():  # FLS: a field without read access is not listed
                editable = self._access(obj, f, user)[1]
                out.append(f.describe(createable=f.createable and editable, updateable=f.updateable and editable))
            body["fields"] = out
        return Response.json(200, body)

    def metadata(self, req: Request) -> Response:
        obj = self._obj(req.params["obj"])
        with self.lock:
            recent = list(self.records[obj].values())[-3:]
        return Response.json(200, {"objectDescribe": self._sobject_summary(obj, req.params["version"]),
                                   "recentItems": [self._present(obj, r, ["Id", "Name"] if "Name" in self.fields[obj]
                                                                 else ["Id"], req.params["version"]) for r in recent]})

    # --- field-level security --------------------------------------------------------------------
    def _grants_for(self, user: str | None) -> dict[tuple[str, str], bool] | None:
        """(object, field) -> editable for the Tooling-created fields `user` was granted; None = sees every field.

        Built from the PermissionSet / FieldPermissions / PermissionSetAssignment records (what
        `crm setup` writes), cached until one of them changes. Caller holds the lock.
        """
        if user is None or user == self.admin_user_id:
            return None
        if self._grants is None:
            by_set: dict[str, list[dict]] = {}
            for fp in self.records["FieldPermissions"].values():
                if not fp.get("IsDeleted") and fp.get("PermissionsRead"):
                    by_set.setdefault(fp["ParentId"], []).append(fp)
            grants: dict[str, dict[tuple[str, str], bool]] = {}
            for a in self.records["PermissionSetAssignment"].values():
                if a.get("IsDeleted"):
                    continue
                mine = grants.setdefault(a["AssigneeId"], {})
                for fp in by_set.get(a["PermissionSetId"], []):
                    obj, _, fname = str(fp["Field"]).partition(".")
                    mine[(obj, fname)] = mine.get((obj, fname), False) or bool(fp.get("PermissionsEdit"))
            self._grants = grants
        return self._grants.get(user, {})

    def _access(self, obj: str, f: schema.SfField, user: str | None) -> tuple[bool, bool]:
        """(readable, editable) of one field for `user`: Tooling-created fields need a granted permission."""
        if not f.needs_grant:
            return True, True
        grants = self._grants_for(user)
        if grants is None:
            return True, True
        edit = grants.get((obj, f.name))
        return edit is not None, bool(edit)

    def _visible_fields(self, obj: str, user: str | None) -> dict[str, schema.SfField]:
        fields = self.fields[obj]
        grants = self._grants_for(user)
        if grants is None or not any(f.needs_grant for f in fields.values()):
            return fields
        return {n: f for n, f in fields.items() if not f.needs_grant or (obj, n) in grants}

    def grant_field_access(self, user_id: str, fields: list[tuple[str, str]]) -> None:
        """What `crm setup` does, applied directly: permission set Healthsync_Integration with read+edit on
        `fields` [(object, field)], assigned to `user_id` (precreate_fields=True)."""
        now = sf_datetime(self.clock.now())
        with self.lock:
            ps = next((r["Id"] for r in self.records["PermissionSet"].values()
                       if r.get("Name") == PERMISSION_SET_NAME and not r.get("IsDeleted")), None)
            if ps is None:
                ps = self._insert_raw("PermissionSet", {"Name": PERMISSION_SET_NAME, "Label": "Healthsync Integration",
                                                        "IsOwnedByProfile": False}, now)
            have = {r["Field"] for r in self.records["FieldPermissions"].values() if r["ParentId"] == ps}
            for obj, fname in fields:
                if f"{obj}.{fname}" not in have:
                    self._insert_raw("FieldPermissions", {"ParentId": ps, "SobjectType": obj, "Field": f"{obj}.{fname}",
                                                          "PermissionsRead": True, "PermissionsEdit": True}, now)
            if not any(a["PermissionSetId"] == ps and a["AssigneeId"] == user_id
                       for a in self.records["PermissionSetAssignment"].values()):
                self._insert_raw("PermissionSetAssignment", {"PermissionSetId": ps, "AssigneeId": user_id}, now)
            self._grants = None

    def tooling_create_field(self, req: Request) -> Response:
        body = self._json_body(req)
        full = str(body.get("FullName") or "")
        meta = body.get("Metadata") or {}
        if "." not in full:
            return sf_error(400, "INVALID_FIELD", "FullName must be Object.Field__c", ["FullName"])
        obj_name, fname = full.split(".", 1)
        if obj_name.lower() in ("task", "event"):
            # custom activity fields are defined on Activity and appear on Task and Event (BEHAVIOR.md)
            return sf_error(400, "FIELD_INTEGRITY_EXCEPTION",
                            f"Custom fields of {obj_name} are created on Activity: use FullName Activity.{fname}",
                            ["FullName"])
        obj = "Task" if obj_name.lower() == "activity" else self._obj(obj_name)
        if not fname.endswith("__c") or not fname[:-3].replace("_", "").isalnum():
            return sf_error(400, "INVALID_FIELD", f"invalid custom field name {fname!r}: it must end in __c", ["FullName"])
        try:
            new = schema.sf_field_from_metadata(fname, meta)
        except ValueError as e:
            return sf_error(400, "FIELD_INTEGRITY_EXCEPTION", str(e), ["Metadata"])
        with self.lock:
            if any(n.lower() == fname.lower() for n in self.fields[obj]):
                return sf_error(400, "DUPLICATE_DEVELOPER_NAME",
                                f"There is already a field named {fname[:-3]} on {obj}.", ["FullName"])
            self.fields[obj][fname] = new
        fid = self.ids.new("00N")
        return Response.json(201, {"id": fid, "success": True, "errors": [], "warnings": [], "infos": []})

    def add_custom_field(self, obj: str, fname: str, meta: dict) -> None:
        """Create a custom field directly (the precreate_fields seed option); invisible until access is granted."""
        with self.lock:
            self.fields[obj][fname] = schema.sf_field_from_metadata(fname, meta)
            self._grants = None

    def insert_columns(self, obj: str, cols: dict, n: int, now: str) -> list[str]:
        """Seed `n` records given as columns (lists or itertools.repeat), no validation, one timestamp.

        One `dict(zip(...))` per record: the fast path that makes 100,000-account starts possible.
        """
        ids = self.ids.new_many(schema.SF_PREFIX[obj], n)
        uid = self.admin_user_id  # seeded records were created by people, not by the integration
        cols = dict(cols)
        if "CreatedDate" in cols:
            cols["CreatedDate"] = [now if c is None else c for c in cols["CreatedDate"]]
        else:
            cols["CreatedDate"] = repeat(now)
        cols.update({"Id": ids, "IsDeleted": repeat(False), "LastModifiedDate": repeat(now),
                     "SystemModstamp": repeat(now), "CreatedById": repeat(uid), "LastModifiedById": repeat(uid)})
        names = list(cols)
        rows = list(map(dict, map(zip, repeat(names), zip(*cols.values()))))
        self.records[obj].update(zip(ids, rows))
        if any(f.external_id for f in self.fields[obj].values()):
            for row in rows:
                self._index(obj, row)
        return ids

    # --- records -------------------------------------------------------------------------------
    def _insert_raw(self, obj: str, values: dict, now: str, user_id: str | None = None) -> str:
        """Insert without validation (seeding); returns the new Id."""
        rid = self.ids.new(schema.SF_PREFIX[obj])
        rec = dict(values)
        uid = user_id or getattr(self, "admin_user_id", None) or rid  # seeded data belongs to the administrator
        rec.update({"Id": rid, "IsDeleted": False, "CreatedDate": values.get("CreatedDate") or now,
                    "LastModifiedDate": now, "SystemModstamp": now, "CreatedById": uid, "LastModifiedById": uid})
        self.records[obj][rid] = rec
        self._index(obj, rec)
        return rid

    def _index(self, obj: str, rec: dict, old: dict | None = None) -> None:
        for f in self.fields[obj].values():
            if f.external_id:
                idx = self.ext_index.setdefault((obj, f.name), {})
                if old is not None and old.get(f.name) not in (None, "") and idx.get(str(old[f.name])) == rec["Id"]:
                    del idx[str(old[f.name])]
                if rec.get(f.name) not in (None, "") and not rec.get("IsDeleted"):
                    idx[str(rec[f.name])] = rec["Id"]

    def find(self, rid: str) -> tuple[str, dict] | None:
        for obj, prefix in schema.SF_PREFIX.items():
            if rid.startswith(prefix):
                rec = self.records[obj].get(rid) or (self.records[obj].get(self._id18(obj, rid)) if len(rid) == 15 else None)
                return (obj, rec) if rec else None
        return None

    def _id18(self, obj: str, rid: str) -> str:
        return rid + _checksum(rid) if len(rid) == 15 else rid

    def _normalize(self, obj: str, values: dict, creating: bool, existing: dict | None,
                   user: str | None = None) -> tuple[dict, list[WriteError]]:
        """Check and coerce one record's fields like Salesforce would; errors instead of exceptions.

        `user` is the writer (field-level security applies; None = the administrator, who sees all).
        """
        fields = self._visible_fields(obj, user)
        lower = {n.lower(): n for n in fields}
        out: dict = {}
        errors: list[WriteError] = []
        for key, value in values.items():
            if key in ("attributes", "Id", "id"):
                continue
            name = lower.get(key.lower())
            if name is None:
                errors.append(WriteError("INVALID_FIELD", f"No such column '{key}' on sobject of type {obj}", [key]))
                continue
            f = fields[name]
            if not (f.createable if creating else f.updateable) or not self._access(obj, f, user)[1]:
                errors.append(WriteError("INVALID_FIELD_FOR_INSERT_UPDATE",
                                         f"Unable to create/update fields: {name}. Please check the security settings "
                                         f"of this field and verify that it is read/write for your profile or "
                                         f"permission set.", [name]))
                continue
            if value is None or value == "":
                if not f.nillable:
                    errors.append(WriteError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{name}]", [name]))
                else:
                    out[name] = None
                continue
            coerced, err = self._coerce(obj, f, value)
            if err:
                errors.append(WriteError(err[0], err[1], [name]))
            else:
                out[name] = coerced
        if creating:
            for f in fields.values():
                if not f.nillable and f.createable and out.get(f.name) is None and f.name not in ("Status", "Priority"):
                    errors.append(WriteError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{f.name}]",
                                             [f.name]))
        for f in fields.values():
            if f.unique and out.get(f.name) is not None:
                holder = self.ext_index.get((obj, f.name), {}).get(str(out[f.name]))
                if holder and (existing is None or holder != existing["Id"]):
                    errors.append(WriteError("DUPLICATE_VALUE", f"duplicate value found: {f.name} duplicates value "
                                                                f"on record with id: {holder}", [f.name]))
        if not errors and obj in schema.SF_SETUP_OBJECTS:
            errors.extend(self._check_setup_record(obj, out, existing))
        return out, errors

    def _check_setup_record(self, obj: str, values: dict, existing: dict | None) -> list[WriteError]:
        """The rules of the access-control objects (FieldPermissions, PermissionSet, PermissionSetAssignment)."""
        merged = {**(existing or {}), **values}
        live = [r for r in self.records[obj].values() if not r.get("IsDeleted") and (existing is None or r is not existing)]
        if obj == "PermissionSet":
            name = str(merged.get("Name") or "")
            if not re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|_(?!_))*", name) or name.endswith("_"):
                return [WriteError("FIELD_INTEGRITY_EXCEPTION", "The API Name can only contain underscores and "
                                   "alphanumeric characters. It must begin with a letter and be unique, and must not "
                                   "include spaces, end with an underscore, or contain 2 consecutive underscores.",
                                   ["Name"])]
            if any(str(r.get("Name", "")).lower() == name.lower() for r in live):
                return [WriteError("DUPLICATE_DEVELOPER_NAME", "The API Name you specified is already in use", ["Name"])]
        elif obj == "FieldPermissions":
            sobject, field = str(merged.get("SobjectType") or ""), str(merged.get("Field") or "")
            target = self.fields.get(sobject, {}).get(field.partition(".")[2]) if field.startswith(sobject + ".") else None
            if target is None or not target.needs_grant:  # only custom fields are permissionable here
                return [WriteError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                                   f"Field Name: bad value for restricted picklist field: {field}", ["Field"])]
            if merged.get("PermissionsEdit") and not merged.get("PermissionsRead"):
                return [WriteError("FIELD_INTEGRITY_EXCEPTION", "Permission Edit depends on permission(s): Read",
                                   ["PermissionsEdit"])]
            holder = next((r["Id"] for r in live if r["ParentId"] == merged.get("ParentId") and r["Field"] == field), None)
            if holder:
                return [WriteError("DUPLICATE_VALUE", f"duplicate value found: <unknown> duplicates value on record "
                                                      f"with id: {holder}", [])]
        elif obj == "PermissionSetAssignment":
            if any(r["PermissionSetId"] == merged.get("PermissionSetId") and r["AssigneeId"] == merged.get("AssigneeId")
                   for r in live):
                return [WriteError("DUPLICATE_VALUE", "Duplicate PermissionSetAssignment", [])]
        return []

    def _coerce(self, obj: str, f: schema.SfField, value) -> tuple[Any, tuple[str, str] | None]:
        t = f.type
        bad_type = ("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{f.name}: value not of required type: {value}")
        if t in NUMERIC:
            if isinstance(value, bool):
                return None, bad_type
            if isinstance(value, (int, float)):
                num = value
            else:
                try:
                    num = float(str(value).strip())
                except ValueError:
                    return None, bad_type
                num = int(num) if t == "int" and num.is_integer() else num
            if isinstance(num, float) and not math.isfinite(num):
                return None, bad_type
            if f.precision:  # a custom number: round to its scale, then at most precision - scale integer digits
                try:
                    exact = Decimal(str(num)).quantize(Decimal(1).scaleb(-f.scale), rounding=ROUND_HALF_UP)
                except InvalidOperation:
                    exact = None
                if exact is None or abs(exact) >= Decimal(10) ** (f.precision - f.scale):
                    return None, ("NUMBER_OUTSIDE_VALID_RANGE",
                                  f"{f.display_label}: value outside of valid range on numeric field: {value}")
                num = float(exact)
            return num, None
        if t == "boolean":
            if isinstance(value, bool):
                return value, None
            s = str(value).strip().lower()
            if s in ("true", "false", "1", "0"):
                return s in ("true", "1"), None
            return None, bad_type
        if t == "date":
            s = str(value).strip()
            try:
                return datetime.strptime(s[:10], "%Y-%m-%d").strftime("%Y-%m-%d"), None
            except ValueError:
                return None, bad_type
        if t == "datetime":
            try:
                return sf_datetime(parse_datetime(str(value))), None
            except ValueError:
                return None, bad_type
        if t == "reference":
            s = str(value)
            if len(s) not in (15, 18) or not s.isalnum():
                return None, ("MALFORMED_ID", f"{f.name}: id value of incorrect type: {s}")
            hit = self.find(s)
            if hit is None or hit[0] not in f.reference_to or hit[1].get("IsDeleted"):
                return None, ("INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id")
            return hit[1]["Id"], None
        if isinstance(value, (dict, list)):
            return None, bad_type
        s = value if isinstance(value, str) else json.dumps(value)
        if t == "picklist" and f.restricted and s not in f.picklist:
            return None, ("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                          f"{f.display_label}: bad value for restricted picklist field: {s}")
        if f.length and len(s) > f.length:
            return None, ("STRING_TOO_LONG", f"{f.label or f.name}: data value too large: {s[:40]}... (max length={f.length})")
        return s, None

    def _apply(self, obj: str, values: dict, existing: dict | None, user_id: str) -> dict:
        """Write normalized values (create when `existing` is None); keeps derived fields consistent."""
        now = sf_datetime(self.clock.now())
        if existing is None:
            if obj == "Task":
                values.setdefault("Status", "Not Started")
                values.setdefault("Priority", "Normal")
            if obj == "Case":
                values.setdefault("Status", "New")
            if obj == "FieldPermissions":
                values.setdefault("PermissionsRead", False)
                values.setdefault("PermissionsEdit", False)
            if obj == "PermissionSet":
                values.setdefault("IsOwnedByProfile", False)
            if "OwnerId" in self.fields[obj]:
                values.setdefault("OwnerId", user_id)
            rid = self._insert_raw(obj, values, now, user_id)
            rec = self.records[obj][rid]
        else:
            rec = existing
            old = dict(rec)
            rec.update(values)
            rec["LastModifiedDate"] = rec["SystemModstamp"] = now
            rec["LastModifiedById"] = user_id
            self._index(obj, rec, old)
        self._derive(obj, rec, now, set(values) if existing is not None else None)
        if obj in schema.SF_SETUP_OBJECTS:
            self._grants = None
        return rec

    def _derive(self, obj: str, rec: dict, now: str, changed: set[str] | None) -> None:
        """Recompute read-only fields from the fields just written (`changed` None = a new record).

        Only what changed is re-derived, so a write-back of a custom field never rewrites,
        say, a seeded Opportunity's IsClosed.
        """
        def touched(name: str) -> bool:
            return changed is None or name in changed

        if obj == "Task":
            if touched("Status"):
                rec["IsClosed"] = rec.get("Status") == "Completed"
            if touched("WhatId"):
                what = self.find(rec["WhatId"]) if rec.get("WhatId") else None
                rec["AccountId"] = None if what is None else (
                    what[1]["Id"] if what[0] == "Account" else what[1].get("AccountId"))
        elif obj == "Case" and touched("Status"):
            closed = rec.get("Status") == "Closed"
            if closed and not rec.get("IsClosed"):
                rec["ClosedDate"] = rec.get("ClosedDate") or now
            if not closed:
                rec["ClosedDate"] = None
            rec["IsClosed"] = closed
        elif obj == "Opportunity" and touched("StageName") and rec.get("StageName"):
            stage = str(rec["StageName"]).lower()
            rec["IsClosed"], rec["IsWon"] = stage.startswith("closed"), stage == "closed won"

    def _live(self, obj: str, rid: str) -> dict:
        rec = self.records[obj].get(self._id18(obj, rid))
        if rec is None or rec.get("IsDeleted"):
            raise HttpError(sf_error(404, "NOT_FOUND", "The requested resource does not exist"))
        return rec

    def _present(self, obj: str, rec: dict, fields: list[str] | None, version: str, user: str | None = None) -> dict:
        out = {"attributes": {"type": obj, "url": f"/services/data/v{version}/sobjects/{obj}/{rec['Id']}"}}
        for f in fields or self._visible_fields(obj, user):
            out[f] = rec.get(f)
        return out

    def _json_body(self, req: Request) -> Any:
        try:
            body = req.json()
        except (ValueError, UnicodeDecodeError) as e:
            raise HttpError(sf_error(400, "JSON_PARSER_ERROR", f"Unexpected character in request body: {e}"))
        if body is None:
            raise HttpError(sf_error(400, "JSON_PARSER_ERROR", "The request body is empty"))
        return body

    def _writable(self, obj: str, user: str | None = None) -> None:
        if obj == "User":
            raise HttpError(sf_error(403, "INSUFFICIENT_ACCESS", "the sandbox does not allow writing User records"))
        denied = self._setup_denied(obj, user)
        if denied:
            raise HttpError(sf_error(400, denied.code, denied.message, denied.fields))

    def _setup_denied(self, obj: str, user: str | None) -> WriteError | None:
        """Writing PermissionSet/FieldPermissions/PermissionSetAssignment needs Manage Profiles and Permission Sets."""
        if obj in schema.SF_SETUP_OBJECTS and not self.manage_permissions and user not in (None, self.admin_user_id):
            return WriteError("INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights on object id", [])
        return None

    def _locked(self) -> WriteError | None:
        """The UNABLE_TO_LOCK_ROW fault (lock_rate / lock_burst): this record is not written."""
        if self.faults is not None and self.faults.row_locked(self.name):
            return WriteError("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record or 1 records", [])
        return None

    def create(self, req: Request) -> Response:
        obj = self._obj(req.params["obj"])
        self._writable(obj, req.params["_user"])
        body = self._json_body(req)
        if not isinstance(body, dict):
            return sf_error(400, "JSON_PARSER_ERROR", "expected a JSON object")
        with self.lock:
            values, errors = self._normalize(obj, body, True, None, req.params["_user"])
            if errors:
                e = errors[0]
                return sf_error(400, e.code, e.message, e.fields)
            rec = self._apply(obj, values, None, req.params["_user"])
        return Response.json(201, {"id": rec["Id"], "success": True, "errors": []})

    def read(self, req: Request) -> Response:
        obj = self._obj(req.params["obj"])
        with self.lock:
            rec = self._live(obj, req.params["id"])
            fields = None
            user = req.params["_user"]
            if req.arg("fields"):
                fields = [self._field_name(obj, f, user) for f in req.args("fields")]
            return Response.json(200, self._present(obj, rec, fields, req.params["version"], user))

    def _field_name(self, obj: str, name: str, user: str | None = None) -> str:
        for n in self._visible_fields(obj, user):
            if n.lower() == name.lower():
                return n
        raise HttpError(sf_error(400, "INVALID_FIELD", f"No such column '{name}' on entity '{obj}'. If you are "
                                                       f"attempting to use a custom field, be sure to append the "
                                                       f"'__c' after the custom field name."))

    def update(self, req: Request) -> Response:
        obj = self._obj(req.params["obj"])
        self._writable(obj, req.params["_user"])
        body = self._json_body(req)
        with self.lock:
            rec = self._live(obj, req.params["id"])
            values, errors = self._normalize(obj, body, False, rec, req.params["_user"])
            if not errors:
                locked = self._locked()
                errors = [locked] if locked else []
            if errors:
                e = errors[0]
                return sf_error(400, e.code, e.message, e.fields)
            self._apply(obj, values, rec, req.params["_user"])
        return Response(204)

    def delete(self, req: Request) -> Response:
        obj = self._obj(req.params["obj"])
        self._writable(obj, req.params["_user"])
        with self.lock:
            rec = self._live(obj, req.params["id"])
            self._soft_delete(obj, rec, req.params["_user"])
        return Response(204)

    def _soft_delete(self, obj: str, rec: dict, user_id: str) -> None:
        old = dict(rec)
        rec["IsDeleted"] = True
        rec["LastModifiedDate"] = rec["SystemModstamp"] = sf_datetime(self.clock.now())
        rec["LastModifiedById"] = user_id
        self._index(obj, rec, old)

    def _ext_field(self, obj: str, name: str, user: str | None = None) -> str:
        fname = self._field_name(obj, name, user)
        if fname != "Id" and not self.fields[obj][fname].external_id:
            raise HttpError(sf_error(400, "INVALID_FIELD", f"Field {fname} is not an external id field on {obj}",
                                     [fname]))
        return fname

    def upsert_one(self, obj: str, fname: str, value: str, body: dict, user_id: str,
                   update_only: bool = False) -> tuple[dict | None, bool, list[WriteError]]:
        """-> (record, created, errors). Caller holds the lock."""
        if fname == "Id":
            existing = self.records[obj].get(self._id18(obj, value)) if value else None
        else:
            rid = self.ext_index.get((obj, fname), {}).get(str(value))
            existing = self.records[obj].get(rid) if rid else None
        if existing is not None and existing.get("IsDeleted"):
            existing = None
        if existing is None and update_only:
            return None, False, [WriteError("NOT_FOUND", "Provided external ID field does not exist or is not accessible: " + str(value), [fname])]
        payload = {k: v for k, v in body.items() if k.lower() != fname.lower()}
        if fname != "Id" and existing is None:
            payload[fname] = value
        values, errors = self._normalize(obj, payload, existing is None, existing, user_id)
        if errors:
            return None, False, errors
        return self._apply(obj, values, existing, user_id), existing is None, []

    def upsert(self, req: Request) -> Response:
        obj = self._obj(req.params["obj"])
        self._writable(obj, req.params["_user"])
        body = self._json_body(req)
        with self.lock:
            fname = self._ext_field(obj, req.params["field"], req.params["_user"])
            if any(k.lower() in ("id", fname.lower()) for k in body):
                return sf_error(400, "INVALID_FIELD", f"Do not set {fname} or Id in the body of an upsert")
            rec, created, errors = self.upsert_one(obj, fname, unquote_plus(req.params["value"]), body, req.params["_user"],
                                                   (req.arg("updateOnly") or "").lower() == "true")
        if errors:
            e = errors[0]
            return sf_error(404 if e.code == "NOT_FOUND" else 400, e.code, e.message, e.fields)
        return Response.json(201 if created else 200, {"id": rec["Id"], "success": True, "errors": [],
                                                       "created": created})

    def read_by_external_id(self, req: Request) -> Response:
        obj = self._obj(req.params["obj"])
        with self.lock:
            user = req.params["_user"]
            fname = self._ext_field(obj, req.params["field"], user)
            rid = self.ext_index.get((obj, fname), {}).get(unquote_plus(req.params["value"]))
            rec = self._live(obj, rid) if rid else None
            if rec is None:
                return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
            return Response.json(200, self._present(obj, rec, None, req.params["version"], user))

    # --- collections ---------------------------------------------------------------------------
    def _collection_body(self, req: Request) -> tuple[list, bool]:
        body = self._json_body(req)
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise HttpError(sf_error(400, "JSON_PARSER_ERROR", "expected {\"allOrNone\": bool, \"records\": [...]}"))
        records = body["records"]
        if len(records) > MAX_COLLECTION:
            raise HttpError(sf_error(400, "EXCEEDED_ID_LIMIT", f"record limit reached. cannot submit more than "
                                                               f"{MAX_COLLECTION} records into this call"))
        return records, bool(body.get("allOrNone", False))

    def _run_collection(self, items: list, all_or_none: bool,
                        check: Callable[[Any], tuple[Any, list[WriteError]]],
                        apply: Callable[[Any], dict]) -> list[dict]:
        """Validate every item, then apply (or roll everything back under allOrNone)."""
        with self.lock:
            checked = [check(it) for it in items]
            failed = any(errs for _, errs in checked)
            results = []
            if all_or_none and failed:
                for _, errs in checked:
                    errs = errs or [WriteError("ALL_OR_NONE_OPERATION_ROLLED_BACK",
                                               "Record rolled back because not all records were valid and the "
                                               "request was using AllOrNone header", [])]
                    results.append({"id": None, "success": False, "errors": [e.as_result() for e in errs]})
                return results
            for prepared, errs in checked:
                if errs:
                    results.append({"id": None, "success": False, "errors": [e.as_result() for e in errs]})
                    continue
                results.append(apply(prepared))
            return results

    def _typed(self, rec: Any) -> tuple[str | None, WriteError | None]:
        if not isinstance(rec, dict):
            return None, WriteError("JSON_PARSER_ERROR", "each record must be a JSON object", [])
        t = (rec.get("attributes") or {}).get("type")
        if not t:
            return None, WriteError("INVALID_TYPE", "Must send a concrete entity type.", [])
        obj = next((o for o in schema.SF_OBJECTS if o.lower() == str(t).lower()), None)
        if obj is None or obj == "User":
            return None, WriteError("INVALID_TYPE", f"sObject type '{t}' is not supported.", [])
        return obj, None

    def collection_create(self, req: Request) -> Response:
        records, aon = self._collection_body(req)
        user = req.params["_user"]

        def check(rec):
            obj, err = self._typed(rec)
            if err:
                return None, [err]
            err = self._setup_denied(obj, user)
            if err:
                return None, [err]
            if rec.get("id") or rec.get("Id"):
                return None, [WriteError("INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])]
            values, errors = self._normalize(obj, rec, True, None, user)
            return (obj, values), errors

        def apply(prepared):
            obj, values = prepared
            return {"id": self._apply(obj, values, None, user)["Id"], "success": True, "errors": []}

        return Response.json(200, self._run_collection(records, aon, check, apply))

    def collection_update(self, req: Request) -> Response:
        records, aon = self._collection_body(req)
        user = req.params["_user"]

        def check(rec):
            obj, err = self._typed(rec)
            if err:
                return None, [err]
            rid = rec.get("id") or rec.get("Id")
            existing = self.records[obj].get(self._id18(obj, str(rid))) if rid else None
            if existing is None or existing.get("IsDeleted"):
                return None, [WriteError("ENTITY_IS_DELETED" if existing else "INVALID_CROSS_REFERENCE_KEY",
                                         "entity is deleted" if existing else f"invalid cross reference id", [])]
            err = self._setup_denied(obj, user)
            if err:
                return None, [err]
            values, errors = self._normalize(obj, {k: v for k, v in rec.items() if k not in ("id", "Id")}, False,
                                             existing, user)
            if not errors:
                locked = self._locked()
                errors = [locked] if locked else []
            return (obj, values, existing), errors

        def apply(prepared):
            obj, values, existing = prepared
            return {"id": self._apply(obj, values, existing, user)["Id"], "success": True, "errors": []}

        return Response.json(200, self._run_collection(records, aon, check, apply))

    def collection_delete(self, req: Request) -> Response:
        ids = req.args("ids")
        if len(ids) > MAX_COLLECTION:
            return sf_error(400, "EXCEEDED_ID_LIMIT", f"cannot delete more than {MAX_COLLECTION} records at once")
        aon = (req.arg("allOrNone") or "false").lower() == "true"
        user = req.params["_user"]

        def check(rid):
            hit = self.find(rid)
            if hit is None or hit[1].get("IsDeleted") or hit[0] == "User":
                return None, [WriteError("ENTITY_IS_DELETED" if hit else "INVALID_CROSS_REFERENCE_KEY",
                                         "entity is deleted" if hit else "invalid cross reference id", [])]
            return hit, []

        def apply(hit):
            self._soft_delete(hit[0], hit[1], user)
            return {"id": hit[1]["Id"], "success": True, "errors": []}

        return Response.json(200, self._run_collection(ids, aon, check, apply))

    def collection_upsert(self, req: Request) -> Response:
        obj = self._obj(req.params["obj"])
        self._writable(obj, req.params["_user"])
        records, aon = self._collection_body(req)
        user = req.params["_user"]
        with self.lock:
            fname = self._ext_field(obj, req.params["field"], user)
        results = []
        with self.lock:
            # validate first so allOrNone can roll back: a dry run of each upsert
            checks = []
            for rec in records:
                t, err = self._typed(rec)
                if err or t != obj:
                    checks.append([err or WriteError("INVALID_TYPE", f"records must all be of type {obj}", [])])
                    continue
                value = rec.get(fname)
                if value in (None, ""):
                    checks.append([WriteError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{fname}]",
                                              [fname])])
                    continue
                rid = self.ext_index.get((obj, fname), {}).get(str(value))
                existing = self.records[obj].get(rid) if rid else None
                _, errs = self._normalize(obj, {k: v for k, v in rec.items() if k.lower() != fname.lower()} |
                                          ({} if existing else {fname: value}), existing is None, existing, user)
                if not errs and existing is not None:
                    locked = self._locked()
                    errs = [locked] if locked else []
                checks.append(errs)
            failed = any(checks)
            for rec, errs in zip(records, checks):
                if aon and failed:
                    errs = errs or [WriteError("ALL_OR_NONE_OPERATION_ROLLED_BACK",
                                               "Record rolled back because not all records were valid and the "
                                               "request was using AllOrNone header", [])]
                if errs:
                    results.append({"id": None, "success": False, "errors": [e.as_result() for e in errs],
                                    "created": False})
                    continue
                written, created, errs = self.upsert_one(obj, fname, str(rec[fname]),
                                                         {k: v for k, v in rec.items() if k != "attributes"}, user)
                if errs:
                    results.append({"id": None, "success": False, "errors": [e.as_result() for e in errs],
                                    "created": False})
                else:
                    results.append({"id": written["Id"], "success": True, "errors": [], "created": created})
        return Response.json(200, results)

    # --- query ---------------------------------------------------------------------------------
    def _resolver(self, obj: str, user: str | None = None):
        fields = self._visible_fields(obj, user)
        lower = {n.lower(): n for n in fields}

        def resolve(name: str):
            if "." in name:
                rel, sub = name.split(".", 1)
                ref = next((f for f in fields.values() if f.relationship_name and f.relationship_name.lower() == rel.lower()), None)
                if ref is None:
                    raise SoqlError("INVALID_FIELD", f"Didn't understand relationship '{rel}' in field path. If you "
                                                     f"are attempting to use a custom relationship, be sure to append "
                                                     f"the '__r' after the custom relationship name.")
                targets = [t for t in ref.reference_to if t in self.fields]
                sub_type = None
                for t in targets:
                    for n, f in self._visible_fields(t, user).items():
                        if n.lower() == sub.lower():
                            sub_type, sub_name = f.type, n
                if sub_type is None:
                    raise SoqlError("INVALID_FIELD", f"No such column '{sub}' on entity '{targets[0] if targets else rel}'.")

                def get(r, _ref=ref.name, _sub=sub_name):
                    rid = r.get(_ref)
                    if not rid:
                        return None
                    hit = self.find(rid)
                    return hit[1].get(_sub) if hit else None

                return get, sub_type
            n = lower.get(name.lower())
            if n is None:
                raise SoqlError("INVALID_FIELD", f"No such column '{name}' on entity '{obj}'. If you are attempting "
                                                 f"to use a custom field, be sure to append the '__c' after the custom "
                                                 f"field name.")
            return (lambda r, _n=n: r.get(_n)), fields[n].type

        return resolve

    def run_soql(self, text: str, include_deleted: bool,
                 user: str | None = None) -> tuple[str, list[str], list[dict], bool]:
        """-> (object, output field paths, matching records in order, count_only). `user`: FLS applies."""
        q = parse(text, self.clock.now())
        obj = next((o for o in schema.SF_OBJECTS if o.lower() == q.obj.lower()), None)
        if obj is None:
            raise SoqlError("INVALID_TYPE", f"sObject type '{q.obj}' is not supported. If you are attempting to use "
                                            f"a custom object, be sure to append the '__c' after the entity name.")
        with self.lock:
            self._purge(obj)
            resolve = self._resolver(obj, user)
        out_fields = []
        for f in q.fields:
            resolve(f)  # raises INVALID_FIELD
            if "." in f:
                rel, sub = f.split(".", 1)
                ref = next(x for x in self.fields[obj].values() if x.relationship_name and x.relationship_name.lower() == rel.lower())
                out_fields.append(ref.relationship_name + "." + sub)
            else:
                out_fields.append(next(n for n in self.fields[obj] if n.lower() == f.lower()))
        pred = compile_where(q.where, resolve)
        with self.lock:
            rows = [r for r in self.records[obj].values() if (include_deleted or not r["IsDeleted"]) and pred(r)]
        if q.order:
            rows = sort_records(rows, q.order, resolve)
        rows = rows[q.offset:]
        if q.limit is not None:
            rows = rows[:q.limit]
        return obj, out_fields, rows, q.count_only

    def _project(self, obj: str, fields: list[str], rec: dict, version: str) -> dict:
        out: dict[str, Any] = {"attributes": {"type": obj, "url": f"/services/data/v{version}/sobjects/{obj}/{rec['Id']}"}}
        for f in fields:
            if "." in f:
                rel, sub = f.split(".", 1)
                ref = next(x for x in self.fields[obj].values() if x.relationship_name == rel)
                hit = self.find(rec[ref.name]) if rec.get(ref.name) else None
                if hit is None:
                    out[rel] = None
                    continue
                tobj, trec = hit
                node = out.get(rel) or {"attributes": {"type": tobj, "url": f"/services/data/v{version}/sobjects/{tobj}/{trec['Id']}"}}
                sub_name = next((n for n in self.fields[tobj] if n.lower() == sub.lower()), sub)
                node[sub_name] = trec.get(sub_name)
                out[rel] = node
            else:
                out[f] = rec.get(f)
        return out

    def query(self, req: Request) -> Response:
        text = req.arg("q")
        if not text:
            return sf_error(400, "MALFORMED_QUERY", "A query string has to be specified")
        try:
            obj, fields, rows, count_only = self.run_soql(text, req.params["kind"] == "queryAll", req.params.get("_user"))
        except SoqlError as e:
            return sf_error(400, e.code, e.message)
        if count_only:
            return Response.json(200, {"totalSize": len(rows), "done": True, "records": []})
        batch = self._batch_size(req)
        locator = None
        if len(rows) > batch:
            locator = "01g" + secrets.token_hex(7)
            with self.lock:
                self.locators[locator] = (obj, fields, rows, batch)
                while len(self.locators) > 100:
                    self.locators.popitem(last=False)
        return self._page(req, obj, fields, rows, 0, batch, locator)

    def _batch_size(self, req: Request) -> int:
        opts = req.header("sforce-query-options") or ""
        for part in opts.split(","):
            k, _, v = part.strip().partition("=")
            if k.strip().lower() == "batchsize" and v.strip().isdigit():
                return max(BATCH_MIN, min(BATCH_MAX, int(v)))
        return DEFAULT_BATCH

    def _page(self, req: Request, obj, fields, rows, offset: int, batch: int, locator: str | None) -> Response:
        v = req.params["version"]
        page = rows[offset:offset + batch]
        with self.lock:
            records = [self._project(obj, fields, r, v) for r in page]
        body: dict[str, Any] = {"totalSize": len(rows), "done": offset + batch >= len(rows)}
        if not body["done"]:
            body["nextRecordsUrl"] = f"/services/data/v{v}/{req.params['kind']}/{locator}-{offset + batch}"
        body["records"] = records
        return Response.json(200, body)

    def query_more(self, req: Request) -> Response:
        with self.lock:
            cached = self.locators.get(req.params["locator"])
        if cached is None:
            return sf_error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        obj, fields, rows, batch = cached  # the page size chosen by the first request holds for its locator
        offset = int(req.params["offset"])
        return self._page(req, obj, fields, rows, offset, batch, req.params["locator"])

    # --- Recycle Bin, purge, sobjects/{O}/deleted --------------------------------------------------
    def _purge(self, obj: str) -> None:
        """Deleted records leave the Recycle Bin after `recycle_bin` (15 days) of emulator time: hard-deleted,
        no longer in queryAll nor in sobjects/{O}/deleted; earliestDateAvailable moves past them. Caller holds the lock."""
        horizon = self.clock.now() - self.recycle_bin
        gone = [r for r in self.records[obj].values()
                if r.get("IsDeleted") and parse_datetime(r["SystemModstamp"]) < horizon]
        for rec in gone:
            del self.records[obj][rec["Id"]]
            stamp = parse_datetime(rec["SystemModstamp"])
            if stamp > self.earliest_deleted[obj]:
                self.earliest_deleted[obj] = stamp

    def get_deleted(self, req: Request) -> Response:
        """sObject Get Deleted: ids deleted in [start, end] (minutes), from the Recycle Bin only.

        Limits (BEHAVIOR.md): start more than one minute before end, not more than 30 days back, not
        before earliestDateAvailable (records purged since: INVALID_REPLICATION_DATE, do a full pull);
        at most 600,000 ids (EXCEEDED_ID_LIMIT).
        """
        obj = self._obj(req.params["obj"])
        try:
            start, end = _minute(parse_datetime(req.arg("start") or "")), _minute(parse_datetime(req.arg("end") or ""))
        except ValueError:
            return sf_error(400, "INVALID_REPLICATION_DATE", "start and end must be ISO 8601 date-times, e.g. "
                                                             "2024-05-05T00:00:00+00:00")
        now = self.clock.now()
        if end - start <= timedelta(minutes=1):
            return sf_error(400, "INVALID_REPLICATION_DATE",
                            "startDate must chronologically precede endDate by more than one minute")
        if start < now - timedelta(days=GET_DELETED_MAX_DAYS):
            return sf_error(400, "INVALID_REPLICATION_DATE",
                            f"startDate cannot be more than {GET_DELETED_MAX_DAYS} days ago")
        with self.lock:
            self._purge(obj)
            earliest = self.earliest_deleted[obj]
            if start < earliest:
                return sf_error(400, "INVALID_REPLICATION_DATE",
                                f"the delete log before {sf_datetime(earliest)} has been purged (earliestDateAvailable); "
                                f"do a full pull")
            rows = [{"id": r["Id"], "deletedDate": r["SystemModstamp"]} for r in self.records[obj].values()
                    if r.get("IsDeleted") and start <= parse_datetime(r["SystemModstamp"]) <= end]
        if len(rows) > GET_DELETED_MAX_IDS:
            return sf_error(400, "EXCEEDED_ID_LIMIT", f"more than {GET_DELETED_MAX_IDS} ids: choose start and end "
                                                      f"dates closer together")
        covered = min(end, _minute(now))
        return Response.json(200, {"deletedRecords": rows, "earliestDateAvailable": sf_datetime(earliest),
                                   "latestDateCovered": sf_datetime(covered)})

    # --- Bulk API 2.0 ingest -------------------------------------------------------------------
    def _job_info(self, job: dict) -> dict:
        keys = ("id", "operation", "object", "createdById", "createdDate", "systemModstamp", "state",
                "externalIdFieldName", "concurrencyMode", "contentType", "apiVersion", "jobType", "lineEnding",
                "columnDelimiter", "numberRecordsProcessed", "numberRecordsFailed", "retries", "totalProcessingTime",
                "apiActiveProcessingTime", "apexProcessingTime", "errorMessage")
        return {k: job[k] for k in keys if k in job}

    def _job(self, req: Request) -> dict:
        job = self.jobs.get(req.params["job"])
        if job is None or job.get("deleted"):
            raise HttpError(sf_error(404, "NOT_FOUND", "The requested resource does not exist"))
        return job

    def job_create(self, req: Request) -> Response:
        body = self._json_body(req)
        op = body.get("operation")
        if op not in ("insert", "update", "upsert", "delete", "hardDelete"):
            return sf_error(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {op}")
        obj = next((o for o in schema.SF_OBJECTS if o.lower() == str(body.get("object", "")).lower()), None)
        if obj is None or obj == "User":
            return sf_error(400, "INVALIDJOB", f"InvalidJob : Invalid object: {body.get('object')}")
        if op == "upsert" and not body.get("externalIdFieldName"):
            return sf_error(400, "INVALIDJOB", "InvalidJob : External ID was blank for upsert")
        if body.get("columnDelimiter", "COMMA") != "COMMA" or body.get("contentType", "CSV") != "CSV":
            return sf_error(400, "INVALIDJOB", "InvalidJob : the sandbox supports COMMA-delimited CSV only")
        now = sf_datetime(self.clock.now())
        jid = self.ids.new("750")
        job = {"id": jid, "operation": op, "object": obj, "createdById": req.params["_user"], "createdDate": now,
               "systemModstamp": now, "state": "Open", "externalIdFieldName": body.get("externalIdFieldName"),
               "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(req.params["version"]),
               "jobType": "V2Ingest", "lineEnding": body.get("lineEnding", "LF"), "columnDelimiter": "COMMA",
               "numberRecordsProcessed": 0, "numberRecordsFailed": 0, "retries": 0, "totalProcessingTime": 0,
               "apiActiveProcessingTime": 0, "apexProcessingTime": 0, "data": b"", "results": None,
               "contentUrl": f"services/data/v{req.params['version']}/jobs/ingest/{jid}/batches"}
        with self.lock:
            self.jobs[jid] = job
        info = self._job_info(job)
        info["contentUrl"] = job["contentUrl"]
        return Response.json(200, info)

    def job_list(self, req: Request) -> Response:
        with self.lock:
            jobs = [self._job_info(j) for j in self.jobs.values() if not j.get("deleted")]
        return Response.json(200, {"done": True, "records": jobs, "nextRecordsUrl": None})

    def job_upload(self, req: Request) -> Response:
        with self.lock:
            job = self._job(req)
            if job["state"] != "Open":
                return sf_error(409, "INVALIDJOBSTATE", f"Job is not in Open state: {job['state']}")
            job["data"] += req.body
        return Response(201)

    def job_state(self, req: Request) -> Response:
        body = self._json_body(req)
        state = body.get("state")
        with self.lock:
            job = self._job(req)
            if state == "UploadComplete" and job["state"] == "Open":
                job["state"] = "UploadComplete"
                job["polls"] = 0
                info = self._job_info(job)
                if self.bulk_polls_in_progress == 0:
                    self._process_job(job, job["createdById"])
                return Response.json(200, info)
            if state == "Aborted" and job["state"] in ("Open", "UploadComplete", "InProgress"):
                job["state"] = "Aborted"
                return Response.json(200, self._job_info(job))
            return sf_error(400, "INVALIDJOBSTATE", f"cannot change state from {job['state']} to {state}")

    def job_get(self, req: Request) -> Response:
        """Status poll: a closed job reports UploadComplete, then InProgress, for `bulk_polls_in_progress`
        polls (every poll is a counted API request), and is processed on the poll after that."""
        with self.lock:
            job = self._job(req)
            if job["state"] in ("UploadComplete", "InProgress"):
                job["polls"] = job.get("polls", 0) + 1
                if job["polls"] > self.bulk_polls_in_progress:
                    self._process_job(job, job["createdById"])
                elif job["polls"] > 1 or self.bulk_polls_in_progress == 1:
                    job["state"] = "InProgress"
            return Response.json(200, self._job_info(job))

    def job_delete(self, req: Request) -> Response:
        with self.lock:
            job = self._job(req)
            if job["state"] in ("Open", "UploadComplete", "InProgress"):
                return sf_error(400, "INVALIDJOBSTATE", "abort the job before deleting it")
            job["deleted"] = True
        return Response(204)

    def _process_job(self, job: dict, user: str) -> None:
        """Apply every CSV row; remember per-row results for the three result CSVs."""
        started = time.perf_counter()
        try:
            text = job["data"].decode("utf-8-sig")
        except UnicodeDecodeError:
            job.update(state="Failed", errorMessage="InvalidBatch : the CSV is not UTF-8")
            return
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if not header:
            job.update(state="Failed", errorMessage="InvalidBatch : Failed to parse CSV header")
            return
        obj, op = job["object"], job["operation"]
        lower = {n.lower(): n for n in self._visible_fields(obj, user)}
        unknown = [h for h in header if h.lower() not in lower and h.lower() != "id"]
        if unknown:
            job.update(state="Failed", errorMessage=f"InvalidBatch : Field name not found : {unknown[0]}")
            return
        ok, failed = [], []
        ext = job.get("externalIdFieldName")
        for row in reader:
            if not row:
                continue
            values = {}
            for h, v in zip(header, row):
                if v == "":
                    continue  # Bulk 2.0: an empty cell leaves the field unchanged
                values[h] = None if v == "#N/A" else v
            rid, created, errors = None, False, []
            if op == "insert":
                vals, errors = self._normalize(obj, values, True, None, user)
                if not errors:
                    rid, created = self._apply(obj, vals, None, user)["Id"], True
            elif op in ("update", "delete", "hardDelete"):
                key = next((v for k, v in values.items() if k.lower() == "id"), None)
                existing = self.records[obj].get(self._id18(obj, key)) if key else None
                if existing is None or existing.get("IsDeleted"):
                    errors = [WriteError("ENTITY_IS_DELETED" if existing else "INVALID_CROSS_REFERENCE_KEY",
                                         "entity is deleted" if existing else "invalid cross reference id", ["Id"])]
                elif op == "update":
                    vals, errors = self._normalize(obj, {k: v for k, v in values.items() if k.lower() != "id"},
                                                   False, existing, user)
                    if not errors:
                        locked = self._locked()
                        errors = [locked] if locked else []
                    if not errors:
                        rid = self._apply(obj, vals, existing, user)["Id"]
                else:
                    self._soft_delete(obj, existing, user)
                    rid = existing["Id"]
            else:  # upsert
                fname = next((n for n in lower.values() if n.lower() == str(ext).lower()), None)
                if fname is None or (fname != "Id" and not self.fields[obj][fname].external_id):
                    job.update(state="Failed", errorMessage=f"InvalidBatch : Field name provided, {ext} is not an "
                                                            f"External ID or indexed field for {obj}")
                    return
                value = next((v for k, v in values.items() if k.lower() == fname.lower()), None)
                if value in (None, ""):
                    errors = [WriteError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{fname}]", [fname])]
                else:
                    rec, created, errors = self.upsert_one(obj, fname, value, values, user)
                    rid = rec["Id"] if rec else None
            if errors:
                e = errors[0]
                failed.append((rid or "", f"{e.code}:{e.message}:{','.join(e.fields)} --", row))
            else:
                ok.append((rid, "true" if created else "false", row))
        job["results"] = {"header": header, "ok": ok, "failed": failed}
        job.update(state="JobComplete", numberRecordsProcessed=len(ok) + len(failed), numberRecordsFailed=len(failed),
                   totalProcessingTime=int((time.perf_counter() - started) * 1000),
                   systemModstamp=sf_datetime(self.clock.now()))

    def job_results(self, req: Request) -> Response:
        with self.lock:
            job = self._job(req)
            res = job.get("results") or {"header": [], "ok": [], "failed": []}
            which = req.params["which"].lower()
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
            if which == "successfulresults":
                w.writerow(["sf__Id", "sf__Created"] + res["header"])
                for rid, created, row in res["ok"]:
                    w.writerow([rid, created] + row)
            elif which == "failedresults":
                w.writerow(["sf__Id", "sf__Error"] + res["header"])
                for rid, err, row in res["failed"]:
                    w.writerow([rid, err] + row)
            else:
                w.writerow(res["header"])
                if job["state"] == "Aborted" and job.get("data"):
                    rows = list(csv.reader(io.StringIO(job["data"].decode("utf-8-sig"))))[1:]
                    for row in rows:
                        w.writerow(row)
        return Response.text(200, buf.getvalue(), "text/csv")


def _minute(t: datetime) -> datetime:
    """The replication calls ignore the seconds of their dates (Polling for Changes, SOAP API guide)."""
    return t.replace(second=0, microsecond=0)


def _jwt_claims(assertion: str) -> dict | None:
    """Decode a JWT's payload without verifying its signature (the sandbox holds no public key)."""
    parts = assertion.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None
