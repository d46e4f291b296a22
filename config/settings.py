"""Settings schema, YAML loader with environment overrides, and secrets.

Precedence (later wins): packaged `config/default.yaml` -> the user's files in
the order given (`--config base.yaml --config overlay.yaml`: each deep-merged over
the result so far, the same merge as over the defaults; e.g. the overlay
`healthsync calibrate` writes, stacked on the config it was calibrated with) ->
environment variables `HEALTHSYNC__SECTION__KEY`.

Secrets (`SecretStr`) are read only from the environment or a secrets file
(`HEALTHSYNC_SECRETS_FILE`, YAML or `KEY=value` lines, same names as the
environment variables); a secret written into a config file is a configuration
error, because config files get committed. `HEALTHSYNC__SALESFORCE__PASSWORD`
is short for `HEALTHSYNC__SOURCES__SALESFORCE__PASSWORD` (the section names of
sources are accepted at the top level).

Every validation error names the key path (`model.metrics.2.weight`) and what
is wrong; `load_settings` raises `ConfigError` carrying all of them at once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from copy import deepcopy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_serializer, model_validator

from healthsync.config.model import ForecastConfig, ModelConfig, Strict

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.yaml")
ENV_PREFIX = "HEALTHSYNC__"
SECRETS_FILE_ENV = "HEALTHSYNC_SECRETS_FILE"


class ConfigError(Exception):
    """One or more configuration problems, each naming its key path."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"{len(problems)} configuration problem(s){where}:\n" + "\n".join(f"  - {p}" for p in problems))


# ----------------------------------------------------------------------------- sources


class SalesforceSource(Strict):
    enabled: bool = True
    auth: Literal["jwt", "password", "token"] = "jwt"
    domain: str = "login"
    api_version: str = "59.0"
    username: str | None = None
    consumer_key: str | None = None
    instance_url: str | None = None
    ca_file: str | None = None
    bulk_threshold: int = Field(2000, ge=1)
    quota_stop_share: float = Field(0.8, gt=0, le=1)
    lookback_minutes: int = Field(5, ge=0)
    timeout_s: float = Field(30, gt=0)
    # Bulk API 2.0: wait at most this long for a job in one run (polls back off from bulk_poll_s);
    # a job still running is kept in state and collected by the next run, never sent again
    bulk_max_wait_s: float = Field(120, ge=0)
    bulk_poll_s: float = Field(2, gt=0)
    # incremental pulls skip records whose last change is the integration user's own write
    exclude_own_changes: bool = True
    # secrets: environment / secrets file only
    password: SecretStr | None = None
    security_token: SecretStr | None = None
    consumer_secret: SecretStr | None = None
    private_key: SecretStr | None = None
    access_token: SecretStr | None = None

    @property
    def configured(self) -> bool:
        """Credentials present for the chosen auth mode (otherwise the sandbox is used)."""
        if not self.enabled:
            return False
        if self.auth == "token":
            return bool(self.access_token and self.instance_url)
        if self.auth == "password":
            return bool(self.username and self.password)
        return bool(self.username and self.consumer_key and self.private_key)


class HubSpotSource(Strict):
    enabled: bool = True
    tier: Literal["starter", "professional"] = "professional"
    host: str | None = None
    lookback_minutes: int = Field(5, ge=0)
    timeout_s: float = Field(30, gt=0)
    # share of the tier's allowance (190 or 100 requests per 10 s, 5 searches per second) left unused
    pacing_margin: float = Field(0.0, ge=0, lt=1)
    # seconds a write may take to become searchable: the pull cursor never passes run start minus this,
    # and a task whose create went unanswered is looked up by key only once this has passed
    search_lag_s: float = Field(60.0, ge=0, le=600)
    access_token: SecretStr | None = None

    @property
    def configured(self) -> bool:
        return bool(self.enabled and self.access_token)


class SlackSource(Strict):
    enabled: bool = True
    base_url: str | None = None
    bot_token: SecretStr | None = None

    @property
    def configured(self) -> bool:
        return bool(self.enabled and self.bot_token)


