"""Salesforce connector on simple-salesforce: incremental pull, batched push, idempotent tasks.

Wire facts are in shared/reference/crm-api-notes.md (section numbers cited
below). The SDK is hidden: callers see `CrmConnector`, canonical frames and
`RecordResult`s only.

Every HTTP request goes through `_SalesforceHttp`, a requests.Session that
- puts a timeout on every call,
- retries 429/5xx/timeouts/dropped connections with the one retry policy
  (connectors/retry.py), except non-idempotent creates, which are retried a
  level up after re-checking their idempotency key,
- re-authenticates once on 401 INVALID_SESSION_ID and resends (1.1),
- runs the quota governor: reads `Sforce-Limit-Info` (1.8) and refuses to send
  once usage passed `quota_stop_share` of the daily limit, and turns 403
  REQUEST_LIMIT_EXCEEDED (1.7) into `QuotaExhaustedError`.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterator

import numpy as np
import pandas as pd
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession, SalesforceOperationError
from simple_salesforce.format import format_soql

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

#: sObject collections take at most 200 records per request (crm-api-notes 1.6).
COLLECTION_SIZE = 200
#: Salesforce ids are 15 or 18 alphanumeric characters (crm-api-notes 1.4).
_SF_ID = re.compile(r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?$")
_LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")
#: per-record errors worth retrying next run (lock contention, transient server trouble)
_RETRYABLE_RECORD_CODES = {"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG", "QUOTA_EXHAUSTED"}

#: The healthsync fields `setup()` creates and `check()` expects (issue 4): object -> [(field, metadata)].
HEALTHSYNC_FIELDS: dict[str, list[tuple[str, dict]]] = {
    "Account": [
        ("Health_Score__c", {"label": "Health Score", "type": "Number", "precision": 5, "scale": 1}),
        ("Health_Band__c", {"label": "Health Band", "type": "Text", "length": 40}),
        ("Health_Trend__c", {"label": "Health Trend", "type": "Text", "length": 40}),
        ("Health_Drivers__c", {"label": "Health Drivers", "type": "Text", "length": 255}),
        ("Health_Confidence__c", {"label": "Health Confidence", "type": "Number", "precision": 4, "scale": 3}),
        ("Health_Updated__c", {"label": "Health Updated", "type": "DateTime"}),
    ],
    "Opportunity": [
        ("Health_Adjusted_Probability__c", {"label": "Health Adjusted Probability", "type": "Number", "precision": 5, "scale": 4}),
        ("Health_Expected_ARR__c", {"label": "Health Expected ARR", "type": "Number", "precision": 16, "scale": 2}),
    ],
    "Task": [
        ("Healthsync_Key__c", {"label": "Healthsync Key", "type": "Text", "length": 255, "externalId": True, "unique": True}),
    ],
}

_TASK_FIELDS = ["Id", "WhatId", "Status", "CreatedDate", "ActivityDate", "SystemModstamp"]


class _SalesforceHttp(requests.Session):
    """requests.Session with timeout, retries, re-login and the quota governor (module docstring)."""

    def __init__(self, connector: "SalesforceConnector"):
        super().__init__()
        self._connector = connector
        self.trust_env = False  # REQUESTS_CA_BUNDLE would override `verify` (crm-api-notes 1.1)
        self._local = threading.local()

    @contextmanager
    def no_retry(self):
        """Send one request without HTTP-level retries (non-idempotent creates)."""
        self._local.no_retry = True
        try:
            yield
        finally:
            self._local.no_retry = False

    def request(self, method, url, *args, **kwargs):  # noqa: D401 - requests API
        c = self._connector
        kwargs.setdefault("timeout", c.retry.timeout)
        if getattr(self._local, "no_retry", False):
            return self._send_once(method, url, args, kwargs)
        return c.retry.call(lambda: self._send_once(method, url, args, kwargs), stats=c.stats, what=f"Salesforce {method}")

    def _send_once(self, method, url, args, kwargs):
        c = self._connector
        c._governor_check()
        headers = kwargs.get("headers")
        if headers and "Authorization" in headers and c._token:
            # SDK helpers (e.g. the Bulk 2.0 handler) keep the token they were built with; always send the current one
            kwargs["headers"] = {**headers, "Authorization": "Bearer " + c._token}
        c.stats.calls += 1
        if method.upper() in ("POST", "PATCH", "PUT", "DELETE") and "/query" not in url:
            c.stats.write_calls += 1
        try:
            response = super().request(method, url, *args, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RetryableError(c._redact(f"Salesforce {method} {_path(url)}: {type(exc).__name__}")) from None
        c._read_limit_info(response)
        if response.status_code == 401 and _error_code(response) == "INVALID_SESSION_ID" and c._can_login():
            c._relogin()
            headers = dict(kwargs.get("headers") or {})
            headers["Authorization"] = "Bearer " + c._token
            kwargs["headers"] = headers
            c.stats.calls += 1
            try:
                response = super().request(method, url, *args, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise RetryableError(c._redact(f"Salesforce {method} {_path(url)}: {type(exc).__name__}")) from None
            c._read_limit_info(response)
        if response.status_code == 403 and _error_code(response) == "REQUEST_LIMIT_EXCEEDED":
            raise QuotaExhaustedError("Salesforce REQUEST_LIMIT_EXCEEDED: the org's daily API quota is spent; resume next run")
        if response.status_code in RETRYABLE_STATUSES:
            raise RetryableError(
                f"Salesforce {method} {_path(url)} answered {response.status_code}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        return response


def _path(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", str(url)).split("?")[0]


def _error_code(response: requests.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return body[0].get("errorCode")
    return None


def _json_value(value: Any) -> Any:
    """A field value as JSON for Salesforce (NaN -> null, datetimes ISO in UTC, numpy -> python)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        return _json_value(value.item())
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


