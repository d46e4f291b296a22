"""The state store: everything a run must remember to never lose a write nor send one twice.

SQLAlchemy Core over any URL (SQLite file by default, PostgreSQL for teams
running several workers). The table names and columns are a contract shared
with the playbooks/escalation/scheduler code (notes/sync_contract.md):

    runs            one row per run, with its JSON summary and exit code
    cursors         per (crm, object) incremental high-water mark
    replica         canonical records pulled from the CRMs (deleted = tombstone)
    score_history   one row per account per run (trends read it back)
    pushed          the last value each CRM CONFIRMED per (crm, object, record, field)
    own_writes      the modification time each CRM gave our last confirmed write to a record
    failed_records  the retry queue: records the CRM rejected or never confirmed
    bulk_jobs       write-back Bulk jobs still running when their run ended (collected, never resent)
    episodes        playbook episodes and their CRM task (task_origin: created here, or found in the CRM)
    playbook_conditions  per (crm, account, playbook) whether the trigger condition held when last known
    escalations     Slack messages per (episode, level, kind): marker, destination, message key, ts
    slack_channels  channel name -> conversation ID (conversations.list), a cache
    slack_destinations  per Slack conversation, the window whose healthsync messages were read back
    slack_seen_items    the item keys those reads found, per conversation
    locks           named leases for the scheduler and jobs
    drift/backtests for the validation and report code
    data_quality    per-source data-quality KPIs of each run (sync/data_quality.py)
    data_quality_state  each KPI's current state and whether the ops channel was told
    crm_instances   what each CRM said about itself (instance URL, portal id): the report's record links
    usage_history   product usage per account per day, for the customer-facing report's trends
    forecast_state  named numbers of the forecast kept between runs (the renormalisation scale)
    replica_versions  per (crm, object) a counter bumped whenever the replica's content changes
    replica_frames  per (crm, object) the live replica as a typed frame at a version (sync/replica_frames.py)
    score_memo      the last fully written run's scores, reused while nothing they depend on changed (sync/score_memo.py)

Schema changes are Alembic revisions (sync/migrations/versions/), never drop-and-rebuild: a
user's state survives upgrades. The tables below are the current shape the code queries; a
change to them needs a new revision (tests/sync/test_state_store.py compares the two).

Datetimes are stored as naive UTC (SQLite has no time zones) and handed back
as aware UTC by the helpers here.
"""

from __future__ import annotations

import json
import math
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pandas as pd
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    inspect,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError

from healthsync.config.state_location import redact_url
from healthsync.connectors.base import ConfigurationError

#: Only for code that opens a store without settings (tests, tools); commands use the settings'
#: `state.url`, which never depends on the working directory (config/state_location.py).
DEFAULT_URL = "sqlite:///.healthsync/state.db"
#: A fixed PostgreSQL advisory-lock key: concurrent first opens migrate one at a time.
MIGRATE_LOCK_KEY = 0x6865616C7468  # "health"
#: rows per statement when deleting/inserting by key (stays under SQLite's variable limit)
CHUNK = 400

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("mode", String(16)),
    Column("status", String(16), nullable=False),  # running | ok | record_errors | stopped | failed
    Column("summary_json", Text),
    Column("exit_code", Integer),
    # who runs it: a run left `running` whose process is gone shows as `abandoned` (sync/status.py)
    Column("host", String(255)),
    Column("pid", Integer),
)

cursors = Table(
    "cursors",
    metadata,
    Column("crm", String(16), primary_key=True),
    Column("object", String(32), primary_key=True),
    Column("cursor_value", DateTime),
    Column("updated_at", DateTime),
)

replica = Table(
    "replica",
    metadata,
    Column("crm", String(16), primary_key=True),
    Column("object", String(32), primary_key=True),
    Column("record_id", String(128), primary_key=True),
    Column("data_json", Text),
    Column("modified_at", DateTime),
    Column("deleted", Boolean, nullable=False, default=False),
    # the replica version (replica_versions) that last changed the row; NULL: before scale_2
    Column("row_version", BigInteger),
    Index("ix_replica_row_version", "crm", "object", "row_version"),
)

score_history = Table(
    "score_history",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("account_id", String(128), primary_key=True),
    Column("scored_at", DateTime, nullable=False),
    Column("score", Float),
    Column("band", String(64)),
    Column("confidence", Float),
    Column("dimension_json", Text),
    Column("drivers", Text),
    Column("trend", String(64)),
    # the report's trend reads a year of (account, day, score, band) from this index alone (report_1)
    Index("ix_score_history_scored_at", "scored_at", "account_id", "score", "band"),
)

pushed = Table(
    "pushed",
    metadata,
    Column("crm", String(16), primary_key=True),
    Column("object", String(32), primary_key=True),
    Column("record_id", String(128), primary_key=True),
    Column("field", String(128), primary_key=True),
    Column("value_json", Text),
    Column("pushed_at", DateTime),
    Column("run_id", String(64)),
)

own_writes = Table(
    "own_writes",
    metadata,
    Column("crm", String(16), primary_key=True),
    Column("object", String(32), primary_key=True),
    Column("record_id", String(128), primary_key=True),
    Column("stamp", DateTime, nullable=False),  # the modification time the CRM gave our last confirmed write
)