def redact_url(url: str | None) -> str | None:
    """A database URL safe to show: the password replaced by ***; an unparsable one shown not at all."""
    if url is None:
        return None
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - whatever the text holds, it is not echoed
        return "(unparsable URL, not shown)"


def url_password(url: str | None) -> str | None:
    """The password inside a database URL (None when there is none or the URL does not parse)."""
    if not url:
        return None
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password or None
    except Exception:  # noqa: BLE001
        return None


class _WarehouseRelation(Strict):
    """A table (optionally `schema.table`) or a SQL query of the warehouse; exactly one of them."""

    table: str | None = None
    query: str | None = None
    account_key: str = Field("account_key", description="column holding the product's account id")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.table is None) == (self.query is None):
            raise ValueError("table: set exactly one of table or query")
        return self


class WarehouseEvents(_WarehouseRelation):
    """Usage events, one row per event or per account-day; the columns healthsync reads."""

    timestamp: str = Field("occurred_at", description="event time (timestamp or date column)")
    user_id: str | None = Field(None, description="user id column; without it there is no active_users_30d")
    feature: str | None = Field(None, description="event or feature name column; without it every event is a login")
    value: str | None = Field(None, description="numeric value per row (e.g. a count on account-day rows); default 1")
    login_event: str = Field("login", description="the `feature` value that counts as a login (a session)")
    features_available: int | None = Field(
        None, ge=1, description="distinct features the product offers; default: the CRM's features_available"
    )


class WarehouseTouchpoints(_WarehouseRelation):
    """Marketing/sales touchpoints for the multi-touch-attribution engagement signal (seed 000)."""

    timestamp: str = "touched_at"
    channel: str | None = None
    model: Literal["first", "last", "linear", "time_decay", "position_based"] = "time_decay"
    lookback_days: int = Field(90, ge=1, le=3650)
    decay_lambda: float = Field(0.1, ge=0)
    channel_weights: dict[str, float] = Field(default_factory=dict, description="channel -> credit multiplier (1 if absent)")


class AccountMatch(Strict):
    """How warehouse account keys find CRM accounts: a CRM field holding the product's id, or the domain."""

    crm_field: str | None = None
    on: Literal["domain"] | None = None

    @model_validator(mode="after")
    def _one_way(self):
        if (self.crm_field is None) == (self.on is None):
            raise ValueError("crm_field: set exactly one of crm_field or on (domain)")
        return self


class WarehouseSource(Strict):
    """Product usage aggregated inside the customer's warehouse (SQL pushdown, one row per account back).

    `url` is any SQLAlchemy URL (duckdb:///file.duckdb, postgresql+psycopg://..., snowflake://...,
    bigquery://...). A password in it is a secret: it comes from HEALTHSYNC__WAREHOUSE__URL (or
    the secrets file) and is masked wherever the URL is shown.
    """

    enabled: bool = True
    url: str | None = None
    events: WarehouseEvents | None = None
    touchpoints: WarehouseTouchpoints | None = None
    account_match: AccountMatch = Field(default_factory=lambda: AccountMatch(crm_field="product_account_id"))
    # seed 000_caaf87bd3b38802c.txt, "Churn Prediction Using Health Scores": exp(-lambda x age_days), lambda 0.05
    decay_lambda: float = Field(0.05, ge=0)
    lookback_days: int = Field(90, ge=1, le=3650, description="window of the decay-weighted engagement")
    timeout_s: float = Field(30, gt=0)

    @field_serializer("url", when_used="json")
    def _masked(self, url: str | None) -> str | None:
        return redact_url(url)

    @model_validator(mode="after")
    def _complete(self):
        if self.url is None:
            return self
        try:
            from sqlalchemy.engine import make_url

            make_url(self.url)
        except Exception:  # noqa: BLE001 - the text may hold a password: never echo it
            raise ValueError(
                "url: not a valid SQLAlchemy URL (expected dialect+driver://user@host/database, "
                "e.g. duckdb:///usage.duckdb or postgresql+psycopg://reader@host/analytics)"
            ) from None
        if self.enabled and self.events is None:
            raise ValueError("events: a warehouse url needs an events table or query (sources.warehouse.events)")
        return self

    @property
    def configured(self) -> bool:
        return bool(self.enabled and self.url and self.events is not None)


