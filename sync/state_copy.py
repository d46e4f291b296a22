"""`healthsync state migrate --to URL`: carry the state store over to another database.

Why: the state database is what makes reruns send nothing twice (what each CRM confirmed,
the retry queue, the tasks created, the Slack messages sent, the cursors). Pointing `state.url`
at an empty PostgreSQL database would forget all of it: the next run would rewrite every
record, look every task up again and read every Slack conversation back. So a move copies
every table, row for row, into the new database, after Alembic has brought both databases to
the newest revision (so the columns match).

Rules that keep a copy whole:
- the new database must be empty (no row in any healthsync table): two histories are never merged;
- no run or scheduled job may hold a lease on the old one (it would write after the copy);
- everything is written in one transaction on the new database: all of it arrives, or nothing.
The old database is only read; it stays as it was, as a fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from healthsync.connectors.base import ConfigurationError, StopRunError
from healthsync.sync.state import StateStore, locks, metadata

#: rows read and written per round trip
BATCH = 5_000


def shown(url: str) -> str:
    """A state URL as shown to people: its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable URL)"


@dataclass
class CopyResult:
    """What `copy_state` carried over: rows per table, from where to where (passwords hidden)."""

    source: str
    target: str
    revision: str
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def to_json(self) -> dict:
        return {"source": self.source, "target": self.target, "revision": self.revision, "rows": dict(self.rows),
                "total_rows": self.total}


def _open(url: str, role: str) -> StateStore:
    """A migrated store, or an error a person can act on (a missing driver, an unreachable server)."""
    try:
        store = StateStore(url)
    except (ArgumentError, NoSuchModuleError):
        raise ConfigurationError(f"{role} state URL {shown(url)} is not a database URL SQLAlchemy knows") from None
    except ModuleNotFoundError as exc:
        hint = " (pip install 'healthsync[postgres]')" if "psycopg" in str(exc.name) else ""
        raise ConfigurationError(f"{role} state URL {shown(url)}: its database driver {exc.name!r} is not installed{hint}") from None
    try:
        store.migrate()
    except OperationalError as exc:
        store.close()
        raise StopRunError(f"cannot open the {role} state database {shown(url)}: {str(exc.orig).strip().splitlines()[0]}") from None
    return store


def _rows(store: StateStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar() or 0) for t in metadata.sorted_tables}


def _live_leases(store: StateStore, now: datetime) -> list[str]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(locks.c.name, locks.c.holder, locks.c.expires_at)).all()
    return [f"{name} (held by {holder} until {expires:%Y-%m-%d %H:%M} UTC)" for name, holder, expires in rows
            if expires is not None and expires > now]


def copy_state(source_url: str, target_url: str, *, now: datetime | None = None) -> CopyResult:
    """Copy every table of the state store at `source_url` into the empty one at `target_url` (see module docstring)."""
    if make_url(source_url) == make_url(target_url):
        raise ConfigurationError(f"--to {shown(target_url)} is the state database in use already")
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
    source = _open(source_url, "current")
    try:
        target = _open(target_url, "new")
        try:
            return _copy(source, target, now)
        finally:
            target.close()
    finally:
        source.close()


def _copy(source: StateStore, target: StateStore, now: datetime) -> CopyResult:
    busy = _live_leases(source, now)
    if busy:
        raise ConfigurationError(
            "a run or scheduled job is using the current state database: " + "; ".join(busy)
            + ". Stop the scheduler (or wait for the run to finish) and migrate again"
        )
    occupied = {name: n for name, n in _rows(target).items() if n}
    if occupied:
        listed = ", ".join(f"{name}: {n}" for name, n in occupied.items())
        raise ConfigurationError(
            f"the new state database {shown(target.url)} is not empty (rows in {listed}); "
            "healthsync only moves a state into an empty database, so two histories are never mixed"
        )
    result = CopyResult(shown(source.url), shown(target.url), target.version() or "")
    with source.engine.connect() as read, target.begin() as write:
        for table in metadata.sorted_tables:
            copied = 0
            rows = read.execution_options(yield_per=BATCH).execute(select(table)).mappings()
            for chunk in rows.partitions(BATCH):
                try:
                    write.execute(table.insert(), [dict(r) for r in chunk])
                except DBAPIError as exc:
                    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
                    raise ConfigurationError(
                        f"table {table.name}: the new database refused a row ({reason}); nothing was copied"
                    ) from None
                copied += len(chunk)
            result.rows[table.name] = copied
    return result
