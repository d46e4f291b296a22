"""Which CRMs and Slack a command talks to: live credentials, a running sandbox, or an embedded one.

- Credentials configured (`settings.live`): connectors built from `sources.*`.
- A ready dict (`--sandbox F` / `HEALTHSYNC_SANDBOX`): a running sandbox, with
  the configured state database (the sandbox outlives the command).
- Neither (only `healthsync run`): the embedded sandbox is started with demo
  data, and a FRESH state database is used next to the configured one
  (`<state dir>/sandbox/state.db`, reset at each start): the embedded sandbox
  is new each time, so remembered cursors and pushed values would be wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

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


def _mapping(settings: Settings, crm: str) -> dict:
    return getattr(settings.mapping, crm).model_dump()


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
                ready, _mapping(settings, "salesforce"), bulk_threshold=sf.bulk_threshold, quota_stop_share=sf.quota_stop_share,
                lookback_minutes=sf.lookback_minutes, timeout=sf.timeout_s, bulk_max_wait_s=sf.bulk_max_wait_s,
                bulk_poll_seconds=sf.bulk_poll_s, exclude_own_changes=sf.exclude_own_changes,
            )
        if hs.enabled and ready.get("hubspot"):
            out["hubspot"] = hubspot_from_ready(
                ready, _mapping(settings, "hubspot"), lookback_minutes=hs.lookback_minutes, timeout=hs.timeout_s,
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
        return slack.slack_from_ready(ready) if ready.get("slack") else None
    if src.configured:
        return slack.SlackNotifier(src.bot_token, base_url=src.base_url)
    return None


def sandbox_state_url(settings: Settings) -> str:
    """`<dir of the configured SQLite state db>/sandbox/state.db` (or `.healthsync/sandbox/state.db`)."""
    base = Path(".healthsync")
    try:
        url = make_url(settings.state.url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            base = Path(url.database).expanduser().parent
    except Exception:  # an unparsable URL is reported when the store opens it
        pass
    return f"sqlite:///{base / 'sandbox' / 'state.db'}"


def _reset_sqlite(url: str) -> None:
    path = Path(make_url(url).database)
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(path) + suffix)
        if p.exists():
            p.unlink()


def start_embedded_sandbox(settings: Settings):
    """Start the embedded sandbox with demo data; returns (sandbox, ready dict)."""
    from healthsync.connectors.sandbox import Sandbox

    # Slack's one-message-per-second-per-channel pacing is off in the embedded demo: a first run
    # alerts hundreds of episodes to a handful of owner DMs, which would make `make demo` take
    # ten minutes of sleeping. Tests of the pacing use a sandbox they start themselves.
    sandbox = Sandbox(accounts=settings.sandbox.accounts, seed=settings.sandbox.seed, slack_message_interval_s=0)
    started = sandbox.start()
    ready = started if isinstance(started, dict) else sandbox.ready
    return sandbox, ready


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
    sandbox, ready = start_embedded_sandbox(settings)
    state_url = sandbox_state_url(settings)
    _reset_sqlite(state_url)
    try:
        conns = Connections(
            "sandbox", open_crm_connectors(settings, ready), open_slack(settings, ready), ready, state_url, embedded=sandbox
        )
    except BaseException:
        sandbox.stop()
        raise
    conns.notes.append(
        f"no CRM credentials configured: using the embedded sandbox ({settings.sandbox.accounts} demo accounts, "
        f"seed {settings.sandbox.seed}); state in {state_url.removeprefix('sqlite:///')}"
    )
    return conns


def ensure_fields(conns: Connections) -> list[str]:
    """Check each CRM has the healthsync fields; in sandbox mode create them, in live mode stop with what to do."""
    created: list[str] = []
    for name, connector in conns.connectors.items():
        result = connector.check()
        if result.ok:
            continue
        if conns.mode != "sandbox":
            raise ConfigurationError(
                f"{name} is not ready for healthsync: " + "; ".join(result.problems) + " (run `healthsync crm setup`)"
            )
        created += [f"{name}: {f}" for f in connector.setup()]
        again = connector.check()
        if not again.ok:
            raise ConfigurationError(f"{name} sandbox setup incomplete: " + "; ".join(again.problems))
    return created
