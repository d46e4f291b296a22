"""Which CRMs and Slack a command talks to: live credentials, a running sandbox, or an embedded one.

- Credentials configured (`settings.live`): connectors built from `sources.*`.
- A ready dict (`--sandbox F` / `HEALTHSYNC_SANDBOX`): a running sandbox, with
  the configured state database (the sandbox outlives the command).
- Neither (only `healthsync run`): the embedded sandbox, whose world is kept next
  to the state database between runs (sync/demo_world.py): each run is one
  emulated day after the previous one, so it sends only what changed. When the
  world is new (the first run, after `sandbox reset`, a lost world file, other
  sandbox settings) the run forgets the bookkeeping of the state database
  (cursors, replica, pushed values, retry queue, episodes, Slack markers and
  caches) before it starts, and keeps the run history, score history and
  backtests. A state database that holds runs against live CRMs is never used
  for the embedded sandbox (exit 2): missing credentials on a production host
  must not wipe its state. The other way round, live CRMs are never synced with a
  state database that only knows the demo (`refuse_demo_state`): its cursors
  describe the sandbox, and would make the first live pull skip real records.

`state_location` is the one place that says which state database a command uses,
so `run`, `status`, `report`, `schedule` and the embedded sandbox always agree:
`state.url` (which never depends on the working directory, config/state_location.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healthsync.config.settings import Settings
from healthsync.connectors.base import ConfigurationError, CrmConnector

log = logging.getLogger(__name__)


@dataclass
class Connections:
    """The connectors of one command, and how to release them."""

    mode: str  # sandbox | live
    connectors: dict[str, CrmConnector]
    slack: Any | None
    ready: dict | None
    state_url: str
    embedded: Any | None = None  # the embedded Sandbox, stopped by close()
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        for c in self.connectors.values():
            try:
                c.close()
            except Exception:  # pragma: no cover - closing is best effort
                log.debug("closing %s failed", c.name, exc_info=True)
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None


#: canonical accounts column read only when a warehouse matches on it (sync/warehouse_job.py)
WAREHOUSE_KEY_COLUMN = "product_account_id"


def _mapping(settings: Settings, crm: str, ready: dict | None = None) -> dict:
    """The CRM's field mapping; the product account id is read only when a warehouse uses it, so an
    org without that field gets no "field not found" warning on every run."""
    mapping = getattr(settings.mapping, crm).model_dump()
    warehouse = settings.sources.warehouse.configured or bool((ready or {}).get("warehouse"))
    if not warehouse:
        mapping["account"]["read"].pop(WAREHOUSE_KEY_COLUMN, None)
    return mapping


def retry_policy(settings: Settings, timeout: float = 30.0):
    """The retry policy of `settings.retries` (the same bounds for every API)."""
    from healthsync.connectors.retry import RetryPolicy

    r = settings.retries
    return RetryPolicy(max_attempts=r.max_attempts, max_total_seconds=r.max_total_seconds, base_wait=r.base_wait_s,
                       max_wait=r.max_wait_s, max_retry_after=r.max_retry_after_s, timeout=timeout)


def open_crm_connectors(settings: Settings, ready: dict | None = None) -> dict[str, CrmConnector]:
    """The enabled CRM connectors, for a running sandbox (`ready`) or from the configured credentials."""
    sources = settings.sources
    out: dict[str, CrmConnector] = {}
    if ready is not None:
        from healthsync.connectors.hubspot import hubspot_from_ready
        from healthsync.connectors.salesforce import salesforce_from_ready

        sf, hs = sources.salesforce, sources.hubspot
        if sf.enabled and ready.get("salesforce"):
            out["salesforce"] = salesforce_from_ready(
                ready, _mapping(settings, "salesforce", ready), bulk_threshold=sf.bulk_threshold, quota_stop_share=sf.quota_stop_share,
                lookback_minutes=sf.lookback_minutes, timeout=sf.timeout_s, retry=retry_policy(settings, sf.timeout_s),
                bulk_max_wait_s=sf.bulk_max_wait_s,
                bulk_poll_seconds=sf.bulk_poll_s, exclude_own_changes=sf.exclude_own_changes,
            )
        if hs.enabled and ready.get("hubspot"):
            out["hubspot"] = hubspot_from_ready(
                ready, _mapping(settings, "hubspot", ready), lookback_minutes=hs.lookback_minutes, timeout=hs.timeout_s,
                retry=retry_policy(settings, hs.timeout_s),
                pacing_margin=hs.pacing_margin, search_lag_s=hs.search_lag_s,
            )
        return out
    sf = sources.salesforce
    if sf.configured:
        from healthsync.connectors.salesforce import SalesforceConnector

        out["salesforce"] = SalesforceConnector(
            sf.instance_url or "",
            sf.access_token,
            auth=sf.auth,
            username=sf.username,
            password=sf.password,
            security_token=sf.security_token,
            consumer_key=sf.consumer_key,
            consumer_secret=sf.consumer_secret,
            private_key=sf.private_key,
            domain=sf.domain,
            api_version=sf.api_version,
            mapping=_mapping(settings, "salesforce"),
            ca_file=sf.ca_file,
            bulk_threshold=sf.bulk_threshold,
            quota_stop_share=sf.quota_stop_share,
            lookback_minutes=sf.lookback_minutes,
            timeout=sf.timeout_s,
            retry=retry_policy(settings, sf.timeout_s),
            bulk_max_wait_s=sf.bulk_max_wait_s,
            bulk_poll_seconds=sf.bulk_poll_s,
            exclude_own_changes=sf.exclude_own_changes,
        )
    hs = sources.hubspot
    if hs.configured:
        from healthsync.connectors.hubspot import HubSpotConnector

        out["hubspot"] = HubSpotConnector(
            hs.access_token,
            host=hs.host,
            mapping=_mapping(settings, "hubspot"),
            tier=hs.tier,
            lookback_minutes=hs.lookback_minutes,
            timeout=hs.timeout_s,
            retry=retry_policy(settings, hs.timeout_s),
            pacing_margin=hs.pacing_margin,
            search_lag_s=hs.search_lag_s,
        )
    return out


def open_slack(settings: Settings, ready: dict | None = None):
    """The Slack notifier, or None when Slack is disabled / not configured."""
    src = settings.sources.slack
    if not src.enabled:
        return None
    from healthsync.connectors import slack

    if ready is not None:
        return slack.slack_from_ready(ready, retry=retry_policy(settings)) if ready.get("slack") else None
    if src.configured:
        return slack.SlackNotifier(src.bot_token, base_url=src.base_url, retry=retry_policy(settings))
    return None


@dataclass(frozen=True)
class StateLocation:
    """Which state database a command uses, and why (shown by every command: JSON key `state`)."""

    url: str
    embedded: bool  # the embedded sandbox's own state

    @property
    def shown(self) -> str:
        """The location as shown to users: a SQLite file path, or the URL with its password hidden."""
        from healthsync.config.state_location import describe

        return describe(self.url)

    def to_json(self) -> str:
        return self.shown


def state_location(settings: Settings, ready: dict | None = None) -> StateLocation:
    """The state database of every command: `state.url`; `embedded` when `run` would start the embedded sandbox."""
    return StateLocation(str(settings.state.url), embedded=ready is None and not settings.live)


#: what an embedded-sandbox run keeps: history, not bookkeeping of the previous world. Every other
#: table (cursors, replica, pushed values, retry queue, episodes, Slack markers and caches...) is
#: cleared, so a table added later describing the world is cleared too.
SANDBOX_KEPT_TABLES = ("runs", "score_history", "drift", "backtests", "locks")


def forget_sandbox_world(store) -> None:
    """Before an embedded-sandbox run: clear the previous world's bookkeeping, refuse a live state database."""
    from sqlalchemy import func, select

    runs = store.tables["runs"]
    with store.engine.connect() as conn:
        live = conn.execute(select(func.count()).select_from(runs).where(runs.c.mode == "live")).scalar() or 0
    if live:
        raise ConfigurationError(
            f"no CRM credentials are configured, and the state database {store.shown} holds {live} run(s) against live CRMs: "
            "healthsync will not run the embedded demo sandbox on it. Set the CRM credentials (README, Configuration), "
            "or give the demo its own state (state.url or another config file)"
        )
    store.reset(keep=SANDBOX_KEPT_TABLES)