class Sources(Strict):
    salesforce: SalesforceSource = Field(default_factory=SalesforceSource)
    hubspot: HubSpotSource = Field(default_factory=HubSpotSource)
    slack: SlackSource = Field(default_factory=SlackSource)
    warehouse: WarehouseSource = Field(default_factory=WarehouseSource)


SECRET_FIELDS = {
    "salesforce": ["password", "security_token", "consumer_secret", "private_key", "access_token"],
    "hubspot": ["access_token"],
    "slack": ["bot_token"],
    # the URL may sit in a config file as long as it carries no password (_secrets_in)
    "warehouse": ["url"],
}

# ----------------------------------------------------------------------------- mapping


class ObjectMapping(Strict):
    object: str
    read: dict[str, str] = Field(default_factory=dict, description="canonical column -> CRM field")
    write: dict[str, str] = Field(default_factory=dict, description="healthsync output -> CRM field (the allowlist)")
    key_field: str | None = None


ACCOUNT_OUTPUTS = {"score", "band", "trend", "drivers", "confidence", "updated"}
OPPORTUNITY_OUTPUTS = {"adjusted_probability", "expected_arr"}


class CrmMapping(Strict):
    account: ObjectMapping
    opportunity: ObjectMapping
    ticket: ObjectMapping
    task: ObjectMapping

    @model_validator(mode="after")
    def _outputs_known(self):
        for obj, allowed in (("account", ACCOUNT_OUTPUTS), ("opportunity", OPPORTUNITY_OUTPUTS)):
            unknown = set(getattr(self, obj).write) - allowed
            if unknown:
                raise ValueError(f"{obj}.write: unknown outputs {sorted(unknown)} (allowed: {sorted(allowed)})")
        return self


class Identity(Strict):
    match_on: Literal["domain", "salesforce_id"] = "domain"
    hubspot_salesforce_id_property: str = "salesforce_account_id"


class Mapping(Strict):
    salesforce: CrmMapping
    hubspot: CrmMapping
    identity: Identity = Field(default_factory=Identity)


# ----------------------------------------------------------------------------- jobs


class StateConfig(Strict):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL of the state store; null = .healthsync/state.db next to the config file "
        "(no config file: the per-user state directory). A relative SQLite path is relative to the config file.",
    )

    @model_validator(mode="after")
    def _url_usable(self):
        if self.url is not None:
            problem = state_url_problem(self.url)
            if problem:
                raise ValueError(f"url: {problem}")
        return self


#: the pip extra that installs each state-store driver (pyproject.toml [project.optional-dependencies])
DRIVER_EXTRAS = {"postgresql": "postgres"}


#: sqlite:///relative.db, sqlite:////absolute.db, sqlite:// (memory), with optional ?query
_SQLITE_URL = re.compile(r"^sqlite(?:\+pysqlite)?://(?:/(?P<database>[^?]*))?(?:\?.*)?$")


def state_url_problem(url: str) -> str | None:
    """Why `url` cannot be a state store (not a URL, unknown database, driver not installed), or None.

    Checked when the settings load, so a missing driver is a clear exit 2 naming `state.url`
    before anything is sent, never a ModuleNotFoundError traceback at the first run.
    """
    from healthsync.config.state_location import redact_url

    shown = redact_url(url)
    sqlite = _SQLITE_URL.match(url)
    if sqlite and importlib.util.find_spec("sqlite3") is not None:
        # the default (a file next to the config): checked without importing SQLAlchemy, which
        # costs every command ~0.15 s; the same rule as below for a file in a system folder
        database = sqlite.group("database") or ""
        path = Path(database).expanduser()
        if database not in ("", ":memory:") and str(path).startswith(("/proc/", "/sys/", "/dev/")):
            return f"{shown!r}: {path} is in a system folder where no database can live; choose another path"
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return (f"{shown!r} is not a database URL (expected e.g. sqlite:////var/lib/healthsync/state.db "
                "or postgresql+psycopg://user@host/db)")
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        return f"{shown!r}: unknown database {parsed.drivername!r} (healthsync supports sqlite and postgresql)"
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        return f"{shown!r}: healthsync's state store supports sqlite and postgresql, not {backend}"
    try:
        dialect.import_dbapi()
    except ImportError as e:
        extra = DRIVER_EXTRAS.get(backend)
        how = f"pip install 'healthsync[{extra}]'" if extra else f"install the Python driver for {parsed.drivername}"
        return f"the database driver for {parsed.drivername} is not installed ({getattr(e, 'name', None) or e}): {how}"
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database).expanduser()
        if str(path).startswith(("/proc/", "/sys/", "/dev/")):
            return f"{shown!r}: {path} is in a system folder where no database can live; choose another path"
    return None


