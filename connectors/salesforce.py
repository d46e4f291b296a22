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
  REQUEST_LIMIT_EXCEEDED (1.7) into `QuotaExhaustedError`,
- learns the server's clock from the `Date` header (cursor caps and replication
  windows are in the org's time, not this machine's).

Incremental pulls leave out the integration user's own modifications; the
write-back guards each write against hiding someone else's edit (see
`pull` and connectors/BEHAVIOR.md "Own changes").
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession, SalesforceOperationError
from simple_salesforce.format import format_soql

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
    Page,
    QuotaExhaustedError,
    RecordResult,
    RetryableError,
    StopRunError,
    TaskSpec,
)
from healthsync.connectors.mapping import SECTIONS, finish, section, strip_prefix, translate_values
from healthsync.connectors.salesforce_fields import HealthsyncField, healthsync_fields
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

#: The permission set `setup()` creates to grant the integration user read/edit on the healthsync fields.
PERMISSION_SET_NAME = "Healthsync_Integration"
PERMISSION_SET_LABEL = "Healthsync Integration"
#: Deleted records stay listed (Recycle Bin, sobjects/{O}/deleted) for 15 days (resources_getdeleted.htm).
DELETED_RETENTION = timedelta(days=15)
#: sobjects/{O}/deleted needs start more than one minute before end (getDeleted rules).
_MIN_REPLICATION_WINDOW = timedelta(minutes=2)
#: Bulk API 2.0 job states after which nothing changes any more.
BULK_DONE_STATES = ("JobComplete", "Failed", "Aborted")
#: The longest pause between two status polls of a Bulk job (each poll is a counted API request).
BULK_MAX_POLL_INTERVAL_S = 30.0

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
        c.stats.count(write=method.upper() in ("POST", "PATCH", "PUT", "DELETE") and "/query" not in url)
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
            c.stats.count()
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