def refuse_demo_state(store) -> None:
    """Before a live run or stage: refuse a state database that holds the embedded demo's runs and no live one."""
    from healthsync.sync.demo_world import demo_history

    live, sandbox = demo_history(store)
    if sandbox and not live:
        raise ConfigurationError(
            f"CRM credentials are configured, but the state database {store.shown} holds the demo's sandbox runs "
            f"({sandbox}) and no live run: its cursors describe the sandbox, and the first live pull would skip real "
            "records. Give the live CRMs their own state (a config file: its state sits next to it; or state.url), "
            "or clear the demo first with `healthsync sandbox reset`"
        )


def start_embedded_sandbox(settings: Settings, location: StateLocation):
    """The embedded sandbox of `healthsync run` on this state: its saved world one day later, or a new one.

    Returns the started `DemoWorld` (`.ready`, `.fresh`, `.notes`; `.stop()` saves the world).
    """
    from healthsync.sync.demo_world import demo_history, open_demo_world
    from healthsync.sync.state import open_store

    store = open_store(location.url)
    try:
        live, sandbox_runs = demo_history(store)
    finally:
        store.close()
    if live:
        raise ConfigurationError(
            f"no CRM credentials are configured, and the state database {location.shown} holds {live} run(s) against "
            "live CRMs: healthsync will not run the embedded demo sandbox on it. Set the CRM credentials (README, "
            "Configuration), or give the demo its own state (state.url or another config file)"
        )
    # with `sandbox.warehouse` the sandbox also writes its demo usage to DuckDB and the run scores from it
    # (sync/warehouse_job.py), unless a real warehouse is configured
    warehouse = settings.sandbox.warehouse and not settings.sources.warehouse.configured
    return open_demo_world(location.url, accounts=settings.sandbox.accounts, seed=settings.sandbox.seed,
                           warehouse=warehouse, state_knows_world=sandbox_runs > 0)