failed_records = Table(
    "failed_records",
    metadata,
    Column("crm", String(16), primary_key=True),
    Column("object", String(32), primary_key=True),
    Column("record_id", String(128), primary_key=True),
    Column("fields_json", Text),
    Column("error_code", String(128)),
    Column("message", Text),
    Column("retryable", Boolean),
    Column("attempts", Integer, nullable=False, default=1),
    Column("first_failed_at", DateTime),
    Column("last_failed_at", DateTime),
    Column("run_id", String(64)),
)

bulk_jobs = Table(
    "bulk_jobs",
    metadata,
    Column("crm", String(16), primary_key=True),
    Column("job_id", String(64), primary_key=True),
    Column("object", String(32), nullable=False),
    Column("records_json", Text, nullable=False),  # record_id -> {field: value} the job carries, in job order
    Column("submitted_at", DateTime),
    Column("run_id", String(64)),
)

episodes = Table(
    "episodes",
    metadata,
    Column("episode_id", String(255), primary_key=True),
    Column("crm", String(16)),
    Column("account_id", String(128)),
    Column("playbook", String(64)),
    Column("status", String(16)),  # queued | open | closed
    Column("opened_at", DateTime),
    Column("closed_at", DateTime),
    Column("close_reason", Text),
    Column("task_key", String(255)),
    Column("task_id", String(128)),
    Column("task_due_at", DateTime),
    Column("task_status", String(32)),
    Column("owner_email", String(255)),
    Column("segment", String(64)),
    Column("last_seen_run", String(64)),
    # real UTC time a create of this task was last sent without a definite answer (None: never sent)
    Column("task_attempted_at", DateTime),
    # when the task was released to its owner (counts against playbooks.max_new_tasks_per_owner_per_day)
    Column("released_at", DateTime),
    # "created": this state's create call made the task, so no other state can have alerted it;
    # "found": the CRM already had it (lost/moved state, another worker); NULL: unknown (older rows)
    Column("task_origin", String(16)),
    UniqueConstraint("task_key", name="uq_episodes_task_key"),
)

#: Whether each playbook's condition held for an account when last known, so a `trigger: crossing`
#: playbook fires only when it becomes true between the previous scored run and this one.
playbook_conditions = Table(
    "playbook_conditions",
    metadata,
    Column("crm", String(16), primary_key=True),
    Column("account_id", String(128), primary_key=True),
    Column("playbook", String(64), primary_key=True),
    Column("holds", Boolean, nullable=False),
    Column("run_id", String(64)),
    Column("changed_at", DateTime),
)

escalations = Table(
    "escalations",
    metadata,
    Column("episode_id", String(255), primary_key=True),
    Column("level", String(32), primary_key=True),
    Column("kind", String(16), primary_key=True),  # alert | escalation | recovery
    Column("recipient", String(255)),
    Column("channel", String(128)),
    Column("ts", String(64)),
    Column("sent_at", DateTime),
    Column("destination", String(32)),  # the conversation ID it was posted to (D... for a DM)
    Column("message_key", String(64)),  # the idempotency key of the message (digest) that carries it
    Column("started_at", DateTime),  # when the send was started: a maybe-sent marker is looked up from here
)

slack_channels = Table(
    "slack_channels",
    metadata,
    Column("name", String(255), primary_key=True),  # lower case, without '#'
    Column("channel_id", String(32), nullable=False),
    Column("resolved_at", DateTime, nullable=False),
)

slack_destinations = Table(
    "slack_destinations",
    metadata,
    Column("channel_id", String(32), primary_key=True),
    # every healthsync message posted there between verified_from and verified_to was read back from
    # conversations.history: its item keys are in slack_seen_items
    Column("verified_from", DateTime, nullable=False),
    Column("verified_to", DateTime, nullable=False),
)

slack_seen_items = Table(
    "slack_seen_items",
    metadata,
    Column("channel_id", String(32), primary_key=True),
    Column("item_key", String(32), primary_key=True),
    Column("ts", String(64)),
)

locks = Table(
    "locks",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("holder", String(255)),
    Column("acquired_at", DateTime),
    Column("expires_at", DateTime),
)

drift = Table(
    "drift",
    metadata,
    Column("run_id", String(64)),
    Column("metric", String(128)),
    Column("psi", Float),
    Column("warning", Boolean),
)

backtests = Table(
    "backtests",
    metadata,
    Column("run_id", String(64)),
    Column("created_at", DateTime),
    Column("report_json", Text),
)

data_quality = Table(
    "data_quality",
    metadata,
    Column("run_id", String(64), nullable=False, index=True),
    Column("measured_at", DateTime, nullable=False),
    Column("source", String(32), nullable=False),  # salesforce | hubspot | warehouse
    Column("kpi", String(32), nullable=False),  # completeness | freshness_hours | error_rate | duplicate_ids | key_match_rate
    Column("subject", String(128), nullable=False),  # metric input, object, or "" for the source as a whole
    Column("value", Float),
    Column("threshold", Float),
    Column("breached", Boolean, nullable=False),
)