@dataclass
class BulkJob:
    """A Bulk API 2.0 ingest job as last seen: its state, and its per-row results once it is done.

    `successful` / `failed` / `unprocessed` are the rows of the three result CSVs (dicts keyed by
    column, `sf__Id`, `sf__Created`, `sf__Error` included); they stay empty until `done`.
    """

    job_id: str
    sobject: str
    state: str
    error: str | None = None
    created: datetime | None = None  # the job's createdDate (org time)
    finished: datetime | None = None  # its systemModstamp once done (org time)
    successful: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    unprocessed: list[dict] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.state in BULK_DONE_STATES


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
        bulk_max_wait_s: float = 120.0,
        exclude_own_changes: bool = True,
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
        self.bulk_poll_seconds = float(bulk_poll_seconds)
        if bulk_max_wait_s < 0:
            raise ConfigurationError("sources.salesforce.bulk_max_wait_s must be >= 0")
        self.bulk_max_wait_s = float(bulk_max_wait_s)
        self.exclude_own_changes = bool(exclude_own_changes)
        #: called with the canonical object before every write request (collections call, Bulk upload,
        #: Bulk poll); the write-back installs a guard sweep here (see `pull`). None = no guard.
        self.before_write: Callable[[str], None] | None = None
        self._user_id: str | None = None  # the integration user (None: not looked up yet, "": unknown)
        self._user_id_problem: str | None = None
        self._server_offset: timedelta | None = None  # org clock minus this machine's clock (Date header)
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
        self._owners_loaded = False
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
            raise AuthenticationError(
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
            raise AuthenticationError(
                self._redact(f"Salesforce login failed ({reason}); check sources.salesforce.username/consumer_key and the Salesforce secrets")
            )
        body = response.json()
        self._token = body["access_token"]
        self._redact.add(self._token)
        identity = str(body.get("id") or "").rstrip("/").rsplit("/", 1)[-1]  # .../id/<org id>/<user id>
        if _SF_ID.match(identity):
            self._user_id = identity
        if body.get("instance_url"):
            self.instance_url = body["instance_url"].rstrip("/")

    def instance_info(self) -> dict[str, Any]:
        """The instance the session runs on (the login's `instance_url`): records open at
        `<instance_url>/lightning/r/<Object>/<Id>/view`. No API call beyond the login."""
        self.sf  # noqa: B018 - logs in when needed; the token response names the instance
        return {"instance_url": self.instance_url} if self.instance_url else {}

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
        stamp = response.headers.get("Date")
        if stamp:
            try:
                server = parsedate_to_datetime(stamp)
            except (TypeError, ValueError):
                return
            if server.tzinfo is not None:
                # whole seconds, read after the answer: at most the true org time, never ahead of it
                self._server_offset = server - datetime.now(timezone.utc)

    def server_now(self) -> datetime:
        """The org's current time as far as we know it (this machine's clock until a response said otherwise)."""
        now = datetime.now(timezone.utc)
        return now + self._server_offset if self._server_offset is not None else now

    @property
    def integration_user_id(self) -> str | None:
        """The User id our token acts as (token response `id`, else `GET /services/oauth2/userinfo`); None if unknown."""
        if self._user_id is None:
            self.sf  # noqa: B018 - logs in when needed; a password/JWT login answers the identity
        if self._user_id is None:
            url = f"{self.instance_url}/services/oauth2/userinfo"
            try:
                response = self._http.request("GET", url, headers={"Authorization": "Bearer " + (self._token or "")})
                user = response.json().get("user_id") if response.status_code == 200 else None
            except (HealthsyncError, ValueError, AttributeError) as exc:
                if isinstance(exc, StopRunError):
                    raise
                user, response = None, None
            if user and _SF_ID.match(str(user)):
                self._user_id = str(user)
            else:
                self._user_id = ""
                status = getattr(response, "status_code", "no answer")
                self._user_id_problem = (
                    f"could not identify the Salesforce integration user (GET /services/oauth2/userinfo: {status}); "
                    "its own changes are read back on every pull"
                )
        return self._user_id or None

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
            raise AuthenticationError(
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

    def pull(self, object: str, since: datetime | None = None, *, deletions: bool = True) -> Iterator[Page]:
        """Pages of canonical records changed since `since - lookback` (all when None).

        Incremental on SystemModstamp with `>=` and the lookback window, ordered
        by (SystemModstamp, Id); records seen twice (updated while paging) are
        de-duplicated by Id; each page's cursor is capped at the run's start (org
        time). The integration user's own modifications are left out
        (`LastModifiedById != <us>`, `exclude_own_changes`): a record is read
        again only when someone else changed it. The write-back's guard sweeps
        keep our writes from hiding someone else's edit (connectors/BEHAVIOR.md).

        Deletions (`deletions=True`) come first in their own page: `sobjects/{O}/deleted`
        over [since - lookback, now]; when that window reaches past what Salesforce
        still lists (15 days, `earliestDateAvailable`, INVALID_REPLICATION_DATE) the
        page instead carries every live id (`Page.live_ids`, a full reconcile).
        """
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
        for column, field_name in read.items():
            if field_name.split(".")[0] not in existing:
                problems.append(
                    f"mapping.salesforce.{section_name(object)}.read.{column}: field {field_name} not found on {sobject}; column left empty"
                )
                continue
            if field_name not in fields:
                fields.append(field_name)
        for always in ("Id", "SystemModstamp"):
            if always not in fields:
                fields.append(always)
        conditions: list[str] = []
        start = None
        if since is not None:
            start = _aware(since) - self.lookback
            conditions.append(format_soql("SystemModstamp >= {}", start))
            own = self._own_changes_filter(object)
            if own:
                conditions.append(own)
            elif self._user_id_problem and object != "tasks":
                problems.append(self._user_id_problem)
        if object == "tasks":
            conditions.append(format_soql("{:literal} != null", read["key"]))
        where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
        soql = f"SELECT {', '.join(fields)} FROM {sobject}{where} ORDER BY SystemModstamp, Id"

        covered: datetime | None = None
        if since is not None and deletions and object != "tasks":  # deleted tasks are not read back: one call saved per run
            page, covered = self._deletions(object, sobject, start, read)
            if page is not None:
                yield page
        run_start = self.server_now()  # the org's clock, as its last answer told it
        cap = run_start
        if covered is not None:  # the next deletion window (cursor - lookback - 1 min) must start before it
            cap = min(cap, covered + self.lookback + timedelta(minutes=1))
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
                cursor = min(high_water, cap) if high_water else (_aware(since) if since else None)
                if since is not None and not deletions:
                    cursor = None  # no deletion check: the cursor must not move past what deletions covered
                yield Page(object, frame, cursor=cursor, problems=(problems + page_problems) if not yielded else page_problems)
                yielded = True
                if result.get("done", True) or not result.get("nextRecordsUrl"):
                    break
                result = self.sf.query_more(result["nextRecordsUrl"], identifier_is_url=True)

    def _own_changes_filter(self, object: str) -> str | None:
        """`LastModifiedById != '<integration user>'` for incremental pulls (not tasks: their readers need our creates)."""
        if not self.exclude_own_changes or object == "tasks":
            return None
        me = self.integration_user_id
        return format_soql("LastModifiedById != {}", me) if me else None

    def pull_own_writes(self, object: str, start: datetime, end: datetime) -> Iterator[Page]:
        """Records WE last modified in [start - lookback, end + lookback] (the complement of the pull's filter).

        The bounded re-read after a Bulk job that kept writing while no guard sweep ran (a job
        collected by a later run): someone's edit landing on a record before the job wrote it is
        hidden by our write, so those records are read back once. Pages carry no cursor.
        """
        me = self.integration_user_id
        sec = section(self.mapping, object, "salesforce")
        sobject = sec.get("object")
        read = dict(sec.get("read") or {})
        existing = self._field_names(sobject)
        if object == "accounts" and "domain" not in read and "Website" in existing:
            read["domain"] = "Website"
        fields = list(dict.fromkeys([f for f in read.values() if f.split(".")[0] in existing] + ["Id", "SystemModstamp"]))
        where = format_soql("SystemModstamp >= {} AND SystemModstamp <= {}", _aware(start) - self.lookback, _aware(end) + self.lookback)
        if me:
            where += format_soql(" AND LastModifiedById = {}", me)
        with self._errors(f"query {sobject}"):
            rows = [{k: v for k, v in r.items() if k != "attributes"}
                    for r in self.sf.query_all_iter(f"SELECT {', '.join(fields)} FROM {sobject} WHERE {where}")]
        frame, problems = self._to_canonical(pd.DataFrame.from_records(rows), object, read, sobject)
        yield Page(object, frame, cursor=None, problems=problems)

    def _deletions(self, object: str, sobject: str, start: datetime, read: dict) -> tuple[Page | None, datetime | None]:
        """(a page of the ids deleted in [start, now] or of every live id (full reconcile), latestDateCovered).

        The window starts a minute before the records' (the endpoint ignores seconds, so the last
        partial minute of one window is read again by the next) and spans more than a minute.
        """
        now = self.server_now()
        start = min(start - timedelta(minutes=1), now - _MIN_REPLICATION_WINDOW)  # earlier is harmless (idempotent)
        reason = None
        deleted: list[str] = []
        problems: list[str] = []
        covered: datetime | None = None
        if start < now - DELETED_RETENTION:
            reason = f"the last pull is older than the {DELETED_RETENTION.days} days Salesforce lists deletions"
        else:
            try:
                with self._errors(f"get deleted {sobject}"):
                    answer = getattr(self.sf, sobject).deleted(start.astimezone(timezone.utc), now.astimezone(timezone.utc))
                    fresh = self.server_now()  # the answer's Date header: the org clock moved on since we last heard?
                    if fresh.replace(second=0, microsecond=0) > now.replace(second=0, microsecond=0):
                        now = fresh
                        answer = getattr(self.sf, sobject).deleted(start.astimezone(timezone.utc), now.astimezone(timezone.utc))
            except HealthsyncError as exc:
                if isinstance(exc, (StopRunError, ConfigurationError)) or "INVALID_REPLICATION_DATE" not in str(exc):
                    raise
                reason = f"Salesforce no longer lists deletions since {start:%Y-%m-%d %H:%M} ({exc})"
            else:
                deleted = [f"sf:{r['id']}" for r in answer.get("deletedRecords") or [] if r.get("id")]
                earliest = _parse_sf_time(answer.get("earliestDateAvailable"))
                covered = _parse_sf_time(answer.get("latestDateCovered"))
                if earliest is not None and earliest > start:
                    reason = f"deletions before {earliest:%Y-%m-%d %H:%M} were purged (earliestDateAvailable)"
                if covered is not None and covered + self.lookback < now - _MIN_REPLICATION_WINDOW:
                    problems.append(
                        f"Salesforce {sobject}: deletions are listed only up to {covered:%Y-%m-%d %H:%M} (latestDateCovered), "
                        "more than the lookback window ago; a deletion after it may be seen late (raise "
                        "sources.salesforce.lookback_minutes)"
                    )
        if reason is None:
            if not deleted and not problems:
                return None, covered
            return Page(object, _empty_like(object), cursor=None, deleted_ids=deleted, problems=problems), covered
        log.info("Salesforce %s: %s; reconciling every id", sobject, reason)
        where = format_soql(" WHERE {:literal} != null", read["key"]) if object == "tasks" else ""
        with self._errors(f"query {sobject} ids"):
            live = [f"sf:{r['Id']}" for r in self.sf.query_all_iter(f"SELECT Id FROM {sobject}{where}")]
        page = Page(object, _empty_like(object), cursor=None, deleted_ids=deleted, live_ids=live,
                    problems=problems + [f"Salesforce {sobject}: {reason}; every id was reconciled instead"])
        return page, None

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
        """The users, once per connector (one run): every later need (owner emails of pulled records,
        task owners, the escalation ladder) reads this cache; an id unknown after that stays unknown."""
        if self._owners_loaded:
            return
        with self._errors("query User"):
            for r in self.sf.query_all_iter("SELECT Id, Email, Name, Title, ManagerId FROM User"):
                if r.get("Email"):
                    self._owner_emails[r["Id"]] = r["Email"]
                    self._owner_ids[r["Email"].lower()] = r["Id"]
                    self._owner_info[r["Id"]] = (r.get("Name"), r.get("Title"), r.get("ManagerId"))
        self._owners_loaded = True

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
                self._push_bulk(sobject, changes, valid, results, object)
            else:
                self._push_collections(sobject, changes, valid, results, object)
        except QuotaExhaustedError as exc:
            exc.results = _fill(results, changes, "QUOTA_EXHAUSTED", str(exc))
            raise
        return _fill(results, changes, "NOT_SENT", "not sent")

    def _push_collections(self, sobject: str, changes, valid, results, object: str | None = None) -> None:
        for start in range(0, len(valid), COLLECTION_SIZE):
            chunk = valid[start : start + COLLECTION_SIZE]
            body = {
                "allOrNone": False,
                "records": [{"attributes": {"type": sobject}, "id": rid, **fields} for _, rid, fields in chunk],
            }
            self._guard(object)
            with self._errors(f"update {sobject}"):
                reply = self.sf.restful("composite/sobjects", method="PATCH", json=body)
            for (i, _, _), item in zip(chunk, reply or []):
                results[i] = _save_result(changes[i].record_id, item)

    def _guard(self, object: str | None) -> None:
        """Run the write-back's guard sweep (if installed) right before a write request."""
        if self.before_write is not None and object is not None:
            self.before_write(object)

    def _push_bulk(self, sobject: str, changes, valid, results, object: str | None = None) -> None:
        columns = sorted({k for _, _, f in valid for k in f})
        rows = [{"Id": rid, **{c: _bulk_value(f.get(c)) if c in f else "" for c in columns}} for _, rid, f in valid]
        index = {rid: i for i, rid, _ in valid}
        for part in _csv_parts(rows):
            mapped = [(index[r["Id"]], changes[index[r["Id"]]].record_id, r["Id"]) for r in part]
            try:
                job = self.bulk_ingest(sobject, "update", part, object=object)
            except HealthsyncError as exc:
                if isinstance(exc, (StopRunError, ConfigurationError, RetryableError)):
                    raise
                for i, record_id, _ in mapped:  # the job could not be submitted: nothing applied, retried next run
                    results[i] = RecordResult(record_id, "failed", "BULK_JOB_FAILED", str(exc), True)
                continue
            self._bulk_results(job, mapped, results)

    def collect_push(self, object: str, job_id: str,
                     record_ids: list[str]) -> tuple[list[RecordResult], tuple[datetime, datetime] | None] | None:
        """The outcome of a write-back Bulk job left running by an earlier run; None while it still runs.

        One status poll (no waiting: the job has had a whole run interval), then its result files:
        (one result per record id, in order; the org-time window in which the job wrote, for the
        re-read of our own writes, or None when pulls read our own changes anyway). Nothing is sent again.
        """
        sobject = section(self.mapping, object, "salesforce")["object"]
        job = self.bulk_job(sobject, job_id, wait_s=0)
        if not job.done:
            return None
        results: list[RecordResult | None] = [None] * len(record_ids)
        self._bulk_results(job, [(i, rid, strip_prefix(rid, self.prefix)) for i, rid in enumerate(record_ids)], results)
        window = None
        if self.exclude_own_changes and job.created is not None:
            window = (job.created, job.finished or self.server_now())
        return results, window  # type: ignore[return-value]

    def _bulk_results(self, job: BulkJob, rows: list[tuple[int, str, str]], results: list) -> None:
        """Map a job's per-row results onto `results` (index, canonical id, Salesforce id)."""
        if not job.done:
            for i, record_id, _ in rows:
                results[i] = RecordResult(record_id, "failed", "BULK_JOB_PENDING",
                                          f"Bulk job {job.job_id} is still {job.state}; its results are collected next run",
                                          True, crm_id=job.job_id)
            return
        by_id = {sf_id[:15]: (i, record_id) for i, record_id, sf_id in rows}

        def hit(row: dict):
            rid = row.get("Id") or row.get("sf__Id") or ""
            return by_id.get(rid[:15])

        for row in job.successful:
            found = hit(row)
            if found:
                results[found[0]] = RecordResult(found[1], "ok", crm_id=row.get("sf__Id") or None)
        for row in job.failed:
            found = hit(row)
            if found:
                code, _, message = (row.get("sf__Error") or "UNKNOWN_ERROR").partition(":")
                results[found[0]] = RecordResult(found[1], "failed", code, message.strip() or code, code in _RETRYABLE_RECORD_CODES)
        why = f"Bulk job {job.job_id} {job.state}" + (f": {job.error}" if job.error else "")
        for i, record_id, _ in rows:
            if results[i] is None:  # in no result file: not processed (job failed, aborted, or skipped the row)
                code = "UNPROCESSED" if job.state == "JobComplete" else "BULK_JOB_FAILED"
                results[i] = RecordResult(record_id, "failed", code, self._redact(why), True)

    # ------------------------------------------------------------------ Bulk API 2.0 (shared helper)

    def bulk_ingest(self, sobject: str, operation: str, rows: list[dict], *, external_id_field: str | None = None,
                    object: str | None = None, wait_s: float | None = None) -> BulkJob:
        """One Bulk API 2.0 ingest job: create, upload `rows` (dicts of CSV cells), close, then wait at most
        `wait_s` (default `bulk_max_wait_s`) for it to finish.

        Real jobs sit in UploadComplete/InProgress for minutes and every status poll is a counted
        API request, so polls back off (`bulk_poll_seconds`, x1.5, at most 30 s apart) and stop at the
        bound: the job then comes back not `done`, and the caller keeps `job_id` to collect it later
        with `bulk_job` (never resend). Reusable for any object/operation (e.g. a task upsert on
        Healthsync_Key__c); `object` (canonical) lets the write-back's guard run before each request.
        """
        client = self._bulk_client(sobject)
        self._guard(object)
        with self._errors(f"Bulk API 2.0 {operation} {sobject}"):
            info = client.create_job(operation, external_id_field=external_id_field)
        job_id = info["id"]
        try:
            with self._errors(f"Bulk API 2.0 upload {sobject}"):
                client.upload_job_data(job_id, _to_csv(rows))
                client.close_job(job_id)
        except HealthsyncError:
            with suppress_healthsync(), self._errors(f"Bulk API 2.0 abort {sobject}"):
                client.abort_job(job_id, False)  # never leave an Open job behind; nothing of it was applied
            raise
        return self.bulk_job(sobject, job_id, object=object, wait_s=self.bulk_max_wait_s if wait_s is None else wait_s)

    def bulk_job(self, sobject: str, job_id: str, *, object: str | None = None, wait_s: float = 0.0) -> BulkJob:
        """Poll a job (first poll now, then backing off) until it is done or `wait_s` ran out; results once done."""
        client = self._bulk_client(sobject)
        deadline = time.monotonic() + max(0.0, wait_s)
        interval = max(0.01, self.bulk_poll_seconds)
        first = True
        while True:
            if not first:
                self._guard(object)
            first = False
            with self._errors(f"Bulk API 2.0 status {sobject}"):
                info = client.get_job(job_id, False)
            state = str(info.get("state"))
            if state in BULK_DONE_STATES or time.monotonic() + interval > deadline:
                break
            time.sleep(interval)
            interval = min(interval * 1.5, BULK_MAX_POLL_INTERVAL_S)
        job = BulkJob(job_id, sobject, state, error=info.get("errorMessage"),
                      created=_parse_sf_time(info.get("createdDate")), finished=_parse_sf_time(info.get("systemModstamp")))
        if job.done:
            handler = getattr(self.sf.bulk2, sobject)
            with self._errors(f"Bulk API 2.0 results {sobject}"):
                outcome = handler.get_all_ingest_records(job_id)
            job.successful = list(outcome["successfulRecords"])
            job.failed = list(outcome["failedRecords"])
            job.unprocessed = list(outcome["unprocessedRecords"])
        return job

    def _bulk_client(self, sobject: str):
        """simple-salesforce's Bulk 2.0 client for one object (create/upload/close/get_job, on our session)."""
        return getattr(self.sf.bulk2, sobject)._client

    # ------------------------------------------------------------------ tasks

    def create_tasks(self, tasks: list[TaskSpec], *, before_send=None, after_chunk=None) -> list[RecordResult]:
        """Upsert playbook tasks on their external id (`Healthsync_Key__c`): one call per 200, no lookup first.

        The key field is External ID + Unique, so the upsert itself is the idempotency check
        (an existing key answers `created: false` with its id) and a retried request can
        never make a second task. Up to `bulk_threshold` tasks go through sObject
        Collections upsert (crm-api-notes 1.6), more through one Bulk API 2.0 upsert job
        (1.9: "more than 2,000 records is a good candidate for Bulk API 2.0").
        """
        key_field = section(self.mapping, "tasks", "salesforce").get("key_field") or "Healthsync_Key__c"
        results: list[RecordResult | None] = [None] * len(tasks)
        todo: dict[str, tuple[list[int], dict]] = {}
        if any(t.owner_email for t in tasks):
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

        def settle(outcome: dict[str, RecordResult]) -> None:
            for key, result in outcome.items():
                for i in todo[key][0]:
                    results[i] = RecordResult(key, result.outcome, result.error_code, result.message, result.retryable, result.crm_id)
                    if result.ok and todo[key][1].get("OwnerId") is None and tasks[i].owner_email:
                        results[i].message = f"owner {tasks[i].owner_email} is not a Salesforce user; task assigned to the integration user"
            if after_chunk is not None and outcome:
                after_chunk(list(outcome.values()))

        keys = list(todo)
        try:
            if len(keys) > self.bulk_threshold:
                if before_send is not None:
                    before_send(list(keys))
                settle(self._upsert_tasks_bulk(keys, todo, key_field))
            else:
                for start in range(0, len(keys), COLLECTION_SIZE):
                    chunk = keys[start : start + COLLECTION_SIZE]
                    if before_send is not None:
                        before_send(list(chunk))
                    settle(self._upsert_task_chunk(chunk, todo, key_field))
        except QuotaExhaustedError as exc:
            exc.results = _fill(results, [Change(t.key, {}) for t in tasks], "QUOTA_EXHAUSTED", str(exc))
            raise
        return _fill(results, [Change(t.key, {}) for t in tasks], "NOT_SENT", "not sent")

    def _upsert_task_chunk(self, keys: list[str], todo, key_field: str) -> dict[str, RecordResult]:
        """`PATCH composite/sobjects/Task/{key_field}` (API 46+): UpsertResults in request order, each with `created`."""
        body = {"allOrNone": False, "records": [{"attributes": {"type": "Task"}, **todo[k][1]} for k in keys]}
        with self._errors("upsert Task"):
            reply = self.sf.restful(f"composite/sobjects/Task/{key_field}", method="PATCH", json=body)
        out: dict[str, RecordResult] = {}
        for key, item in zip(keys, reply or []):
            result = _save_result(key, item)
            result.crm_id = item.get("id") if result.ok else None
            if result.ok and item.get("created") is False:
                result.message = "already exists"
            out[key] = result
        for key in keys[len(out):]:  # fewer results than records: unknown, the upsert is safe to repeat
            out[key] = RecordResult(key, "failed", MAYBE_CREATED, "Salesforce did not answer for this task", True)
        return out

    def _upsert_tasks_bulk(self, keys: list[str], todo, key_field: str) -> dict[str, RecordResult]:
        """Bulk API 2.0 `upsert` jobs on `key_field` (the shared bounded `bulk_ingest`); results matched back by key.

        A job still running at the bound (`bulk_max_wait_s`) leaves its tasks MAYBE_CREATED: the
        next run upserts them again, which the unique external id makes harmless.
        """
        columns = sorted({c for k in keys for c in todo[k][1]})
        rows = [{c: _bulk_value(todo[k][1].get(c)) if c in todo[k][1] else "" for c in columns} for k in keys]
        wanted = set(keys)
        out: dict[str, RecordResult] = {}
        for part in _csv_parts(rows):
            try:
                job = self.bulk_ingest("Task", "upsert", part, external_id_field=key_field)
            except HealthsyncError as exc:
                if isinstance(exc, (StopRunError, ConfigurationError, RetryableError)):
                    raise
                for r in part:  # not submitted: nothing applied
                    out[r[key_field]] = RecordResult(r[key_field], "failed", "BULK_JOB_FAILED", str(exc), True)
                continue
            if not job.done:
                for r in part:
                    out[r[key_field]] = RecordResult(r[key_field], "failed", MAYBE_CREATED,
                                                     f"Bulk job {job.job_id} is still {job.state}; upserted again next run", True)
                continue
            for row in job.successful:
                k = row.get(key_field)
                if k in wanted:
                    created = str(row.get("sf__Created", "true")).lower() == "true"
                    out[k] = RecordResult(k, "ok", crm_id=row.get("sf__Id") or None, message=None if created else "already exists")
            for row in job.failed:
                k = row.get(key_field)
                if k in wanted:
                    code, _, message = (row.get("sf__Error") or "UNKNOWN_ERROR").partition(":")
                    out[k] = RecordResult(k, "failed", code, message.strip() or code, code in _RETRYABLE_RECORD_CODES)
        for k in keys:
            out.setdefault(k, RecordResult(k, "failed", MAYBE_CREATED, "the Bulk job did not process this task", True))
        return out

    # ------------------------------------------------------------------ setup / check

    def setup(self) -> list[str]:
        """Create the healthsync fields (Tooling API) and give the integration user read/edit on them.

        Fields made through the Tooling API have no field-level security: nobody sees them until a
        permission grants it, so `check()` would keep asking for `crm setup`. Access is granted
        through the permission set `Healthsync_Integration` (PermissionSet, FieldPermissions,
        PermissionSetAssignment over REST). Returns the fields this call created; a field that was
        already there (DUPLICATE_DEVELOPER_NAME, e.g. created earlier but invisible) is "already
        exists", not "created". When the integration user may not manage permission sets, raises
        ConfigurationError with the exact steps for a Salesforce administrator.
        """
        wanted = healthsync_fields(self.mapping)
        created: list[str] = []
        existed: list[str] = []
        for f in wanted:
            if f.name in self._field_names(f.sobject):
                existed.append(f.permission_name)
                continue
            body = {"FullName": f.full_name, "Metadata": {**f.metadata, "required": False}}
            with self._errors(f"create field {f.full_name}"):
                try:
                    self.sf.toolingexecute("sobjects/CustomField/", method="POST", data=body)
                except SalesforceError as exc:
                    if "DUPLICATE" not in str(exc.content):
                        raise
                    existed.append(f.permission_name)  # there already, invisible to us: access is granted below
                    continue
            created.append(f.permission_name)
        self.setup_report = {"created": created, "already_existed": existed, "access_granted": []}
        self._describes.clear()
        if not all(self._usable(f) for f in wanted):
            try:
                self.setup_report["access_granted"] = self._grant_field_access(wanted)
            except HealthsyncError as exc:
                if isinstance(exc, StopRunError):
                    raise
                raise ConfigurationError(self._admin_steps(wanted, str(exc))) from None
            self._describes.clear()
            still = [f for f in wanted if not self._usable(f)]
            if still:
                raise ConfigurationError(self._admin_steps(still, "the fields are still not editable after the grant"))
        return created

    def _usable(self, f: HealthsyncField) -> bool:
        """The integration user sees the field and may write it (describe honours field-level security)."""
        meta = next((x for x in self.describe(f.sobject).get("fields", []) if x["name"] == f.name), None)
        return meta is not None and bool(meta.get("updateable", True) or meta.get("createable", True))

    def _grant_field_access(self, fields: list[HealthsyncField]) -> list[str]:
        """Permission set Healthsync_Integration with read+edit on `fields`, assigned to us; idempotent."""
        me = self.integration_user_id
        if not me:
            raise HealthsyncError(self._user_id_problem or "could not identify the integration user")
        with self._errors("query PermissionSet"):
            found = self.sf.query(format_soql("SELECT Id FROM PermissionSet WHERE Name = {}", PERMISSION_SET_NAME))["records"]
        if found:
            ps = found[0]["Id"]
        else:
            with self._errors("create PermissionSet"):
                ps = self.sf.PermissionSet.create({"Name": PERMISSION_SET_NAME, "Label": PERMISSION_SET_LABEL,
                                                   "Description": "Read/edit on the fields healthsync writes"})["id"]
        with self._errors("query FieldPermissions"):
            have = {r["Field"]: r for r in self.sf.query_all_iter(
                format_soql("SELECT Id, Field, PermissionsRead, PermissionsEdit FROM FieldPermissions WHERE ParentId = {}", ps))}
        new = [{"attributes": {"type": "FieldPermissions"}, "ParentId": ps, "SobjectType": f.sobject,
                "Field": f.permission_name, "PermissionsRead": True, "PermissionsEdit": True}
               for f in fields if f.permission_name not in have]
        fix = [{"attributes": {"type": "FieldPermissions"}, "id": have[f.permission_name]["Id"],
                "PermissionsRead": True, "PermissionsEdit": True}
               for f in fields if f.permission_name in have
               and not (have[f.permission_name].get("PermissionsRead") and have[f.permission_name].get("PermissionsEdit"))]
        for method, rows in (("POST", new), ("PATCH", fix)):
            for start in range(0, len(rows), COLLECTION_SIZE):
                chunk = rows[start : start + COLLECTION_SIZE]
                with self._errors("grant field permissions"):
                    reply = self.sf.restful("composite/sobjects", method=method, json={"allOrNone": False, "records": chunk})
                refused = [(row.get("Field") or row.get("id"), item) for row, item in zip(chunk, reply or []) if not item.get("success")]
                if refused:
                    what, item = refused[0]
                    error = (item.get("errors") or [{}])[0]
                    raise HealthsyncError(f"FieldPermissions {what}: {error.get('statusCode')}: {error.get('message')}")
        with self._errors("query PermissionSetAssignment"):
            assigned = self.sf.query(format_soql(
                "SELECT Id FROM PermissionSetAssignment WHERE PermissionSetId = {} AND AssigneeId = {}", ps, me))["records"]
        if not assigned:
            with self._errors("assign PermissionSet"):
                self.sf.PermissionSetAssignment.create({"PermissionSetId": ps, "AssigneeId": me})
        return [f.permission_name for f in fields]

    def _admin_steps(self, fields: list[HealthsyncField], reason: str) -> str:
        """The exact steps for a Salesforce administrator when we may not grant field access ourselves."""
        by_object: dict[str, list[str]] = {}
        for f in fields:
            by_object.setdefault(f.sobject, []).append(f"{f.metadata.get('label', f.name)} ({f.name})")
        lines = "; ".join(f"{obj}: {', '.join(names)}" for obj, names in by_object.items())
        who = self.username or self.integration_user_id or "the integration user"
        return (
            f"the integration user cannot be given access to the healthsync fields ({reason}). "
            f"Ask a Salesforce administrator to: (1) Setup > Permission Sets > New, Label '{PERMISSION_SET_LABEL}', "
            f"API Name '{PERMISSION_SET_NAME}'; (2) in it, Object Settings > each object > Edit, tick Read Access and "
            f"Edit Access for: {lines}; (3) Manage Assignments > Add Assignment > {who}. "
            "Then run `healthsync crm check`."
        )

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
                except (StopRunError, AuthenticationError):  # unreachable / quota / token: not an object permission
                    raise
                except HealthsyncError as exc:
                    problems.append(f"{sobject}: cannot describe ({exc}); check the integration user's object permissions")
                    continue
                for column, field_name in (sec.get("read") or {}).items():
                    if field_name not in described:
                        problems.append(
                            f"{sobject}.{field_name} (mapping.salesforce.{section_name(object)}.read.{column}) does not exist "
                            "or the integration user cannot read it"
                        )
                writes = list((sec.get("write") or {}).items())
                if object == "tasks":
                    writes = [("key_field", (sec.get("key_field") or "Healthsync_Key__c"))]
                    problems.extend(_picklist_problems(described))
                for column, field_name in writes:
                    meta = described.get(field_name)
                    key = f"mapping.salesforce.{section_name(object)}." + (column if column == "key_field" else f"write.{column}")
                    if meta is None:
                        problems.append(
                            f"{sobject}.{field_name} ({key}) is missing or not visible to the integration user (no "
                            f"field-level security); run `healthsync crm setup` (it creates the field and grants access "
                            f"through the permission set {PERMISSION_SET_NAME})"
                        )
                    elif not (meta.get("updateable", True) or meta.get("createable", True)):
                        problems.append(
                            f"{sobject}.{field_name} is read-only for the integration user; run `healthsync crm setup` "
                            f"or grant Edit Access on it (permission set {PERMISSION_SET_NAME})"
                        )
            if self.usage:
                details["api_usage"] = {"used": self.usage[0], "limit": self.usage[1]}
        except AuthenticationError:  # nothing else can be checked, nor set up (exit 2)
            raise
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


#: Bulk 2.0 uploads are at most 150 MB (simple-salesforce refuses 100 MB); stay well below
_MAX_CSV_BYTES = 90 * 1024 * 1024


def _to_csv(rows: list[dict]) -> str:
    """Rows -> Bulk 2.0 CSV (LF line endings, header from the first row's keys plus any later ones)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _csv_parts(rows: list[dict]) -> list[list[dict]]:
    """Split rows into jobs whose CSV stays under the upload limit (one part in every ordinary case)."""
    if not rows:
        return []
    size = len(_to_csv(rows[:100]).encode("utf-8")) / min(len(rows), 100)
    per_job = max(1, int(_MAX_CSV_BYTES / max(size, 1.0)))
    return [rows[i : i + per_job] for i in range(0, len(rows), per_job)]


@contextmanager
def suppress_healthsync():
    """Best effort: a failure inside (e.g. aborting a job after an upload error) must not hide the first error."""
    try:
        yield
    except HealthsyncError:
        log.debug("best-effort Salesforce call failed", exc_info=True)


def _fill(results: list, changes: list, code: str, message: str) -> list[RecordResult]:
    return [r if r is not None else RecordResult(c.record_id, "failed", code, message, True) for r, c in zip(results, changes)]


def _picklist_problems(task_fields: dict) -> list[str]:
    """Task Status/Priority values healthsync writes that a restricted picklist of this org would refuse."""
    out = []
    for field_name, kind in (("Status", "task_status"), ("Priority", "task_priority")):
        meta = task_fields.get(field_name)
        if not meta or not meta.get("restrictedPicklist"):
            continue
        allowed = {v.get("value") for v in meta.get("picklistValues") or [] if v.get("active", True)}
        missing = sorted(set(crm_values.SALESFORCE[kind].values()) - allowed)
        if missing:
            out.append(f"Task.{field_name} is a restricted picklist without {', '.join(missing)}, which healthsync writes; "
                       "add the values or adjust connectors/crm_values.py")
    return out


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