def connect(settings: Settings, ready: dict | None = None, *, allow_embedded: bool = True) -> Connections:
    """Connections for a command (see the module docstring for the three modes)."""
    if ready is not None:
        return Connections("sandbox", open_crm_connectors(settings, ready), open_slack(settings, ready), ready, settings.state.url)
    if settings.live:
        return Connections("live", open_crm_connectors(settings), open_slack(settings), None, settings.state.url)
    if not allow_embedded:
        raise ConfigurationError(
            "no CRM credentials configured (sources.salesforce / sources.hubspot) and no sandbox given "
            "(--sandbox READY_FILE or HEALTHSYNC_SANDBOX)"
        )
    location = state_location(settings, None)
    world = start_embedded_sandbox(settings, location)
    ready = world.ready
    try:
        conns = Connections(
            "sandbox", open_crm_connectors(settings, ready), open_slack(settings, ready), ready, location.url, embedded=world
        )
    except BaseException:
        world.stop()
        raise
    conns.notes.append(
        f"no CRM credentials configured: using the embedded sandbox ({settings.sandbox.accounts} demo accounts per CRM); "
        f"its state is in {location.shown}, its world in {world.path}"
    )
    conns.notes.extend(world.notes)
    return conns


def ensure_fields(conns: Connections, only: list[str] | None = None) -> list[str]:
    """Check each CRM has the healthsync fields; in sandbox mode create them, in live mode stop with what to do.

    A CRM that cannot be reached raises `StopRunError` from `check()` (never a
    "missing permission" problem); `only` limits the check to some CRMs (one lane).
    """
    created: list[str] = []
    for name, connector in conns.connectors.items():
        if only is not None and name not in only:
            continue
        created += ensure_connector_fields(name, connector, sandbox=conns.mode == "sandbox")
    return created


def ensure_connector_fields(name: str, connector: CrmConnector, *, sandbox: bool) -> list[str]:
    """`ensure_fields` for one CRM."""
    result = connector.check()
    if result.ok:
        return []
    if not sandbox:
        raise ConfigurationError(
            f"{name} is not ready for healthsync: " + "; ".join(result.problems) + " (run `healthsync crm setup`)"
        )
    created = [f"{name}: {f}" for f in connector.setup()]
    again = connector.check()
    if not again.ok:
        raise ConfigurationError(f"{name} sandbox setup incomplete: " + "; ".join(again.problems))
    return created