def _bulk_value(value: Any) -> str:
    """A value for a Bulk 2.0 CSV cell: `#N/A` sets null (an empty cell would mean 'unchanged')."""
    v = _json_value(value)
    if v is None:
        return "#N/A"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _parse_sf_time(value: str | None) -> datetime | None:
    if not value:
        return None
    ts = pd.to_datetime(value, utc=True, errors="coerce")
    return None if pd.isna(ts) else ts.to_pydatetime()


class SalesforceConnector(CrmConnector):
    """Salesforce through simple-salesforce; see the module docstring for the HTTP behaviour."""

    name = "salesforce"
    prefix = "sf"

    def __init__(
        self,
        instance_url: str,
        access_token: Any = None,
        *,
        auth: str = "token",
        username: str | None = None,
        password: Any = None,
        security_token: Any = None,
        consumer_key: str | None = None,
        consumer_secret: Any = None,
        private_key: Any = None,
        domain: str = "login",
        token_url: str | None = None,
        api_version: str = "59.0",
        mapping: dict | None = None,
        ca_file: str | None = None,
        bulk_threshold: int = 2000,
        quota_stop_share: float = 0.8,
        lookback_minutes: float = 5,
        timeout: float = 30,
        retry: RetryPolicy | None = None,
        bulk_poll_seconds: float = 2.0,
    ):
        if auth not in ("token", "password", "jwt"):
            raise ConfigurationError(f"sources.salesforce.auth must be token, password or jwt (got {auth!r})")
        if not mapping:
            raise ConfigurationError("mapping.salesforce is missing from the configuration")
        if not 0 < quota_stop_share <= 1:
            raise ConfigurationError("sources.salesforce.quota_stop_share must be in (0, 1]")
        self.mapping = mapping
        self.auth = auth
        self.username = username
        self.consumer_key = consumer_key
        self.domain = domain
        self.api_version = str(api_version).lstrip("v")
        self.bulk_threshold = int(bulk_threshold)
        self.quota_stop_share = float(quota_stop_share)
        self.lookback = timedelta(minutes=float(lookback_minutes))
        self.bulk_poll_seconds = bulk_poll_seconds
        base = retry or RetryPolicy()
        self.retry = RetryPolicy(**{**base.__dict__, "timeout": timeout}) if retry is None else retry
        self.stats = CallStats()
        self._password = reveal(password)
        self._security_token = reveal(security_token) or ""
        self._consumer_secret = reveal(consumer_secret)
        self._private_key = reveal(private_key)
        self._token = reveal(access_token)
        self._redact = Redactor([self._token, self._password, self._security_token, self._consumer_secret, self._private_key])
        self.instance_url = (instance_url or "").rstrip("/")
        self.token_url = token_url or (
            f"{self.instance_url}/services/oauth2/token" if auth == "token" else f"https://{domain}.salesforce.com/services/oauth2/token"
        )
        self.usage: tuple[int, int] | None = None  # (used, daily limit) from Sforce-Limit-Info
        self._http = _SalesforceHttp(self)
        if ca_file:
            self._http.verify = ca_file
        self._describes: dict[str, dict] = {}
        self._owner_emails: dict[str, str] = {}
        self._owner_info: dict[str, tuple] = {}  # user id -> (name, title, manager id), for the escalation ladder
        self._owner_ids: dict[str, str] = {}
        self._sf: Salesforce | None = None
        if auth == "token" and not self._token:
            raise ConfigurationError("Salesforce auth 'token' needs an access token (HEALTHSYNC__SALESFORCE__ACCESS_TOKEN)")
        if auth == "password" and not (username and self._password):
            raise ConfigurationError("Salesforce auth 'password' needs sources.salesforce.username and HEALTHSYNC__SALESFORCE__PASSWORD")
        if auth == "jwt" and not (username and consumer_key and self._private_key):
            raise ConfigurationError(
                "Salesforce auth 'jwt' needs sources.salesforce.username, sources.salesforce.consumer_key and HEALTHSYNC__SALESFORCE__PRIVATE_KEY"
            )
        if not self.instance_url and auth == "token":
            raise ConfigurationError("sources.salesforce.instance_url is required with auth 'token'")

    # ------------------------------------------------------------------ session

    @property
    def sf(self) -> Salesforce:
        """The simple-salesforce client, logged in on first use."""
        if self._sf is None:
            if not self._token:
                self._login()
            self._sf = Salesforce(
                instance_url=self.instance_url,
                session_id=self._token,
                session=self._http,
                version=self.api_version,
            )
        return self._sf

    def _can_login(self) -> bool:
        return self.auth == "jwt" or (self.username is not None and self._password is not None)

    def _login(self) -> None:
        """Fetch an access token (username-password or JWT bearer, crm-api-notes 1.2)."""
        if self.auth == "jwt":
            import jwt  # PyJWT

            now = int(time.time())
            assertion = jwt.encode(
                {"iss": self.consumer_key, "sub": self.username, "aud": f"https://{self.domain}.salesforce.com", "exp": now + 180},
                self._private_key,
                algorithm="RS256",
            )
            form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
        elif self._can_login():
            form = {
                "grant_type": "password",
                "client_id": self.consumer_key or "",
                "username": self.username,
                "password": (self._password or "") + self._security_token,
            }
            if self._consumer_secret:
                form["client_secret"] = self._consumer_secret
        else:
            raise CredentialsError(
                "Salesforce session expired and no login credentials are configured "
                "(set sources.salesforce.auth to jwt or password, or refresh HEALTHSYNC__SALESFORCE__ACCESS_TOKEN)"
            )
        response = self._http.request("POST", self.token_url, data=form)
        if response.status_code != 200:
            try:
                body = response.json()
                reason = f"{body.get('error')}: {body.get('error_description')}"
            except ValueError:
                reason = f"HTTP {response.status_code}"
            raise CredentialsError(
                self._redact(f"Salesforce login failed ({reason}); check sources.salesforce.username/consumer_key and the Salesforce secrets")
            )
        body = response.json()
        self._token = body["access_token"]
        self._redact.add(self._token)
        if body.get("instance_url"):
            self.instance_url = body["instance_url"].rstrip("/")

    def _relogin(self) -> None:
        log.info("Salesforce session expired; logging in again")
        self._login()
        if self._sf is not None:
            self._sf.session_id = self._token
            self._sf.headers["Authorization"] = "Bearer " + self._token

    def _read_limit_info(self, response: requests.Response) -> None:
        match = _LIMIT_INFO.search(response.headers.get("Sforce-Limit-Info", ""))
        if match:
            self.usage = (int(match.group(1)), int(match.group(2)))

    def _governor_check(self) -> None:
        if self.usage is None:
            return
        used, total = self.usage
        if total > 0 and used >= self.quota_stop_share * total:
            raise QuotaExhaustedError(
                f"Salesforce API usage {used}/{total} passed the configured share "
                f"{self.quota_stop_share:.4g} (sources.salesforce.quota_stop_share); stopping, resume next run"
            )

    @contextmanager
    def _errors(self, what: str):
        """Translate simple-salesforce exceptions into the connectors.base tree, secrets scrubbed."""
        try:
            yield
        except HealthsyncError:
            raise
        except SalesforceExpiredSession:  # a rejected token is a credentials problem (exit 2), not a stop
            raise CredentialsError(
                f"Salesforce {what}: the access token was rejected (INVALID_SESSION_ID) and logging in again did not help; "
                "check the Salesforce credentials (sources.salesforce.*, HEALTHSYNC__SALESFORCE__ACCESS_TOKEN)"
            ) from None
        except SalesforceOperationError as exc:  # a Bulk 2.0 job failed or was aborted (not a SalesforceError)
            raise HealthsyncError(self._redact(f"Salesforce {what}: {exc}")) from None
        except SalesforceError as exc:
            detail = _describe_sf_error(exc)
            status = getattr(exc, "status", None)
            if status in (400, 404):
                raise HealthsyncError(self._redact(f"Salesforce {what}: {detail}")) from None
            if status == 403:
                raise CredentialsError(self._redact(f"Salesforce {what}: permission refused: {detail}")) from None
            raise StopRunError(self._redact(f"Salesforce {what}: {detail}")) from None

    # ------------------------------------------------------------------ describe

    def describe(self, sobject: str) -> dict:
        if sobject not in self._describes:
            with self._errors(f"describe {sobject}"):
                self._describes[sobject] = getattr(self.sf, sobject).describe()
        return self._describes[sobject]

    def _field_names(self, sobject: str) -> set[str]:
        return {f["name"] for f in self.describe(sobject).get("fields", [])}

    # ------------------------------------------------------------------ pull

    def pull(self, object: str, since: datetime | None = None) -> Iterator[Page]:
        """Pages of canonical records changed since `since - lookback` (all when None).

        Incremental on SystemModstamp with `>=` and the lookback window, ordered
        by (SystemModstamp, Id); records seen twice (updated while paging) are
        de-duplicated by Id. Deleted records (queryAll IsDeleted) come first in
        their own page so a stored cursor never skips a deletion.
        """
        run_start = datetime.now(timezone.utc)
        if object == "owners":
            yield self._pull_owners()
            return
        sec = section(self.mapping, object, "salesforce")
        sobject = sec.get("object") or {"tasks": "Task"}.get(object)
        if not sobject:
            raise ConfigurationError(f"mapping.salesforce.{object}.object is missing")
        existing = self._field_names(sobject)
        problems: list[str] = []
        if object == "tasks":
            key_field = sec.get("key_field") or "Healthsync_Key__c"
            read = {"task_id": "Id", "account_id": "WhatId", "status": "Status", "created_at": "CreatedDate", "due_at": "ActivityDate"}
            if key_field not in existing:
                raise ConfigurationError(f"Salesforce Task has no field {key_field}; run `healthsync crm setup`")
            read["key"] = key_field
        else:
            read = dict(sec.get("read") or {})
            if object == "accounts" and "domain" not in read and "Website" in existing:
                read["domain"] = "Website"  # extra column for cross-CRM identity (connectors/identity.py)
        fields: list[str] = []
        for column, field in read.items():
            if field.split(".")[0] not in existing:
                problems.append(
                    f"mapping.salesforce.{section_name(object)}.read.{column}: field {field} not found on {sobject}; column left empty"
                )
                continue
            if field not in fields:
                fields.append(field)
        for always in ("Id", "SystemModstamp"):
            if always not in fields:
                fields.append(always)
        where = ""
        start = None
        if since is not None:
            start = _aware(since) - self.lookback
            where = format_soql(" WHERE SystemModstamp >= {}", start)
            if object == "tasks":
                where += format_soql(" AND {:literal} != null", read["key"])
        elif object == "tasks":
            where = format_soql(" WHERE {:literal} != null", read["key"])
        soql = f"SELECT {', '.join(fields)} FROM {sobject}{where} ORDER BY SystemModstamp, Id"

        if since is not None:
            deleted = self._deleted_ids(sobject, start)
            if deleted:
                yield Page(object, _empty_like(object), cursor=None, deleted_ids=deleted)

        high_water: datetime | None = None
        seen: dict[str, str] = {}
        yielded = False
        with self._errors(f"query {sobject}"):
            result = self.sf.query(soql)
            while True:
                records = result.get("records", [])
                raw = pd.DataFrame.from_records([{k: v for k, v in r.items() if k != "attributes"} for r in records])
                if len(raw):
                    stamps = raw["SystemModstamp"].astype(str)
                    fresh = [seen.get(i) != s for i, s in zip(raw["Id"], stamps)]
                    raw = raw.loc[fresh].drop_duplicates("Id", keep="last")
                    seen.update(zip(raw["Id"], raw["SystemModstamp"].astype(str)))
                    page_max = pd.to_datetime(stamps, utc=True, errors="coerce").max()
                    if not pd.isna(page_max):
                        high_water = max(high_water, page_max.to_pydatetime()) if high_water else page_max.to_pydatetime()
                frame, page_problems = self._to_canonical(raw, object, read, sobject)
                cursor = min(high_water, run_start) if high_water else (_aware(since) if since else None)
                yield Page(object, frame, cursor=cursor, problems=(problems + page_problems) if not yielded else page_problems)
                yielded = True
                if result.get("done", True) or not result.get("nextRecordsUrl"):
                    break
                result = self.sf.query_more(result["nextRecordsUrl"], identifier_is_url=True)

    def _deleted_ids(self, sobject: str, start: datetime) -> list[str]:
        soql = format_soql(f"SELECT Id FROM {sobject} WHERE IsDeleted = true AND SystemModstamp >= {{}}", start)
        with self._errors(f"queryAll {sobject}"):
            rows = list(self.sf.query_all_iter(soql, include_deleted=True))
        return [f"sf:{r['Id']}" for r in rows]

    def _to_canonical(self, raw: pd.DataFrame, object: str, read: dict, sobject: str) -> tuple[pd.DataFrame, list[str]]:
        frame = pd.DataFrame(index=raw.index)
        for column, field in read.items():
            frame[column] = raw[field] if field in raw.columns else pd.NA
        if "owner_email" in frame.columns and len(frame):
            frame["owner_email"] = self._owner_email_series(frame["owner_email"])
        if object == "opportunities" and "probability" in frame.columns:
            frame["probability"] = pd.to_numeric(frame["probability"], errors="coerce") / 100.0  # SF percent -> 0-1
        if object == "tasks":
            key = frame.get("key")
            frame["playbook"] = key.astype("string").str.split(":").str[0] if key is not None else pd.NA
            completed = frame["status"].astype("string") == crm_values.SALESFORCE["task_status"]["completed"]
            stamps = raw["SystemModstamp"] if "SystemModstamp" in raw.columns else pd.Series(pd.NA, index=raw.index)
            # Task has no portable completion timestamp across API versions; the last modification of a
            # completed task is the closest signal (BEHAVIOR.md).
            frame["completed_at"] = stamps.where(completed.fillna(False).astype(bool), pd.NA)
        frame = translate_values(frame, object, crm_values.SALESFORCE, crm_values.SALESFORCE_READ_ALIASES)
        return finish(frame, object, self.prefix)

    def _load_owners(self) -> None:
        with self._errors("query User"):
            for r in self.sf.query_all_iter("SELECT Id, Email, Name, Title, ManagerId FROM User"):
                if r.get("Email"):
                    self._owner_emails[r["Id"]] = r["Email"]
                    self._owner_ids[r["Email"].lower()] = r["Id"]
                    self._owner_info[r["Id"]] = (r.get("Name"), r.get("Title"), r.get("ManagerId"))

    def _owner_email_series(self, owner_ids: pd.Series) -> pd.Series:
        ids = owner_ids.dropna().astype(str)
        if (~ids.isin(self._owner_emails.keys())).any():
            self._load_owners()
        return owner_ids.map(self._owner_emails)

    def _pull_owners(self) -> Page:
        self._load_owners()
        info = [self._owner_info.get(i, (None, None, None)) for i in self._owner_emails]
        frame = pd.DataFrame(
            {
                "owner_id": [f"sf:{i}" for i in self._owner_emails],
                "email": list(self._owner_emails.values()),
                # name, title and manager (User.ManagerId -> email): who the escalation ladder reaches
                "name": [n for n, _, _ in info],
                "role": [t for _, t, _ in info],
                "manager_email": [self._owner_emails.get(m) if m else None for _, _, m in info],
            }
        )
        return Page("owners", frame)

    # ------------------------------------------------------------------ push

    def push(self, object: str, changes: list[Change]) -> list[RecordResult]:
        """Write field changes: collections (200 per call) up to `bulk_threshold`, Bulk API 2.0 above.

        Exactly one result per change, in order. Ids that are not Salesforce ids and
        fields outside the mapping's write allowlist are `invalid` and never sent.
        On QuotaExhaustedError the exception carries `.results` for every change
        (ok for what was written, failed/QUOTA_EXHAUSTED for the rest).
        """
        sec = section(self.mapping, object, "salesforce")
        sobject = sec["object"]
        allowed = set((sec.get("write") or {}).values())
        results: list[RecordResult | None] = [None] * len(changes)
        valid: list[tuple[int, str, dict]] = []
        seen: set[str] = set()
        for i, change in enumerate(changes):
            raw_id = strip_prefix(change.record_id, self.prefix)
            if raw_id is None or not _SF_ID.match(raw_id):
                results[i] = RecordResult(change.record_id, "invalid", "INVALID_ID", "not a Salesforce record id")
                continue
            if raw_id[:15] in seen:  # one write per record per push; the caller merges changes first
                results[i] = RecordResult(change.record_id, "invalid", "DUPLICATE_ID", "the same record appears twice in one push")
                continue
            outside = sorted(set(change.fields) - allowed)
            if outside:
                results[i] = RecordResult(
                    change.record_id,
                    "invalid",
                    "FIELD_NOT_ALLOWED",
                    f"{', '.join(outside)} not in mapping.salesforce.{section_name(object)}.write",
                )
                continue
            if not change.fields:
                results[i] = RecordResult(change.record_id, "invalid", "NO_FIELDS", "nothing to write")
                continue
            seen.add(raw_id[:15])
            valid.append((i, raw_id, {k: _json_value(v) for k, v in change.fields.items()}))
        try:
            if len(valid) > self.bulk_threshold:
                self._push_bulk(sobject, changes, valid, results)
            else:
                self._push_collections(sobject, changes, valid, results)
        except QuotaExhaustedError as exc:
            exc.results = _fill(results, changes, "QUOTA_EXHAUSTED", str(exc))
            raise
        return _fill(results, changes, "NOT_SENT", "not sent")

    def _push_collections(self, sobject: str, changes, valid, results) -> None:
        for start in range(0, len(valid), COLLECTION_SIZE):
            chunk = valid[start : start + COLLECTION_SIZE]
            body = {
                "allOrNone": False,
                "records": [{"attributes": {"type": sobject}, "id": rid, **fields} for _, rid, fields in chunk],
            }
            with self._errors(f"update {sobject}"):
                reply = self.sf.restful("composite/sobjects", method="PATCH", json=body)
            for (i, _, _), item in zip(chunk, reply or []):
                results[i] = _save_result(changes[i].record_id, item)

    def _push_bulk(self, sobject: str, changes, valid, results) -> None:
        by_id = {rid: i for i, rid, _ in valid}
        columns = sorted({k for _, _, f in valid for k in f})
        rows = [{"Id": rid, **{c: _bulk_value(f.get(c)) if c in f else "" for c in columns}} for _, rid, f in valid]
        handler = getattr(self.sf.bulk2, sobject)
        try:
            with self._errors(f"Bulk API 2.0 update {sobject}"):
                jobs = handler.update(records=rows, wait=self.bulk_poll_seconds)
        except HealthsyncError as exc:
            if isinstance(exc, (StopRunError, ConfigurationError, RetryableError)):
                raise
            for i, _, _ in valid:  # the job failed as a whole: every row is retried next run
                results[i] = RecordResult(changes[i].record_id, "failed", "BULK_JOB_FAILED", str(exc), True)
            return
        with self._errors(f"Bulk API 2.0 results {sobject}"):
            for job in jobs:
                outcome = handler.get_all_ingest_records(job["job_id"])
                for row in outcome["successfulRecords"]:
                    i = by_id.get(row.get("Id") or row.get("sf__Id"))
                    if i is not None:
                        results[i] = RecordResult(changes[i].record_id, "ok", crm_id=row.get("sf__Id") or None)
                for row in outcome["failedRecords"]:
                    i = by_id.get(row.get("Id") or row.get("sf__Id"))
                    if i is not None:
                        code, _, message = (row.get("sf__Error") or "UNKNOWN_ERROR").partition(":")
                        results[i] = RecordResult(
                            changes[i].record_id, "failed", code, message.strip() or code, code in _RETRYABLE_RECORD_CODES
                        )
                for row in outcome["unprocessedRecords"]:
                    i = by_id.get(row.get("Id"))
                    if i is not None:
                        results[i] = RecordResult(changes[i].record_id, "failed", "UNPROCESSED", "Bulk job did not process the row", True)

    # ------------------------------------------------------------------ tasks

    def create_tasks(self, tasks: list[TaskSpec]) -> list[RecordResult]:
        """Create playbook tasks, idempotent by key: existing keys return their task id, nothing is created twice."""
        key_field = section(self.mapping, "tasks", "salesforce").get("key_field") or "Healthsync_Key__c"
        results: list[RecordResult | None] = [None] * len(tasks)
        todo: dict[str, tuple[list[int], dict]] = {}
        emails = {t.owner_email.lower() for t in tasks if t.owner_email}
        if emails - set(self._owner_ids):
            self._load_owners()
        for i, t in enumerate(tasks):
            what = strip_prefix(t.account_id, self.prefix)
            if not t.key:
                results[i] = RecordResult(t.account_id, "invalid", "NO_KEY", "task has no idempotency key")
                continue
            if what is None or not _SF_ID.match(what):
                results[i] = RecordResult(t.key, "invalid", "INVALID_ID", f"account id {t.account_id!r} is not a Salesforce id")
                continue
            if t.key in todo:
                todo[t.key][0].append(i)
                continue
            record = {
                "WhatId": what,
                "Subject": (t.subject or "")[:255],
                "Description": (t.description or "")[:32000],
                "ActivityDate": _json_value(pd.Timestamp(t.due_at).date()),
                "Priority": crm_values.to_crm(crm_values.SALESFORCE, "task_priority", t.priority),
                "Status": crm_values.SALESFORCE["task_status"]["open"],
                key_field: t.key,
            }
            owner = self._owner_ids.get(t.owner_email.lower()) if t.owner_email else None
            if owner:
                record["OwnerId"] = owner
            todo[t.key] = ([i], record)
        keys = list(todo)
        try:
            for start in range(0, len(keys), COLLECTION_SIZE):
                chunk = keys[start : start + COLLECTION_SIZE]
                outcome = self.retry.call(
                    lambda chunk=chunk: self._create_task_chunk(chunk, todo, key_field), stats=self.stats, what="Salesforce create tasks"
                )
                for key, result in outcome.items():
                    for i in todo[key][0]:
                        results[i] = RecordResult(key, result.outcome, result.error_code, result.message, result.retryable, result.crm_id)
                        if result.ok and todo[key][1].get("OwnerId") is None and tasks[i].owner_email:
                            results[i].message = f"owner {tasks[i].owner_email} is not a Salesforce user; task assigned to the integration user"
        except QuotaExhaustedError as exc:
            exc.results = _fill(results, [Change(t.key, {}) for t in tasks], "QUOTA_EXHAUSTED", str(exc))
            raise
        return _fill(results, [Change(t.key, {}) for t in tasks], "NOT_SENT", "not sent")

    def _create_task_chunk(self, keys: list[str], todo, key_field: str) -> dict[str, RecordResult]:
        existing: dict[str, str] = {}
        with self._errors("query Task"):
            soql = format_soql(f"SELECT Id, {key_field} FROM Task WHERE {key_field} IN {{}}", keys)
            for r in self.sf.query_all_iter(soql):
                existing[r[key_field]] = r["Id"]
        out = {k: RecordResult(k, "ok", crm_id=existing[k], message="already exists") for k in keys if k in existing}
        missing = [k for k in keys if k not in existing]
        if missing:
            body = {"allOrNone": False, "records": [{"attributes": {"type": "Task"}, **todo[k][1]} for k in missing]}
            with self._errors("create Task"), self._http.no_retry():
                reply = self.sf.restful("composite/sobjects", method="POST", json=body)
            for key, item in zip(missing, reply or []):
                result = _save_result(key, item)
                result.crm_id = item.get("id") if result.ok else None
                out[key] = result
        return out

    # ------------------------------------------------------------------ setup / check

    def setup(self) -> list[str]:
        """Create the healthsync custom fields via the Tooling API; fields already there are left alone."""
        created: list[str] = []
        for sobject, fields in HEALTHSYNC_FIELDS.items():
            existing = self._field_names(sobject)
            for name, meta in fields:
                if name in existing:
                    continue
                body = {"FullName": f"{sobject}.{name}", "Metadata": {**meta, "required": False}}
                with self._errors(f"create field {sobject}.{name}"):
                    try:
                        self.sf.toolingexecute("sobjects/CustomField/", method="POST", data=body)
                    except SalesforceError as exc:
                        if "DUPLICATE" not in str(exc.content):
                            raise
                created.append(f"{sobject}.{name}")
            self._describes.pop(sobject, None)
        return created

    def check(self) -> CheckResult:
        """Log in, describe every mapped object, and name any missing field or missing edit permission."""
        problems: list[str] = []
        details: dict[str, Any] = {}
        try:
            for object in ("accounts", "opportunities", "tickets", "tasks"):
                sec = section(self.mapping, object, "salesforce")
                sobject = sec.get("object") or "Task"
                try:
                    described = {f["name"]: f for f in self.describe(sobject).get("fields", [])}
                except (StopRunError, CredentialsError):  # unreachable / quota / token: not an object permission
                    raise
                except HealthsyncError as exc:
                    problems.append(f"{sobject}: cannot describe ({exc}); check the integration user's object permissions")
                    continue
                for column, field in (sec.get("read") or {}).items():
                    if field not in described:
                        problems.append(
                            f"{sobject}.{field} (mapping.salesforce.{section_name(object)}.read.{column}) does not exist "
                            "or the integration user cannot read it"
                        )
                writes = list((sec.get("write") or {}).items())
                if object == "tasks":
                    writes = [("key_field", (sec.get("key_field") or "Healthsync_Key__c"))]
                for column, field in writes:
                    meta = described.get(field)
                    key = f"mapping.salesforce.{section_name(object)}." + (column if column == "key_field" else f"write.{column}")
                    if meta is None:
                        problems.append(f"{sobject}.{field} ({key}) is missing; run `healthsync crm setup`")
                    elif not (meta.get("updateable", True) or meta.get("createable", True)):
                        problems.append(f"{sobject}.{field} is not editable by the integration user; grant field-level edit access")
            if self.usage:
                details["api_usage"] = {"used": self.usage[0], "limit": self.usage[1]}
        except ConfigurationError as exc:
            problems.append(str(exc))
        return CheckResult(ok=not problems, problems=problems, details=details)

    def close(self) -> None:
        self._http.close()