class PlaybooksConfig(Strict):
    enabled: list[str] = Field(default_factory=list)
    definitions: str | None = None
    max_new_tasks_per_owner_per_day: int = Field(
        10, ge=1, description="new playbook tasks per owner per (UTC) day; the rest wait in a queue, highest ARR at risk first"
    )


class LadderStep(Strict):
    level: str
    notify: Literal["owner", "manager", "vp", "channel"]
    after_hours: float = Field(0, ge=0, description="hours after the previous level's trigger (0 = at due time)")
    channel: str | None = None


class EscalationConfig(Strict):
    ladder: list[LadderStep] = Field(min_length=1)
    fallback_channels: dict[str, str] = Field(default_factory=dict)
    ops_channel: str | None = None
    crm_record_url: str | dict[str, str] | None = Field(
        None, description="link template with {id} (CRM record id), {account_id}, {crm}; or one per CRM name"
    )
    contacts: dict[str, str] = Field(
        default_factory=dict, description="owner email -> manager email, when the CRM's owners carry no manager"
    )
    vp: str | None = Field(None, description="email of the VP of CS, when no owner has role 'vp'")
    digest_from: int = Field(
        2, ge=2, description="this many messages or more for one recipient in one run go as one digest message"
    )

    @model_validator(mode="after")
    def _url_placeholders_known(self):
        templates = self.crm_record_url if isinstance(self.crm_record_url, dict) else {"": self.crm_record_url}
        for crm, template in templates.items():
            if template is None:
                continue
            key = "crm_record_url" + (f".{crm}" if crm else "")
            problem = url_template_problem(template)
            if problem:
                raise ValueError(f"{key}: {problem}")
        return self


#: the placeholders a CRM record URL template may use (sync.escalation.record_url fills them)
URL_PLACEHOLDERS = ("id", "account_id", "crm")


def url_template_problem(template: str) -> str | None:
    """Why a link template cannot be filled (unknown placeholder, broken braces), or None."""
    import string

    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as e:
        return f"{template!r} is not a valid template ({e}); write placeholders as {{id}}"
    for name in names:
        base = name.split(".")[0].split("[")[0]
        if base not in URL_PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in URL_PLACEHOLDERS)
            return f"unknown placeholder {{{name}}} in {template!r} (known: {known})"
    return None


class Schedule(Strict):
    job: Literal["run", "escalate", "pull", "score", "sync", "report"]
    cron: str | None = None
    interval_minutes: float | None = Field(None, gt=0)
    misfire_grace_s: int = Field(600, ge=1, description="a run late by more than this is skipped and reported")
    lock_ttl_s: int = Field(7200, ge=1, description="lease on the job lock; outlives a crashed holder by at most this")

    @model_validator(mode="after")
    def _one_trigger(self):
        if (self.cron is None) == (self.interval_minutes is None):
            raise ValueError(f"schedule for job {self.job!r}: set exactly one of cron or interval_minutes")
        if self.cron is not None:
            if len(self.cron.split()) != 5:
                raise ValueError(f"cron: {self.cron!r} (job {self.job}) must have 5 fields: minute hour day month day-of-week")
            # APScheduler's own parser, the one `healthsync schedule` uses: what passes here also runs
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.cron, timezone="UTC")
            except ValueError as e:
                raise ValueError(f"cron: {self.cron!r} (job {self.job}) is not a valid crontab: {e}") from None
        return self


