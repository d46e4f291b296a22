"""The embedded sandbox of `healthsync run` without credentials: one demo world that lasts.

Why: the demo must show what the product promises, that a rerun sends only what changed. A
sandbox made anew for every run cannot show it (every run would write everything again), so
the embedded sandbox's world is kept in a file next to the state database:

- the first run creates the world (demo accounts anchored to today) and saves it when it ends;
- every later run loads it one emulated day after the previous run; half-way through that day
  a few accounts per CRM change (connectors/sandbox/demo_day.py), so the run has something
  real to send, and nothing else;
- `healthsync sandbox reset` (`make demo-reset`) removes the world, and the next run starts over.

The world file holds the sandbox's credentials (made up, loopback only) and is a pickle: it is
created readable by its owner only and only ever read from where healthsync wrote it. One
embedded run at a time uses a world: a second one waits for nothing and stops (exit 3).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from healthsync.connectors.base import StopRunError
from healthsync.connectors.sandbox import Sandbox, WorldFileError, load_world, save_world
from healthsync.connectors.sandbox.demo_day import DEFAULT_CHANGES_PER_CRM, AccountChange, change_accounts

#: one demo run after another is one emulated day
DAY_S = 86_400.0
WORLD_FILE = "sandbox-world.pickle"


def world_path(state_url: str) -> Path:
    """Where the embedded sandbox's world is kept: next to a SQLite state database, else in the
    per-user state directory under a name derived from the state URL (one world per state)."""
    try:
        url = make_url(state_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return Path(url.database).expanduser().resolve().parent / WORLD_FILE
    except Exception:  # noqa: BLE001 - an unparsable URL is reported when the store opens it
        pass
    digest = hashlib.sha256(state_url.encode()).hexdigest()[:16]
    return _user_state_dir() / "sandbox" / digest / WORLD_FILE


def _user_state_dir() -> Path:
    try:
        import platformdirs

        return Path(platformdirs.user_state_path("healthsync"))
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "healthsync"


@dataclass
class DemoWorld:
    """The embedded sandbox of one run and what happened to its world before the run."""

    sandbox: Sandbox
    path: Path
    day: int  # 1 for a new world, then one more per run
    fresh: bool  # a new world: state kept for an earlier world no longer describes it
    changes: list[AccountChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _lock: int | None = None

    @property
    def ready(self) -> dict:
        return self.sandbox.ready

    def stop(self) -> None:
        """`Connections.close()` stops an embedded sandbox this way: here that also saves the world."""
        self.close()

    def close(self) -> None:
        """Stop the emulators and save the world as the run left it (also after a failed run: the
        CRMs keep what they confirmed, and the state remembers exactly that)."""
        if self._lock is None:
            return  # already closed
        try:
            self.sandbox.stop()
            save_world(self.sandbox, self.path, meta={**self.sandbox.world_meta, "day": self.day})
        finally:
            if self._lock is not None:
                os.close(self._lock)  # releases the flock
                self._lock = None


def _take_lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StopRunError(
            f"another healthsync run is using the embedded sandbox ({path}); try again when it has finished"
        ) from None
    return fd


def open_demo_world(state_url: str, *, accounts: int, seed: int, state_knows_world: bool = True,
                    warehouse: bool = False, changes_per_crm: int = DEFAULT_CHANGES_PER_CRM) -> DemoWorld:
    """The started embedded sandbox for a run on `state_url`: the saved world a day later, or a new one.

    `state_knows_world`: the state database remembers an earlier embedded run. When it does not
    (a new or emptied state), a saved world is not reused: the state would know nothing of what
    that world holds, so a new world and a new state start together.
    """
    path = world_path(state_url)
    lock = _take_lock(path)
    try:
        if not state_knows_world and path.exists():
            path.unlink()
        world = _load_or_create(path, accounts=accounts, seed=seed, warehouse=warehouse, changes_per_crm=changes_per_crm)
        world._lock = lock
        world.sandbox.start()
        return world
    except BaseException:
        os.close(lock)
        raise


def _load_or_create(path: Path, *, accounts: int, seed: int, warehouse: bool, changes_per_crm: int) -> DemoWorld:
    notes: list[str] = []
    if path.exists():
        try:
            sandbox = load_world(path, advance_seconds=DAY_S / 2, slack_message_interval_s=0)
        except WorldFileError as exc:
            notes.append(f"the saved demo world could not be used ({exc}); starting a new one")
        else:
            meta = sandbox.world_meta
            if meta.get("accounts") == accounts and meta.get("seed") == seed and bool(meta.get("warehouse")) == warehouse:
                day = int(meta.get("day", 1)) + 1
                changes = change_accounts(sandbox, day, per_crm=changes_per_crm)
                sandbox.advance_clock(DAY_S / 2)
                slipped = sum(c.direction == "slipped" for c in changes)
                notes.append(
                    f"demo day {day}, one emulated day after the last run: {len(changes)} accounts changed in the "
                    f"sandbox CRMs ({slipped} slipped, {len(changes) - slipped} recovered); only what changed is sent"
                )
                return DemoWorld(sandbox, path, day, fresh=False, changes=changes, notes=notes)
            notes.append("the sandbox settings (accounts, seed, warehouse) changed since the saved demo world; "
                         "starting a new one")
    # Slack's one-message-per-second-per-channel pacing is off in the embedded demo: a first run
    # alerts hundreds of episodes to a handful of owner DMs, which would make `make demo` take
    # ten minutes of sleeping. Tests of the pacing use a sandbox they start themselves.
    sandbox = Sandbox(accounts=accounts, seed=seed, slack_message_interval_s=0, warehouse=warehouse)
    sandbox.world_meta.update({"accounts": accounts, "seed": seed, "warehouse": warehouse})
    notes.append(f"demo day 1: a new sandbox world with {accounts} demo accounts per CRM, dated today")
    return DemoWorld(sandbox, path, 1, fresh=True, notes=notes)


def remove_world(state_url: str) -> Path | None:
    """Delete the saved world of `state_url` (the next embedded run starts a new one); returns what was removed."""
    path = world_path(state_url)
    lock = _take_lock(path)
    try:
        if path.exists():
            path.unlink()
            return path
        return None
    finally:
        os.close(lock)


def demo_history(store) -> tuple[int, int]:
    """(runs against live CRMs, runs against a sandbox) recorded in a state store."""
    from sqlalchemy import func, select

    runs = store.tables["runs"]
    with store.engine.connect() as conn:
        counts = dict(conn.execute(select(runs.c.mode, func.count()).group_by(runs.c.mode)).all())
    return int(counts.get("live", 0)), int(counts.get("sandbox", 0))


def reset_demo(state_url: str) -> dict:
    """`healthsync sandbox reset`: forget the demo world and what the state remembers of it.

    Removes the saved world and deletes every row of the state database, so the next run
    without credentials starts a new demo from day 1. Refused (ConfigurationError, nothing
    removed) when the state database holds runs against live CRMs: that history is not the demo's.
    """
    from sqlalchemy import func, select

    from healthsync.connectors.base import ConfigurationError
    from healthsync.sync.state import open_store

    store = open_store(state_url)
    try:
        runs = store.tables["runs"]
        with store.engine.connect() as conn:
            live = conn.execute(select(func.count()).select_from(runs).where(runs.c.mode == "live")).scalar() or 0
            total = conn.execute(select(func.count()).select_from(runs)).scalar() or 0
        if live:
            raise ConfigurationError(
                f"the state database at {_shown(state_url)} holds {live} run(s) against live CRMs; "
                "`sandbox reset` only clears a demo's state. Give the demo its own state (state.url or another "
                "config file), or remove the database yourself"
            )
        removed = remove_world(state_url)
        store.reset()
    finally:
        store.close()
    return {"world_removed": str(removed) if removed else None, "runs_forgotten": int(total), "state": _shown(state_url)}


def _shown(url: str) -> str:
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            return parsed.database
        return parsed.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparsable URL)"
