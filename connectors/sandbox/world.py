"""A sandbox's world saved to a file, and a sandbox started again from it.

Why: the embedded demo must show the product's main promise, that a rerun sends only what
changed. That needs the same emulated CRMs on the second run as on the first, with what the
first run wrote still in them, so the world outlives the process.

What is saved is what a real org, portal or workspace keeps across a restart of our side:
every record of the three emulators, their id counters, custom fields and field permissions,
users, owners, associations, Bulk jobs, channels and every Slack message, the daily API usage,
the emulator clock's time, and the demo warehouse's product usage (as the recipe that generated
it, so a file of a 500-account world stays a few MB instead of 80). What belongs to the running process is not saved (each
emulator's `PROCESS_ATTRS`: ports, the TLS certificate, the request log, fault settings,
rate-limit windows kept in monotonic time, open query cursors, test hooks); a loaded sandbox
gets new ones when it starts, as a client reconnecting after a restart would.

    sb = Sandbox(accounts=500, seed=7)
    save_world(sb, path, meta={"day": 1})
    sb = load_world(path, advance_seconds=86_400)   # one emulated day later; sb.world_meta == {"day": 1}

The file is a pickle of the emulators' own objects (records hold datetimes, sets, tuple keys
and dataclasses; a JSON encoding would need a schema kept in step with every emulator). A pickle
can run code when it is loaded, so healthsync only loads world files it wrote itself, from the
state folder, created readable by the owner only.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from healthsync.connectors.sandbox.sandbox import Sandbox

#: bumped when the saved layout changes incompatibly; an older file is refused with that reason
WORLD_FORMAT = 1
APIS = ("salesforce", "hubspot", "slack")


class WorldFileError(Exception):
    """A world file that cannot be loaded (unreadable, another format, not a healthsync world)."""


def save_world(sandbox: Sandbox, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write the sandbox's world to `path` atomically (mode 600); `meta` is kept with it (e.g. the demo's day)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    apis = {}
    for name in APIS:
        api = getattr(sandbox, name)
        with api.lock:  # a consistent copy even if a request is still being answered
            apis[name] = pickle.dumps(api.world_state(), protocol=pickle.HIGHEST_PROTOCOL)
    world = {
        "format": WORLD_FORMAT,
        "saved_at": sandbox.clock.now(),
        "seed": sandbox.seed,
        "hubspot_tier": sandbox.hubspot_tier,
        "same_stamp": sandbox.same_stamp,
        "meta": dict(meta if meta is not None else sandbox.world_meta),
        "apis": apis,
        # the demo warehouse's usage (written to DuckDB at each start): how to generate it again, or the
        # usage itself when it was handed in
        "usage_recipe": sandbox.usage_recipe,
        "usage": None if sandbox.usage_recipe is not None else [p.usage for p in sandbox._usage],
    }
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        pickle.dump(world, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return path


def read_world(path: str | os.PathLike) -> dict[str, Any]:
    """The saved world as a dict (`saved_at`, `meta`, ...); WorldFileError saying why it cannot be used."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            world = pickle.load(fh)
    except OSError as exc:
        raise WorldFileError(f"{path}: cannot read the saved sandbox world ({exc.strerror})") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError) as exc:
        raise WorldFileError(f"{path}: not a saved sandbox world, or a damaged one ({type(exc).__name__})") from None
    if not isinstance(world, dict) or "apis" not in world:
        raise WorldFileError(f"{path}: not a saved sandbox world")
    if world.get("format") != WORLD_FORMAT:
        raise WorldFileError(
            f"{path}: saved by another version of healthsync (world format {world.get('format')}, "
            f"this version reads {WORLD_FORMAT})"
        )
    return world


def load_world(path: str | os.PathLike, *, advance_seconds: float = 0.0, **sandbox_options: Any) -> Sandbox:
    """A sandbox (not started) holding the saved world, its clock `advance_seconds` after the save.

    `sandbox_options` are `Sandbox` keyword arguments for the process side (faults, ...); the
    world's own settings (seed, HubSpot tier, Slack pacing, limits) come from the file.
    """
    if advance_seconds < 0:
        raise ValueError("advance_seconds must be >= 0 (the emulator clock only moves forward)")
    world = read_world(path)
    saved_at: datetime = world["saved_at"]
    sandbox = Sandbox(accounts=0, seed=world["seed"], hubspot_tier=world["hubspot_tier"],
                      same_stamp=world["same_stamp"], now=saved_at + timedelta(seconds=advance_seconds),
                      **sandbox_options)
    for name in APIS:
        getattr(sandbox, name).restore_world_state(pickle.loads(world["apis"][name]))
    sandbox.world_meta = dict(world.get("meta") or {})
    _restore_usage(sandbox, world)
    return sandbox


@dataclass
class _UsageOnly:
    """What `write_usage` reads of a portfolio: its usage events."""

    usage: Any


def _restore_usage(sandbox: Sandbox, world: dict) -> None:
    recipe = world.get("usage_recipe")
    if recipe:
        from healthsync.connectors.demo_data import generate_portfolio

        sandbox._usage = [generate_portfolio(r["n_accounts"], r["seed"], as_of=r["as_of"], usage=True) for r in recipe]
        sandbox.usage_recipe = recipe
    elif world.get("usage"):
        sandbox._usage = [_UsageOnly(u) for u in world["usage"]]