class RetriesConfig(Strict):
    """Bounds of the one retry policy (connectors/retry.py) for every API call: 429, 5xx, timeouts."""

    max_attempts: int = Field(6, ge=1, le=50, description="tries of one call, the first included")
    max_total_seconds: float = Field(120, gt=0, description="give up on one call after this long")
    base_wait_s: float = Field(0.5, gt=0, description="first backoff wait when the API sent no Retry-After")
    max_wait_s: float = Field(20, gt=0, description="longest backoff wait")
    max_retry_after_s: float = Field(60, gt=0, description="a longer Retry-After is not waited for: the call gives up")


class ReportConfig(Strict):
    enabled: bool = False
    path: str = ".healthsync/report.html"


class SandboxConfig(Strict):
    accounts: int = Field(500, ge=1)
    seed: int = 7
    warehouse: bool = Field(
        True, description="the embedded sandbox also writes its demo usage to DuckDB and scores from it "
        "(unless sources.warehouse.url is set)"
    )


class DataQualityConfig(Strict):
    """Thresholds of the per-source data-quality KPIs recorded every run (seed 000_caaf87bd3b38802c.txt,
    "Data architecture, data quality, and governance": 95% completeness, <5% error rate; seed
    003_cec208348d92c0f6.txt maintenance schedule: "Any source >24h stale" is a red flag).

    A KPI crossing its threshold (either way) is posted to `escalation.ops_channel` once per change of state.
    """

    completeness_min: float = Field(0.95, ge=0, le=1, description="share of accounts with a value, per metric input")
    completeness_min_by_input: dict[str, float] = Field(default_factory=dict, description="metric input -> its own minimum")
    error_rate_max: float = Field(0.05, ge=0, le=1, description="share of rows rejected (bad records, rows without a key)")
    error_rate_min_rows: int = Field(
        100, ge=1, description="an error rate is judged only over at least this many rows (a run that re-pulls "
        "five records would otherwise flip the alert on one bad record)"
    )
    freshness_hours_max: float = Field(24, gt=0, description="age of the newest event / last successful pull")
    freshness_hours_max_by_source: dict[str, float] = Field(default_factory=dict)
    duplicate_ids_max: int = Field(0, ge=0, description="duplicate ids per object")
    key_match_rate_min: float = Field(0.95, ge=0, le=1, description="warehouse keys matched to CRM accounts")
    alert: bool = Field(True, description="post KPI state changes to escalation.ops_channel")


class Settings(Strict):
    """The whole configuration. Passed to every part explicitly (never a global)."""

    version: int = 1
    state: StateConfig = Field(default_factory=StateConfig)
    sources: Sources = Field(default_factory=Sources)
    mapping: Mapping
    model: ModelConfig
    forecast: ForecastConfig = Field(default_factory=ForecastConfig)
    playbooks: PlaybooksConfig = Field(default_factory=PlaybooksConfig)
    escalation: EscalationConfig
    schedules: list[Schedule] = Field(default_factory=list)
    report: ReportConfig = Field(default_factory=ReportConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    data_quality: DataQualityConfig = Field(default_factory=DataQualityConfig)

    @property
    def live(self) -> bool:
        """True when any CRM has credentials; otherwise `healthsync run` uses the embedded sandbox."""
        return self.sources.salesforce.configured or self.sources.hubspot.configured

    def redacted(self) -> dict[str, Any]:
        """A JSON-safe dump with every secret shown as '**********' (or null), and passwords inside URLs as ***."""
        from healthsync.config.state_location import redact_url

        data = json.loads(self.model_dump_json())
        if isinstance(data.get("state"), dict):
            data["state"]["url"] = redact_url(data["state"].get("url"))
        return data


# ----------------------------------------------------------------------------- loading


def deep_merge(base: dict, over: dict) -> dict:
    """Dicts merge key by key; anything else (lists included) is replaced."""
    out = deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = deepcopy(v)
    return out


#: libyaml's parser where PyYAML was built with it: the same documents, 8x faster to read (the
#: defaults are parsed on every command; the pure-Python parser cost ~80 ms of `score --input`)
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"cannot read config file: {e.strerror}"], str(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            [f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save the file as UTF-8"], str(path)
        ) from None
    try:
        data = yaml.load(text, Loader=YAML_LOADER) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"not valid YAML{where}: {getattr(e, 'problem', e)}"], str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping of sections"], str(path))
    return data