data_quality_state = Table(
    "data_quality_state",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("kpi", String(32), primary_key=True),
    Column("subject", String(128), primary_key=True),
    Column("breached", Boolean, nullable=False),  # the state as last measured
    Column("since", DateTime),
    Column("announced", Boolean),  # the ops channel was told of this state
)

crm_instances = Table(
    "crm_instances",
    metadata,
    Column("crm", String(16), primary_key=True),
    # Salesforce: {"instance_url"}; HubSpot: {"portal_id", "ui_domain"} (sync/crm_directory.py)
    Column("info_json", Text, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

usage_history = Table(
    "usage_history",
    metadata,
    Column("account_id", String(128), primary_key=True),
    Column("day", Date, primary_key=True),  # UTC day of the run; the day's last run wins
    Column("run_id", String(64)),
    Column("active_users", Float),
    Column("seats_purchased", Float),
    Column("logins_per_user_week", Float),
    Column("features_used", Float),
    Column("features_available", Float),
)

forecast_state = Table(
    "forecast_state",
    metadata,
    Column("name", String(32), primary_key=True),  # "renormalise_scale"
    Column("value", Float, nullable=False),
    Column("run_id", String(64)),
    Column("updated_at", DateTime),
)

replica_versions = Table(
    "replica_versions",
    metadata,
    Column("crm", String(16), primary_key=True),
    Column("object", String(32), primary_key=True),
    Column("version", BigInteger, nullable=False),
)

replica_frames = Table(
    "replica_frames",
    metadata,
    Column("crm", String(16), primary_key=True),
    Column("object", String(32), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("payload", LargeBinary, nullable=False),  # the live replica as a typed Parquet frame (sync/replica_frames.py)
)

score_memo = Table(
    "score_memo",
    metadata,
    Column("name", String(32), primary_key=True),  # "last"
    Column("fingerprint", String(64), nullable=False),
    Column("run_id", String(64)),
    Column("created_at", DateTime),
    Column("payload", LargeBinary, nullable=False),  # the scores and opportunities frames as Parquet (sync/score_memo.py)
)

#: the forecast_state row holding the renormalisation scale the last write-back used (engine/forecast.py)
RENORMALISE_SCALE = "renormalise_scale"

#: Where the Alembic environment and revisions live (shipped as package data).
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: The table of the hand-rolled migrations before Alembic; a database that has it is at revision 0001.
LEGACY_VERSION_TABLE = "schema_version"


def _alembic_config(conn: Connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    """The newest revision this build knows."""
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(None)  # type: ignore[arg-type]
    return ScriptDirectory.from_config(cfg).get_current_head()


# ----------------------------------------------------------------------------- values


def utc_naive(value: datetime | pd.Timestamp | None) -> datetime | None:
    """A datetime as naive UTC for storage (aware values are converted, naive ones are taken as UTC)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def utc_aware(value: datetime | None) -> datetime | None:
    """A stored (naive UTC) datetime as aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def to_json_value(value: Any) -> Any:
    """A python/numpy/pandas scalar as a JSON-safe value (NaN/NA -> None, timestamps -> ISO)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return to_json_value(value)


def dumps(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces, NaN -> null): equal values give equal strings, so diffs are string compares."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def chunks(items: list, size: int = CHUNK) -> Iterator[list]:
    """`items` in lists of at most `size` (an IN list or a batch kept within every database's limits)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ----------------------------------------------------------------------------- the store


class StateStoreError(ConfigurationError):
    """The state database cannot be opened or written (bad path, read-only, missing driver): exit 2, nothing sent."""


class StateStore:
    """One state database. `migrate()` before first use (idempotent)."""

    def __init__(self, url: str = DEFAULT_URL):
        self.url = url
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise StateStoreError(f"state.url: {redact_url(url)!r} is not a database URL") from None
        self.backend = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"future": True}
        if self.backend == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                folder = Path(database).expanduser().parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise StateStoreError(
                        f"state.url: cannot create the folder {folder} for the state database ({e.strerror or e}); "
                        "choose a writable path"
                    ) from None
                if Path(database).expanduser().is_dir():
                    raise StateStoreError(f"state.url: {database} is a folder, not a database file")
            # several threads (scheduler, progress) may share it; writers wait instead of failing
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except ImportError as e:
            raise StateStoreError(f"state.url: the database driver is not installed ({e.name or e}): "
                                  "pip install 'healthsync[postgres]' for PostgreSQL") from None
        except (ArgumentError, NoSuchModuleError) as e:
            raise StateStoreError(f"state.url: {redact_url(url)!r}: {e}") from None
        if self.backend == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.metadata = metadata
        self.tables = metadata.tables

    @property
    def shown(self) -> str:
        """Where this store is, as shown to users (a file path, or the URL with its password hidden)."""
        from healthsync.config.state_location import describe

        return describe(self.url)

    # ------------------------------------------------------------------ lifecycle

    def migrate(self) -> str:
        """Bring the schema to the newest revision (idempotent); returns it.

        Safe when several processes open a fresh database at once: the check and the
        upgrade run under one database-wide lock (SQLite `BEGIN EXCLUSIVE`, PostgreSQL
        `pg_advisory_xact_lock`), so the second process waits and then finds the
        schema at head instead of creating the same tables again.
        """
        from alembic import command

        head = head_revision()
        try:
            if self.version() == head:
                return head  # the common case: no lock taken
            with self.engine.connect() as conn:
                if self.backend == "sqlite":
                    conn.exec_driver_sql("BEGIN EXCLUSIVE")
                elif self.backend == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK_KEY})")
                names = set(inspect(conn).get_table_names())
                cfg = _alembic_config(conn)
                if LEGACY_VERSION_TABLE in names and "alembic_version" not in names:
                    command.stamp(cfg, "0001")  # made by the pre-Alembic migrations, which stopped at 0001
                command.upgrade(cfg, "head")
                conn.commit()
        except OperationalError as e:
            raise StateStoreError(
                f"state.url: cannot use the state database at {self.shown}: {_db_reason(e)}"
            ) from None
        return self.version() or ""

    def version(self) -> str | None:
        """The schema revision of this database; None when healthsync never initialised it."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction: commits when the block ends, rolls back on an exception."""
        with self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    def reset(self, keep: tuple[str, ...] = ()) -> None:
        """Delete every row of every table but `keep` (the embedded sandbox is new each time, so is its bookkeeping)."""
        with self.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                if table.name not in keep:
                    conn.execute(delete(table))

    # ------------------------------------------------------------------ locks

    def acquire_lock(self, name: str, holder: str, ttl_s: float, now: datetime | None = None) -> bool:
        """Take the named lease if it is free, expired, already ours, or its holder's process is gone.

        Holders made by `lock_holder()` read `host:pid:tag`: a lease whose holder ran on
        this host in a process that no longer exists is taken over at once (a `kill -9`
        no longer blocks runs for the lease's lifetime); a holder on another host keeps
        the lease until it expires, since its process cannot be checked from here.
        """
        now_n = utc_naive(now) if now else _now()
        expires = now_n + timedelta(seconds=ttl_s)
        with self.begin() as conn:
            row = conn.execute(select(locks).where(locks.c.name == name)).first()
            if row is None:
                try:
                    conn.execute(insert(locks).values(name=name, holder=holder, acquired_at=now_n, expires_at=expires))
                    return True
                except IntegrityError:
                    return False
            live = row.expires_at is not None and row.expires_at > now_n
            if row.holder != holder and live and holder_alive(row.holder) is not False:
                return False
            result = conn.execute(
                update(locks)
                .where(locks.c.name == name, locks.c.holder == row.holder, locks.c.expires_at == row.expires_at)
                .values(holder=holder, acquired_at=now_n, expires_at=expires)
            )
            return result.rowcount == 1

    def release_lock(self, name: str, holder: str) -> None:
        with self.begin() as conn:
            conn.execute(delete(locks).where(locks.c.name == name, locks.c.holder == holder))

    # ------------------------------------------------------------------ runs

    def lock_holder_of(self, name: str) -> dict | None:
        """The current lease row of `name` (holder, acquired_at, expires_at), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(locks).where(locks.c.name == name)).mappings().first()
        return dict(row) if row else None

    def start_run(self, run_id: str, mode: str, started_at: datetime) -> None:
        with self.begin() as conn:
            conn.execute(
                insert(runs).values(
                    run_id=run_id, started_at=utc_naive(started_at), mode=mode, status="running", host=HOST, pid=os.getpid()
                )
            )

    def mark_abandoned(self, exclude: str | None = None) -> list[str]:
        """Runs left `running` by a process of this host that is gone become `abandoned`; returns their ids."""
        with self.begin() as conn:
            rows = conn.execute(select(runs.c.run_id, runs.c.host, runs.c.pid).where(runs.c.status == "running")).all()
            dead = [r.run_id for r in rows if r.run_id != exclude and process_alive(r.host, r.pid) is False]
            for chunk in chunks(dead):
                conn.execute(
                    update(runs).where(runs.c.run_id.in_(chunk), runs.c.status == "running").values(status="abandoned")
                )
        return dead

    def finish_run(self, run_id: str, status: str, summary: dict, exit_code: int, finished_at: datetime | None = None) -> None:
        with self.begin() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(status=status, summary_json=dumps(summary), exit_code=exit_code, finished_at=utc_naive(finished_at) or _now())
            )

    def recent_runs(self, limit: int = 10) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(runs).order_by(runs.c.started_at.desc()).limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ cursors

    def cursor(self, crm: str, object: str) -> datetime | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(cursors.c.cursor_value).where(cursors.c.crm == crm, cursors.c.object == object)
            ).scalar()
        return utc_aware(value)

    @staticmethod
    def set_cursor(conn: Connection, crm: str, object: str, value: datetime) -> None:
        """Move a cursor inside the caller's transaction (the same one that stored its records)."""
        now = _now()
        done = conn.execute(
            update(cursors).where(cursors.c.crm == crm, cursors.c.object == object).values(cursor_value=utc_naive(value), updated_at=now)
        )
        if done.rowcount == 0:
            conn.execute(insert(cursors).values(crm=crm, object=object, cursor_value=utc_naive(value), updated_at=now))

    # ------------------------------------------------------------------ replica

    @staticmethod
    def upsert_replica(conn: Connection, crm: str, object: str, ids: list[str], data: list[str], modified_at: datetime) -> int:
        """Store records (JSON text per id) replacing earlier versions, inside the caller's transaction.

        A record whose stored text is already `data` is left alone: re-reading an unchanged record
        (a cursor's boundary, a HubSpot record whose only change was our own write) changes nothing,
        so the object's replica version stays, and with it the scoring memo (sync/score_memo.py). The
        rows that do change carry the new version (`row_version`), so the frame cache reads them alone
        (sync/replica_frames.py). Returns how many records changed.
        """
        if not ids:
            return 0
        mod = utc_naive(modified_at)
        new: list[tuple[str, str]] = []
        for id_chunk, data_chunk in zip(chunks(ids), chunks(data)):
            stored = dict(conn.execute(
                select(replica.c.record_id, replica.c.data_json).where(
                    replica.c.crm == crm, replica.c.object == object, replica.c.record_id.in_(id_chunk),
                    replica.c.deleted == False,  # noqa: E712
                )
            ).all())
            new.extend((i, d) for i, d in zip(id_chunk, data_chunk) if stored.get(i) != d)
        if not new:
            return 0
        version = StateStore._next_replica_version(conn, crm, object)
        for chunk in chunks(new):
            conn.execute(delete(replica).where(replica.c.crm == crm, replica.c.object == object,
                                               replica.c.record_id.in_([i for i, _ in chunk])))
            conn.execute(
                insert(replica),
                [{"crm": crm, "object": object, "record_id": i, "data_json": d, "modified_at": mod, "deleted": False,
                  "row_version": version} for i, d in chunk],
            )
        StateStore._set_replica_version(conn, crm, object, version)
        return len(new)

    @staticmethod
    def _next_replica_version(conn: Connection, crm: str, object: str) -> int:
        current = conn.execute(select(replica_versions.c.version).where(
            replica_versions.c.crm == crm, replica_versions.c.object == object)).scalar()
        return int(current or 0) + 1

    @staticmethod
    def _set_replica_version(conn: Connection, crm: str, object: str, version: int) -> None:
        done = conn.execute(
            update(replica_versions).where(replica_versions.c.crm == crm, replica_versions.c.object == object).values(version=version)
        )
        if done.rowcount == 0:
            conn.execute(insert(replica_versions).values(crm=crm, object=object, version=version))

    @staticmethod
    def mark_deleted(conn: Connection, crm: str, object: str, ids: Iterable[str], modified_at: datetime) -> int:
        """Tombstone deleted/archived records and forget what was pushed to them or queued for retry.

        The `pushed` rows are cleared on purpose: if the record is restored in the CRM
        (Salesforce undelete, HubSpot restore) its fields hold whatever they held before,
        so the next run must compare against nothing and write every field again.
        Returns how many live records were tombstoned (an id already tombstoned is not counted again,
        and does not change the replica's version).
        """
        ids = list(ids)
        n = 0
        mod = utc_naive(modified_at)
        version = StateStore._next_replica_version(conn, crm, object)
        for chunk in chunks(ids):
            n += conn.execute(
                update(replica)
                .where(replica.c.crm == crm, replica.c.object == object, replica.c.record_id.in_(chunk),
                       replica.c.deleted == False)  # noqa: E712
                .values(deleted=True, data_json=None, modified_at=mod, row_version=version)
            ).rowcount
            conn.execute(delete(pushed).where(pushed.c.crm == crm, pushed.c.object == object, pushed.c.record_id.in_(chunk)))
            conn.execute(
                delete(failed_records).where(
                    failed_records.c.crm == crm, failed_records.c.object == object, failed_records.c.record_id.in_(chunk)
                )
            )
        if n:
            StateStore._set_replica_version(conn, crm, object, version)
        return n

    def replica_version(self, crm: str, object: str) -> int:
        """The version of one object's replica: it moves whenever a record's content changes (0: never stored)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(replica_versions.c.version).where(
                replica_versions.c.crm == crm, replica_versions.c.object == object)).scalar() or 0)

    def replica_changes(self, crm: str, object: str, after_version: int) -> tuple[list[str], list[str]]:
        """(JSON texts of the live records, ids of the tombstoned ones) changed after `after_version`."""
        live: list[str] = []
        gone: list[str] = []
        with self.engine.connect() as conn:
            for rid, text, deleted in conn.execute(
                select(replica.c.record_id, replica.c.data_json, replica.c.deleted).where(
                    replica.c.crm == crm, replica.c.object == object, replica.c.row_version > after_version)
            ):
                if deleted or text is None:
                    gone.append(rid)
                else:
                    live.append(text)
        return live, gone

    def replica_frame_cache(self, crm: str, object: str) -> tuple[int, bytes] | None:
        """(version, Parquet payload) of the cached live frame of one object, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(select(replica_frames.c.version, replica_frames.c.payload).where(
                replica_frames.c.crm == crm, replica_frames.c.object == object)).first()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def set_replica_frame_cache(self, crm: str, object: str, version: int, payload: bytes) -> None:
        with self.begin() as conn:
            conn.execute(delete(replica_frames).where(replica_frames.c.crm == crm, replica_frames.c.object == object))
            conn.execute(insert(replica_frames).values(crm=crm, object=object, version=version, payload=payload))

    def load_replica(self, crm: str, object: str) -> list[dict]:
        """The live (not deleted) records of one object as dicts."""
        with self.engine.connect() as conn:
            texts = conn.execute(
                select(replica.c.data_json).where(
                    replica.c.crm == crm, replica.c.object == object, replica.c.deleted == False  # noqa: E712
                ).order_by(replica.c.record_id)
            ).scalars().all()
        if not texts:
            return []
        return json.loads("[" + ",".join(texts) + "]")  # one parse instead of one per row

    def replica_data(self, crm: str, object: str, ids: list[str]) -> dict[str, dict]:
        """record_id -> stored data of the live records among `ids` (absent ids are left out)."""
        out: dict[str, dict] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(ids):
                for rid, text in conn.execute(
                    select(replica.c.record_id, replica.c.data_json).where(
                        replica.c.crm == crm, replica.c.object == object, replica.c.record_id.in_(chunk),
                        replica.c.deleted == False,  # noqa: E712
                    )
                ):
                    out[rid] = json.loads(text)
        return out

    # ------------------------------------------------------------------ own writes

    def record_own_writes(self, crm: str, object: str, stamps: dict[str, datetime]) -> None:
        """Remember the modification time the CRM gave each record we just wrote (replacing the previous one)."""
        if not stamps:
            return
        ids = list(stamps)
        with self.begin() as conn:
            for chunk in chunks(ids):
                conn.execute(delete(own_writes).where(own_writes.c.crm == crm, own_writes.c.object == object, own_writes.c.record_id.in_(chunk)))
                conn.execute(
                    insert(own_writes),
                    [{"crm": crm, "object": object, "record_id": i, "stamp": utc_naive(stamps[i])} for i in chunk],
                )

    def own_write_stamps(self, crm: str, object: str, since: datetime | None = None) -> dict[str, datetime]:
        """record_id -> modification time of our last write, for writes at or after `since` (aware UTC)."""
        query = select(own_writes.c.record_id, own_writes.c.stamp).where(own_writes.c.crm == crm, own_writes.c.object == object)
        if since is not None:
            query = query.where(own_writes.c.stamp >= utc_naive(since))
        with self.engine.connect() as conn:
            return {rid: utc_aware(stamp) for rid, stamp in conn.execute(query)}

    def live_ids(self, crm: str, object: str) -> set[str]:
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    select(replica.c.record_id).where(
                        replica.c.crm == crm, replica.c.object == object, replica.c.deleted == False  # noqa: E712
                    )
                ).scalars()
            )

    # ------------------------------------------------------------------ score history

    def score_history_frame(self) -> pd.DataFrame:
        """All score history as (account_id, scored_at, score, band), scored_at naive UTC."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(score_history.c.account_id, score_history.c.scored_at, score_history.c.score, score_history.c.band, score_history.c.run_id)
            ).all()
        # plain tuples: pandas probes each Row for named-tuple fields otherwise (4x slower; issue 14 scale)
        frame = pd.DataFrame([tuple(r) for r in rows], columns=["account_id", "scored_at", "score", "band", "run_id"])
        frame["scored_at"] = pd.to_datetime(frame["scored_at"])
        frame["score"] = pd.to_numeric(frame["score"], errors="coerce").astype("float64")
        return frame

    def add_score_history(self, rows: list[dict]) -> None:
        with self.begin() as conn:
            for chunk in chunks(rows):
                conn.execute(insert(score_history), chunk)

    # ------------------------------------------------------------------ CRM instances and usage (the report)

    def set_crm_instance(self, crm: str, info: dict, at: datetime) -> None:
        """Remember what `crm` said about itself (replaces the previous answer)."""
        with self.begin() as conn:
            conn.execute(delete(crm_instances).where(crm_instances.c.crm == crm))
            conn.execute(insert(crm_instances).values(crm=crm, info_json=dumps(info), updated_at=utc_naive(at)))

    def crm_instance_info(self) -> dict[str, dict]:
        """crm -> what it said about itself ({} for a CRM never asked)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(crm_instances.c.crm, crm_instances.c.info_json)).all()
        return {crm: json.loads(info) for crm, info in rows}

    def record_usage(self, rows: list[dict], day: Any, run_id: str) -> None:
        """Today's usage snapshot per account (`rows`: account_id plus usage_history's figures); a rerun replaces it."""
        if not rows:
            return
        with self.begin() as conn:
            # the day's first run (every scheduled day's) has nothing to replace: no delete per chunk
            again = conn.execute(select(usage_history.c.day).where(usage_history.c.day == day).limit(1)).first() is not None
            for chunk in chunks(rows):
                if again:
                    conn.execute(delete(usage_history).where(
                        usage_history.c.day == day, usage_history.c.account_id.in_([r["account_id"] for r in chunk])))
                conn.execute(insert(usage_history), [{**r, "day": day, "run_id": run_id} for r in chunk])

    # ------------------------------------------------------------------ forecast

    def forecast_scale(self) -> float | None:
        """The renormalisation scale the last write-back used (None: never renormalised here)."""
        with self.engine.connect() as conn:
            value = conn.execute(select(forecast_state.c.value).where(forecast_state.c.name == RENORMALISE_SCALE)).scalar()
        return None if value is None else float(value)

    def set_forecast_scale(self, value: float | None, run_id: str, at: datetime) -> None:
        """Remember this run's renormalisation scale (None forgets it: the forecast no longer renormalises)."""
        with self.begin() as conn:
            conn.execute(delete(forecast_state).where(forecast_state.c.name == RENORMALISE_SCALE))
            if value is not None:
                conn.execute(insert(forecast_state).values(name=RENORMALISE_SCALE, value=float(value), run_id=run_id,
                                                           updated_at=utc_naive(at)))

    # ------------------------------------------------------------------ the scoring memo (sync/score_memo.py)

    def memo_inputs(self, objects: Iterable[str]) -> dict[str, Any]:
        """What the last run's scores and writes depend on in this store, cheaply: the replica version of
        each scored object, the forecast scale, and how many values are confirmed, queued for retry or in
        running Bulk jobs (any change of those since the memo was saved means the run must plan again)."""
        objects = list(objects)
        with self.engine.connect() as conn:
            versions = {f"{crm}/{obj}": int(v) for crm, obj, v in conn.execute(
                select(replica_versions.c.crm, replica_versions.c.object, replica_versions.c.version)
                .where(replica_versions.c.object.in_(objects)))}
            counts = {
                "pushed": conn.execute(select(func.count()).select_from(pushed)).scalar() or 0,
                "failed": conn.execute(select(func.count()).select_from(failed_records)).scalar() or 0,
                "bulk_jobs": conn.execute(select(func.count()).select_from(bulk_jobs)).scalar() or 0,
            }
            scale = conn.execute(select(forecast_state.c.value).where(forecast_state.c.name == RENORMALISE_SCALE)).scalar()
        return {"replica": dict(sorted(versions.items())), **counts, "forecast_scale": None if scale is None else float(scale)}

    def score_memo(self) -> tuple[str, str | None, bytes] | None:
        """(fingerprint, run_id, payload) of the memo, if one was saved."""
        with self.engine.connect() as conn:
            row = conn.execute(select(score_memo.c.fingerprint, score_memo.c.run_id, score_memo.c.payload)
                               .where(score_memo.c.name == "last")).first()
        return None if row is None else (row[0], row[1], bytes(row[2]))

    def set_score_memo(self, fingerprint: str | None, run_id: str, payload: bytes | None, at: datetime) -> None:
        """Replace the memo (None forgets it)."""
        with self.begin() as conn:
            conn.execute(delete(score_memo).where(score_memo.c.name == "last"))
            if fingerprint is not None and payload is not None:
                conn.execute(insert(score_memo).values(name="last", fingerprint=fingerprint, run_id=run_id,
                                                       created_at=utc_naive(at), payload=payload))

    # ------------------------------------------------------------------ pushed / failed

    def pushed_values(self, crm: str, object: str) -> dict[str, dict[str, str]]:
        """record_id -> {field: value_json} of the last values the CRM confirmed."""
        out: dict[str, dict[str, str]] = {}
        with self.engine.connect() as conn:
            for rid, fld, value in conn.execute(
                select(pushed.c.record_id, pushed.c.field, pushed.c.value_json).where(pushed.c.crm == crm, pushed.c.object == object)
            ):
                out.setdefault(rid, {})[fld] = value
        return out

    def failed_queue(self, crm: str | None = None, object: str | None = None) -> dict[tuple[str, str, str], dict]:
        query = select(failed_records)
        if crm:
            query = query.where(failed_records.c.crm == crm)
        if object:
            query = query.where(failed_records.c.object == object)
        with self.engine.connect() as conn:
            return {(r["crm"], r["object"], r["record_id"]): dict(r) for r in conn.execute(query).mappings()}

    def record_confirmed(self, crm: str, object: str, confirmed: dict[str, dict[str, str]], run_id: str, at: datetime) -> None:
        """Store the values the CRM confirmed (record_id -> {field: value_json}) and clear their retry entries."""
        if not confirmed:
            return
        at_n = utc_naive(at)
        ids = list(confirmed)
        with self.begin() as conn:
            for chunk in chunks(ids):
                conn.execute(
                    delete(failed_records).where(
                        failed_records.c.crm == crm, failed_records.c.object == object, failed_records.c.record_id.in_(chunk)
                    )
                )
            keys = [(rid, f) for rid in ids for f in confirmed[rid]]
            # Replace exactly the confirmed (record, field) pairs. Records are grouped by the set of
            # fields they wrote so one statement deletes only pairs that are re-inserted below: a
            # record that wrote a subset of the fields keeps its other confirmed values (deleting
            # the union per chunk made those records look changed, and rewritten, on every run).
            by_fields: dict[tuple[str, ...], list[str]] = {}
            for rid in ids:
                by_fields.setdefault(tuple(sorted(confirmed[rid])), []).append(rid)
            for fields, group in by_fields.items():
                if not fields:
                    continue
                for chunk in chunks(group):
                    conn.execute(
                        delete(pushed).where(
                            pushed.c.crm == crm,
                            pushed.c.object == object,
                            pushed.c.record_id.in_(chunk),
                            pushed.c.field.in_(fields),
                        )
                    )
            rows = [
                {"crm": crm, "object": object, "record_id": rid, "field": f, "value_json": confirmed[rid][f], "pushed_at": at_n, "run_id": run_id}
                for rid, f in keys
            ]
            for chunk in chunks(rows):
                conn.execute(insert(pushed), chunk)

    def record_failed(self, crm: str, object: str, failures: list[dict], run_id: str, at: datetime) -> None:
        """Queue failed records for retry; `failures` items: record_id, fields (dict), error_code, message, retryable."""
        if not failures:
            return
        at_n = utc_naive(at)
        ids = [f["record_id"] for f in failures]
        with self.begin() as conn:
            earlier: dict[str, tuple[int, datetime | None]] = {}
            for chunk in chunks(ids):
                for rid, attempts, first in conn.execute(
                    select(failed_records.c.record_id, failed_records.c.attempts, failed_records.c.first_failed_at).where(
                        failed_records.c.crm == crm, failed_records.c.object == object, failed_records.c.record_id.in_(chunk)
                    )
                ):
                    earlier[rid] = (attempts or 0, first)
                conn.execute(
                    delete(failed_records).where(
                        failed_records.c.crm == crm, failed_records.c.object == object, failed_records.c.record_id.in_(chunk)
                    )
                )
            rows = []
            for f in failures:
                attempts, first = earlier.get(f["record_id"], (0, None))
                rows.append(
                    {
                        "crm": crm,
                        "object": object,
                        "record_id": f["record_id"],
                        "fields_json": dumps(f.get("fields") or {}),
                        "error_code": f.get("error_code"),
                        "message": f.get("message"),
                        "retryable": bool(f.get("retryable")),
                        "attempts": attempts + 1,
                        "first_failed_at": first or at_n,
                        "last_failed_at": at_n,
                        "run_id": run_id,
                    }
                )
            for chunk in chunks(rows):
                conn.execute(insert(failed_records), chunk)

    # ------------------------------------------------------------------ pending Bulk jobs

    def add_bulk_job(self, crm: str, object: str, job_id: str, records: dict[str, dict], run_id: str, at: datetime) -> None:
        """Remember a write-back Bulk job that was still running when the bounded wait ended."""
        with self.begin() as conn:
            conn.execute(delete(bulk_jobs).where(bulk_jobs.c.crm == crm, bulk_jobs.c.job_id == job_id))
            conn.execute(insert(bulk_jobs).values(crm=crm, job_id=job_id, object=object, records_json=dumps(records),
                                                  submitted_at=utc_naive(at), run_id=run_id))

    def bulk_jobs(self, crm: str | None = None) -> list[dict]:
        """Pending Bulk jobs (oldest first), `records` decoded (record_id -> fields, in job order)."""
        query = select(bulk_jobs).order_by(bulk_jobs.c.submitted_at, bulk_jobs.c.job_id)
        if crm:
            query = query.where(bulk_jobs.c.crm == crm)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        for r in rows:
            r["records"] = json.loads(r.pop("records_json") or "{}")
        return rows

    def drop_bulk_job(self, crm: str, job_id: str) -> None:
        with self.begin() as conn:
            conn.execute(delete(bulk_jobs).where(bulk_jobs.c.crm == crm, bulk_jobs.c.job_id == job_id))

    def pending_bulk_records(self, crm: str, object: str) -> set[str]:
        """Record ids a pending Bulk job still carries: the write-back must not send them again."""
        return {rid for job in self.bulk_jobs(crm) if job["object"] == object for rid in job["records"]}

    def count(self, table: str, **where: Any) -> int:
        t = self.tables[table]
        query = select(func.count()).select_from(t)
        for k, v in where.items():
            query = query.where(t.c[k] == v)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