def section_name(object: str) -> str:
    return SECTIONS.get(object, object)


def _aware(value: datetime) -> datetime:
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _empty_like(object: str) -> pd.DataFrame:
    return empty_frame(SPECS[object]) if object in SPECS else pd.DataFrame()


def _save_result(record_id: str, item: dict) -> RecordResult:
    if item.get("success"):
        return RecordResult(record_id, "ok", crm_id=item.get("id"))
    errors = item.get("errors") or [{}]
    code = errors[0].get("statusCode") or errors[0].get("errorCode") or "UNKNOWN_ERROR"
    message = errors[0].get("message") or code
    fields = errors[0].get("fields")
    if fields:
        message = f"{message} ({', '.join(fields)})"
    return RecordResult(record_id, "failed", code, message, code in _RETRYABLE_RECORD_CODES)


def _fill(results: list, changes: list, code: str, message: str) -> list[RecordResult]:
    return [r if r is not None else RecordResult(c.record_id, "failed", code, message, True) for r, c in zip(results, changes)]


def _describe_sf_error(exc: SalesforceError) -> str:
    content = exc.content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return f"{content[0].get('errorCode')}: {content[0].get('message')}"
    return f"HTTP {exc.status}"


def salesforce_from_ready(ready: dict, mapping: dict, **kwargs) -> SalesforceConnector:
    """A connector for a running sandbox, from its ready-file dict (re-login through the sandbox's token endpoint)."""
    sf = ready["salesforce"]
    return SalesforceConnector(
        sf["instance_url"],
        sf.get("access_token"),
        auth="token",
        username=sf.get("username"),
        password=sf.get("password"),
        consumer_key=sf.get("consumer_key"),
        ca_file=sf.get("ca_file"),
        mapping=mapping,
        **kwargs,
    )
