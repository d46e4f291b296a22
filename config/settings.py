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

import json
import os
import re
from copy import deepcopy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

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
    # seconds a write may take to become searchable: the pull cursor never passes run start minus this
    search_lag_s: float = Field(60.0, ge=0)
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


class Sources(Strict):
    salesforce: SalesforceSource = Field(default_factory=SalesforceSource)
    hubspot: HubSpotSource = Field(default_factory=HubSpotSource)
    slack: SlackSource = Field(default_factory=SlackSource)


SECRET_FIELDS = {
    "salesforce": ["password", "security_token", "consumer_secret", "private_key", "access_token"],
    "hubspot": ["access_token"],
    "slack": ["bot_token"],
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
    url: str = "sqlite:///.healthsync/state.db"


class PlaybooksConfig(Strict):
    enabled: list[str] = Field(default_factory=list)
    definitions: str | None = None


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
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError(f"schedule for job {self.job!r}: cron {self.cron!r} must have 5 fields")
        return self


class ReportConfig(Strict):
    enabled: bool = False
    path: str = ".healthsync/report.html"


class SandboxConfig(Strict):
    accounts: int = Field(500, ge=1)
    seed: int = 7


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

    @property
    def live(self) -> bool:
        """True when any CRM has credentials; otherwise `healthsync run` uses the embedded sandbox."""
        return self.sources.salesforce.configured or self.sources.hubspot.configured

    def redacted(self) -> dict[str, Any]:
        """A JSON-safe dump with every secret shown as '**********' (or null)."""
        return json.loads(self.model_dump_json())


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
        text = path.read_text()
    except OSError as e:
        raise ConfigError([f"cannot read config file: {e.strerror}"], str(path)) from None
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
    for p in paths:
        user = _read_yaml(p)
        problems += _secrets_in(user)
        try:
            data = merge_user_config(data, user)
        except ConfigError as e:
            raise ConfigError(e.problems, str(p)) from None
    if problems:
        raise ConfigError(problems, source)
    data = deep_merge(data, env_overrides(environ))
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e), source) from None


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
    metrics = merged.get("model", {}).get("metrics", [])
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