def _secrets_in(data: dict) -> list[str]:
    found = []
    sources = data.get("sources") or {}
    if isinstance(sources, dict):
        for section, names in SECRET_FIELDS.items():
            sec = sources.get(section) or {}
            if isinstance(sec, dict):
                for n in names:
                    if (section, n) == ("warehouse", "url") and not url_password(sec.get(n)):
                        continue  # a URL without a password is configuration, not a secret
                    if sec.get(n) not in (None, ""):
                        env = f"{ENV_PREFIX}{section.upper()}__{n.upper()}"
                        found.append(
                            f"sources.{section}.{n}: secrets are not read from config files; "
                            f"set the environment variable {env} or put it in a secrets file ({SECRETS_FILE_ENV})"
                        )
    return found


def _parse_env_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _env_path(name: str) -> list[str] | None:
    if not name.startswith(ENV_PREFIX):
        return None
    parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
    if not parts:
        return None
    if parts[0] in SECRET_FIELDS:  # HEALTHSYNC__SALESFORCE__X -> sources.salesforce.x
        parts = ["sources", *parts]
    return parts


def _read_secrets_file(path: str) -> dict[str, str]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError([f"{SECRETS_FILE_ENV}: cannot read secrets file: {e.strerror}"]) from None
    out: dict[str, str] = {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items() if v is not None}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out[k.strip().removeprefix("export ").strip()] = v.strip().strip('"').strip("'")
    return out


def env_overrides(environ: dict[str, str] | None = None) -> dict:
    """Nested overrides from HEALTHSYNC__... variables and the secrets file (env wins)."""
    environ = dict(os.environ if environ is None else environ)
    merged: dict[str, str] = {}
    if environ.get(SECRETS_FILE_ENV):
        merged.update(_read_secrets_file(environ[SECRETS_FILE_ENV]))
    merged.update({k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)})
    out: dict = {}
    for name, raw in sorted(merged.items()):
        path = _env_path(name)
        if not path:
            continue
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                break
        else:
            is_secret = len(path) == 3 and path[0] == "sources" and path[2] in SECRET_FIELDS.get(path[1], [])
            node[path[-1]] = raw if is_secret else _parse_env_value(raw)
    return out


def format_validation_error(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        parts = [str(p) for i, p in enumerate(e["loc"]) if not (p in _UNION_TAGS and i and e["loc"][i - 1] == "rule")]
        loc = ".".join(parts)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not part of the configuration schema)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        head = _KEY_PREFIX.match(msg)
        if head and loc:  # a model-level check names the sub-key itself: join it to the path
            loc, msg = f"{loc}.{head.group(1)}", msg[head.end():]
        problems.append(f"{loc}: {msg}" if loc else msg)
    return problems


_KEY_PREFIX = re.compile(r"^([A-Za-z_][\w.]*): ")
_UNION_TAGS = {"steps", "linear", "ratio", "category", "boolean", "identity", "trend"}


def config_paths(path: str | Path | list | tuple | None) -> list[Path]:
    """One config file, several (stacked in order), or none."""
    if path is None:
        return []
    if isinstance(path, (list, tuple)):
        return [Path(p) for p in path if p is not None]
    return [Path(path)]


