"""`Sandbox`: the three emulators and the inspection endpoint, started together on loopback.

    with Sandbox(accounts=500, seed=7) as sb:
        sb.ready            # the ready-file dict (URLs, tokens, CA file)
        sb.requests()       # what the product sent
        sb.records("salesforce", "Account")

Salesforce holds the portfolio generated with `seed`, HubSpot the one generated with
`seed + 1` (each CRM issues its own ids), both anchored to the emulator clock's today
(`as_of`), so ticket windows and renewal dates are current whenever it starts. Owners exist in all three systems with the
same emails. Everything binds 127.0.0.1 on ephemeral ports and is torn down on exit,
including the temporary directory holding the TLS certificate. The world itself can be
saved and started again later (world.py).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from healthsync.connectors.sandbox import schema, seed as seeding
from healthsync.connectors.sandbox.clock import Clock
from healthsync.connectors.sandbox.faults import APIS, FaultInjector, parse_spec
from healthsync.connectors.sandbox.http_base import EmulatorServer, Recorder
from healthsync.connectors.sandbox.hubspot import HubSpotApi
from healthsync.connectors.sandbox.inspect_api import InspectApi
from healthsync.connectors.sandbox.salesforce import SalesforceApi
from healthsync.connectors.sandbox.slack import DEFAULT_CHANNELS, SlackApi
from healthsync.connectors.sandbox.tls import make_tls


LARGE_SEED = 200_000  # records; above this the seeded objects are frozen out of the cyclic GC
#: HubSpot search index lag, emulator seconds (BEHAVIOR.md "Search index lag"): on by default, so
#: everything built on the sandbox meets it; each version waits a share of it, so advancing the
#: clock by this much makes every write searchable
DEFAULT_SEARCH_LAG_S = 2.0


def _generate(n_accounts: int, seed: int, as_of: date, usage: bool = False):
    try:
        from healthsync.connectors.demo_data import generate_portfolio
    except ImportError as e:  # the generator lives in another module; say what is missing
        raise RuntimeError("Sandbox(accounts=N) needs connectors.demo_data.generate_portfolio; pass portfolio=... "
                           "(an object with accounts, opportunities, tickets, owners frames) instead") from e
    return generate_portfolio(n_accounts, seed, as_of=as_of, usage=usage)


class Sandbox:
    def __init__(self, accounts: int = 500, seed: int = 7, hubspot_tier: str = "professional",
                 faults: dict | str | None = None, precreate_fields: bool = False, *,
                 portfolio: Any = None, hubspot_portfolio: Any = None,
                 salesforce_daily_limit: int = 100_000, hubspot_daily_limit: int | None = None,
                 slack_channels: tuple[str, ...] | list[str] = DEFAULT_CHANNELS,
                 session_timeout_s: float | None = None, search_lag_seconds: float = DEFAULT_SEARCH_LAG_S,
                 slack_message_interval_s: float = 1.0, slack_app_type: str = "non_marketplace",
                 slack_scopes: set[str] | frozenset[str] | None = None, same_stamp: int = 0,
                 salesforce_manage_permissions: bool = True, bulk_polls_in_progress: int = 3,
                 warehouse: bool = False, now: datetime | None = None, as_of: date | None = None) -> None:
        """`now`: the emulator clock's start (default: the real time); `as_of`: the date the generated
        portfolio is anchored to (default: the clock's today, so ticket windows and renewals are current)."""
        if same_stamp < 0:
            raise ValueError(f"same_stamp must be >= 0, got {same_stamp}")
        self.hubspot_tier = hubspot_tier
        self.seed = seed
        self.same_stamp = int(same_stamp)
        self.clock = Clock() if now is None else Clock((now - datetime.now(timezone.utc)).total_seconds())
        as_of = as_of or self.clock.now().date()
        self.recorder = Recorder()
        spec = parse_spec(faults) if isinstance(faults, str) else (faults or {})
        self.faults = FaultInjector(seed, spec)
        self.salesforce = SalesforceApi(self.clock, self.faults, daily_limit=salesforce_daily_limit,
                                        session_timeout_s=session_timeout_s,
                                        manage_permissions=salesforce_manage_permissions,
                                        bulk_polls_in_progress=bulk_polls_in_progress)
        self.hubspot = HubSpotApi(self.clock, self.faults, tier=hubspot_tier, daily_limit=hubspot_daily_limit,
                                  search_lag_seconds=search_lag_seconds)
        # slack_app_type: "non_marketplace" (default, the strictest history budget: 1 conversations.history
        # call a minute, 15 messages a page), "internal" or "marketplace" (Tier 3); slack_scopes: the bot
        # token's scopes (default: every scope the emulator checks)
        self.slack = SlackApi(self.clock, self.faults, channels=slack_channels,
                              per_channel_interval_s=slack_message_interval_s, app_type=slack_app_type,
                              scopes=slack_scopes)
        if precreate_fields:
            self.precreate_fields()
        sf_portfolio = portfolio if portfolio is not None else (
            _generate(accounts, seed, as_of, warehouse) if accounts else None)
        hs_portfolio = hubspot_portfolio if hubspot_portfolio is not None else (
            portfolio if portfolio is not None else (_generate(accounts, seed + 1, as_of, warehouse) if accounts else None))
        # the product usage behind the portfolios' usage signals, written to DuckDB at start (`warehouse=True`)
        distinct = [sf_portfolio] + ([hs_portfolio] if hs_portfolio is not sf_portfolio else [])
        self._usage = [p for p in distinct if warehouse and p is not None and getattr(p, "usage", None) is not None]
        #: how to make `_usage` again (generate_portfolio arguments), when the sandbox generated it itself:
        #: a saved world (world.py) keeps this recipe instead of the millions of usage events
        self.usage_recipe: list[dict] | None = (
            [{"n_accounts": accounts, "seed": s, "as_of": as_of} for s in (seed, seed + 1)]
            if warehouse and accounts and portfolio is None and hubspot_portfolio is None else None)
        # millions of small dicts: the cyclic GC would rescan them over and over while they are built
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if sf_portfolio is not None:
                self.seed_from_frames(sf_portfolio.accounts, sf_portfolio.opportunities, sf_portfolio.tickets,
                                      sf_portfolio.owners, crm="salesforce")
            if hs_portfolio is not None:
                self.seed_from_frames(hs_portfolio.accounts, hs_portfolio.opportunities, hs_portfolio.tickets,
                                      hs_portfolio.owners, crm="hubspot")
        finally:
            if gc_was_enabled:
                gc.enable()
        seeded = sum(len(v) for v in self.salesforce.records.values()) + sum(
            len(v) for v in self.hubspot.objects.values())
        if seeded > LARGE_SEED:
            # the seeded records live as long as the sandbox; keep full collections from rescanning them
            gc.freeze()
        self._servers: list[EmulatorServer] = []
        self._tmp: Path | None = None
        self.ready: dict = {}
        #: kept with a saved world (world.py), e.g. the demo's day number
        self.world_meta: dict[str, Any] = {}

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "Sandbox":
        self._tmp = Path(tempfile.mkdtemp(prefix="healthsync-sandbox-"))
        tls, ca_file = make_tls(self._tmp)
        now = lambda: self.clock.now().isoformat()
        try:
            sf = EmulatorServer(self.salesforce, self.recorder, self.faults, now, tls).start()
            self._servers.append(sf)
            hs = EmulatorServer(self.hubspot, self.recorder, self.faults, now).start()
            self._servers.append(hs)
            sl = EmulatorServer(self.slack, self.recorder, self.faults, now).start()
            self._servers.append(sl)
            ins = EmulatorServer(InspectApi(self), Recorder(), None, now).start()
            self._servers.append(ins)
        except BaseException:
            self.stop()
            raise
        self.salesforce.instance_url = sf.base_url
        self.hubspot.base_url = hs.base_url
        self.ready = {
            "salesforce": {"instance_url": sf.base_url, "access_token": self.salesforce.access_token,
                           "ca_file": str(ca_file), "username": self.salesforce.username,
                           "password": self.salesforce.password, "consumer_key": self.salesforce.consumer_key},
            "hubspot": {"host": hs.base_url, "access_token": self.hubspot.access_token, "tier": self.hubspot_tier,
                        "search_lag_s": self.hubspot.search_lag_seconds},
            "slack": {"base_url": sl.base_url + "/api/", "token": self.slack.token},
            "inspect_url": ins.base_url,
        }
        if self._usage:
            from healthsync.connectors.demo_data import write_usage

            path = write_usage(self._usage, self._tmp / "usage.duckdb", self.clock.now())
            self.ready["warehouse"] = {"url": f"duckdb:///{path}"}
        return self

    def stop(self) -> None:
        for s in reversed(self._servers):
            s.stop()
        self._servers.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def write_ready_file(self, path: str | os.PathLike) -> Path:
        """Write the ready file atomically, readable by the owner only (it holds credentials)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.ready, fh, indent=2)
        os.replace(tmp, path)
        return path

    # --- seeding -------------------------------------------------------------------------------
    def seed_from_frames(self, accounts, opportunities, tickets, owners, crm: str = "both") -> None:
        """Load canonical frames into Salesforce, HubSpot or both (owners also become Slack users)."""
        if crm not in ("both", "salesforce", "hubspot"):
            raise ValueError(f"crm must be both, salesforce or hubspot, got {crm!r}")
        if crm in ("both", "salesforce"):
            seeding.seed_salesforce(self.salesforce, accounts, opportunities, tickets, owners, seed=self.seed)
        if crm in ("both", "hubspot"):
            seeding.seed_hubspot(self.hubspot, accounts, opportunities, tickets, owners, seed=self.seed,
                                 same_stamp=self.same_stamp)
        known = {u["profile"]["email"].lower() for u in self.slack.users.values()}
        if owners is not None:
            fresh = owners[~owners["email"].str.lower().isin(known)]
            seeding.seed_slack(self.slack, fresh)

    def precreate_fields(self) -> None:
        """Create every field/property healthsync writes, as `healthsync crm setup` would
        (Salesforce: the fields, and read/edit access for the integration user through a permission set)."""
        created = []
        for obj, fname, meta in schema.salesforce_healthsync_fields():
            if fname not in self.salesforce.fields[obj]:
                self.salesforce.add_custom_field(obj, fname, meta)
            created.append((obj, fname))
        self.salesforce.grant_field_access(self.salesforce.integration_user_id, created)
        for obj, prop in schema.hubspot_healthsync_properties():
            self.hubspot.groups[obj].setdefault(prop.group, {"name": prop.group, "label": "Healthsync",
                                                             "displayOrder": -1, "archived": False})
            self.hubspot.props[obj].setdefault(prop.name, prop)

    # --- inspection ----------------------------------------------------------------------------
    def requests(self, since: int = 0, api: str | None = None) -> dict:
        return self.recorder.summary(since=since, api=api)

    def slack_messages(self) -> list[dict]:
        with self.slack.lock:
            return [dict(m) for m in self.slack.messages]

    def set_faults(self, settings: dict | str | None = None, api: str | None = None, **values) -> dict:
        """set_faults({"salesforce": {...}}) or set_faults("slack.drop_rate=0.1") or set_faults(api="hubspot", burst_429=3)."""
        if isinstance(settings, str):
            settings = parse_spec(settings)
        settings = dict(settings or {})
        if api is not None:
            settings[api] = {**settings.get(api, {}), **values}
        for name, vals in settings.items():
            if name not in APIS:
                raise ValueError(f"faults: unknown api {name!r} (expected one of {', '.join(APIS)})")
            if vals is None or vals == "reset":
                self.faults.reset(name)
            else:
                self.faults.update(name, vals)
        return self.faults.snapshot()

    def clear_faults(self) -> None:
        for name in APIS:
            self.faults.reset(name)

    def advance_clock(self, seconds: float):
        return self.clock.advance(seconds)

    def records(self, api: str, obj: str) -> list[dict]:
        """Current records including deleted/archived ones (flags IsDeleted / archived say which)."""
        if api == "salesforce":
            o = self.salesforce._obj(obj) if obj.lower() in {x.lower() for x in schema.SF_OBJECTS} else None
            if o is None:
                raise KeyError(f"unknown Salesforce object {obj!r} (expected one of {', '.join(schema.SF_OBJECTS)})")
            with self.salesforce.lock:
                names = list(self.salesforce.fields[o])
                return [{n: r.get(n) for n in names} for r in self.salesforce.records[o].values()]
        if api == "hubspot":
            from healthsync.connectors.sandbox.hubspot import TYPE_ALIASES
            t = TYPE_ALIASES.get(obj.lower())
            if t is None:
                raise KeyError(f"unknown HubSpot object {obj!r} (expected one of {', '.join(schema.HS_OBJECTS)})")
            with self.hubspot.lock:
                out = []
                for r in self.hubspot.objects[t].values():
                    rec = {**r, "properties": dict(r["properties"])}
                    links = self.hubspot.links(t, r["id"])
                    rec["associations"] = {k: sorted(v) for k, v in links.items() if v}
                    out.append(rec)
                return out
        raise KeyError(f"unknown api {api!r} (expected salesforce or hubspot)")

    def record(self, api: str, obj: str, rid: str) -> dict:
        for r in self.records(api, obj):
            if r.get("Id", r.get("id")) == rid:
                return r
        raise KeyError(f"{api} {obj} {rid} does not exist")

    def _live_salesforce(self, o: str, rid: str) -> dict:
        """A Salesforce record that exists and is not deleted (caller holds the emulator's lock)."""
        rec = self.salesforce.records[o].get(rid)
        if rec is None or rec["IsDeleted"]:
            raise KeyError(f"salesforce {o} {rid} does not exist")
        return rec

    def _live_hubspot(self, t: str, rid: str) -> dict:
        """A HubSpot record that exists and is not archived (caller holds the emulator's lock)."""
        rec = self.hubspot.objects[t].get(rid)
        if rec is None or rec["archived"]:
            raise KeyError(f"hubspot {t} {rid} does not exist")
        return rec

    def modify(self, api: str, obj: str, rid: str, fields: dict) -> dict:
        """Change a record as a user would: validated like an API write, timestamps move."""
        if api == "salesforce":
            sf = self.salesforce
            o = sf._obj(obj)
            with sf.lock:
                rec = self._live_salesforce(o, rid)
                values, errors = sf._normalize(o, fields, False, rec)
                if errors:
                    raise ValueError(f"salesforce {o} {rid}: {errors[0].code}: {errors[0].message}")
                return dict(sf._apply(o, values, rec, sf.admin_user_id))  # a person, not the integration
        if api == "hubspot":
            hs = self.hubspot
            t = hs._type(obj)
            with hs.lock:
                rec = self._live_hubspot(t, rid)
                values, errors = hs._validate(t, fields, rec)
                if errors:
                    raise ValueError(f"hubspot {t} {rid}: {errors[0]['error']}: {errors[0]['message']}")
                return dict(hs.apply_update(t, rec, values))
        raise KeyError(f"unknown api {api!r} (expected salesforce or hubspot)")

    def modify_many(self, api: str, obj: str, ids: list[str], fields: dict) -> str:
        """HubSpot: change many records at ONE modification time (an import or workflow); returns that time."""
        if api != "hubspot":
            raise KeyError(f"modify_many is emulated for hubspot only, not {api!r}")
        return self.hubspot.touch_many(self.hubspot._type(obj), list(ids), fields)

    def create(self, api: str, obj: str, fields: dict) -> str:
        """Create a record as a user would; returns its id."""
        if api == "salesforce":
            sf = self.salesforce
            o = sf._obj(obj)
            with sf.lock:
                values, errors = sf._normalize(o, fields, True, None)
                if errors:
                    raise ValueError(f"salesforce {o}: {errors[0].code}: {errors[0].message}")
                return sf._apply(o, values, None, sf.admin_user_id)["Id"]
        if api == "hubspot":
            hs = self.hubspot
            t = hs._type(obj)
            with hs.lock:
                values, errors = hs._validate(t, fields, None)
                if errors:
                    raise ValueError(f"hubspot {t}: {errors[0]['error']}: {errors[0]['message']}")
                return hs.insert(t, values)["id"]
        raise KeyError(f"unknown api {api!r} (expected salesforce or hubspot)")

    def delete(self, api: str, obj: str, rid: str) -> None:
        if api == "salesforce":
            sf = self.salesforce
            o = sf._obj(obj)
            with sf.lock:
                sf._soft_delete(o, self._live_salesforce(o, rid), sf.admin_user_id)
            return
        if api == "hubspot":
            hs = self.hubspot
            t = hs._type(obj)
            with hs.lock:
                hs.archive_record(t, self._live_hubspot(t, rid))
            return
        raise KeyError(f"unknown api {api!r} (expected salesforce or hubspot)")