#: this machine's name, as recorded with runs and leases
HOST = socket.gethostname()


def lock_holder(tag: str) -> str:
    """A lease holder naming this process: `host:pid:tag` (see `acquire_lock`)."""
    return f"{HOST}:{os.getpid()}:{tag}"


def process_alive(host: str | None, pid: int | None) -> bool | None:
    """True/False for a process of THIS host; None when it cannot be told (another host, no pid)."""
    if not host or pid is None or host != HOST:
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OSError, ValueError, OverflowError):
        return None
    return True


def holder_alive(holder: str | None) -> bool | None:
    """Whether the process named by a `host:pid:tag` holder is alive (None: cannot be told)."""
    parts = (holder or "").split(":", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return process_alive(parts[0], int(parts[1]))


def _db_reason(exc: OperationalError) -> str:
    """The database's own words for why it cannot be used, with the usual causes spelled out."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    low = text.lower()
    if "readonly" in low or "read-only" in low:
        return f"{text} (the file or its folder is read-only; choose a writable path)"
    if "unable to open" in low:
        return f"{text} (the path does not exist, is not a file, or is not writable)"
    if "not a database" in low:
        return f"{text} (that file is not a SQLite database; choose another path)"
    return text


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def open_store(url: str) -> StateStore:
    """A migrated store for `url`; `StateStoreError` (a ConfigurationError, exit 2) names what is wrong."""
    store = StateStore(url)
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store