def load_settings(
    path: str | Path | list[str | Path] | None = None,
    *,
    overlays: list[str | Path] = (),
    environ: dict[str, str] | None = None,
) -> Settings:
    """Defaults <- each file in order (then `overlays`) <- environment; raises ConfigError listing every problem."""
    data = _read_yaml(DEFAULT_CONFIG_PATH)
    paths = config_paths(path) + [Path(p) for p in overlays]
    source = " + ".join(str(p) for p in paths) or str(DEFAULT_CONFIG_PATH)
    problems: list[str] = []
    state_file: Path | None = None  # the last file that sets state.url: a relative SQLite path is relative to it
    for p in paths:
        user = _read_yaml(p)
        problems += _secrets_in(user)
        if isinstance(user.get("state"), dict) and user["state"].get("url") is not None:
            state_file = Path(p)
        try:
            data = merge_user_config(data, user)
        except ConfigError as e:
            raise ConfigError(e.problems, str(p)) from None
    if problems:
        raise ConfigError(problems, source)
    file_state_url = (data.get("state") or {}).get("url") if isinstance(data.get("state"), dict) else None
    data = deep_merge(data, env_overrides(environ))
    first = config_paths(path)[0] if config_paths(path) else None  # the base config: the default state sits next to it
    _place_state(data, first, file_state_url, state_file)
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e), source) from None


def _place_state(data: dict, config_path: Path | None, file_state_url: Any, state_file: Path | None = None) -> None:
    """Fill `state.url` so it never depends on the working directory (config/state_location.py).

    No `state.url`: next to the first config file (the base of a stack), else the per-user state
    dir. A relative SQLite path: relative to the file that set it; from the environment, to the
    working directory (made absolute here, once).
    """
    from healthsync.config.state_location import anchor_sqlite_path, default_state_url

    state = data.get("state")
    if state is None:
        state = data["state"] = {}
    if not isinstance(state, dict):
        return  # reported by validation
    url = state.get("url")
    if url is None:
        state["url"] = default_state_url(config_path)
    elif isinstance(url, str):
        from_file = state_file is not None and url == file_state_url
        base = state_file.expanduser().resolve().parent if from_file else Path.cwd()
        state["url"] = anchor_sqlite_path(url, base)


REPLACE_WHOLE = ("segments", "lifecycle", "traffic_light")


def merge_user_config(defaults: dict, user: dict) -> dict:
    """A user's `model.metrics` list replaces the default list as a whole; the rest deep-merges.

    Two conveniences for overlays (calibrate), keyed by metric name so they stack on
    any config that defines those metrics: `model.metric_weights: {name: weight}`
    changes only the weights, `model.metric_rules: {name: rule}` replaces only those
    metrics' rules (calibrate turns a metric around this way). A name the config
    does not define is an error naming it.
    """
    user = deepcopy(user)
    weights = rules = None
    if isinstance(user.get("model"), dict):
        weights = user["model"].pop("metric_weights", None)
        rules = user["model"].pop("metric_rules", None)
    merged = deep_merge(defaults, user)
    # Sections that refer to bands by name are replaced whole, never merged key by key:
    # a user who redefines the bands must not inherit default thresholds naming old bands.
    if isinstance(user.get("model"), dict):
        for key in REPLACE_WHOLE:
            if key in user["model"]:
                merged["model"][key] = deepcopy(user["model"][key])
    model = merged.get("model")
    metrics = model.get("metrics", []) if isinstance(model, dict) else []  # a malformed `model` is reported by validation
    metrics = metrics if isinstance(metrics, list) else []
    known = {m.get("name") for m in metrics if isinstance(m, dict)}
    for key, values, field in (("metric_weights", weights, "weight"), ("metric_rules", rules, "rule")):
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError([f"model.{key}: must be a mapping of metric name -> {field}"])
        unknown = set(values) - known
        if unknown:
            raise ConfigError([f"model.{key}: unknown metrics {sorted(unknown)} (the config's metrics are "
                               f"{sorted(n for n in known if n)}; stack the overlay on the config it was "
                               "calibrated with: --config base.yaml --config overlay.yaml)"])
        for m in metrics:
            if isinstance(m, dict) and m.get("name") in values:
                m[field] = deepcopy(values[m["name"]])
    return merged


def validate_file(path: str | Path | list[str | Path] | None, environ: dict[str, str] | None = None) -> list[str]:
    """All problems of a config file, or of a stack of them (empty list = valid)."""
    try:
        load_settings(path, environ=environ)
    except ConfigError as e:
        return e.problems
    return []


def json_schema() -> dict:
    return Settings.model_json_schema()
