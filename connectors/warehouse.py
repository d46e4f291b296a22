"""The warehouse source: product usage aggregated where it lives, one row per account back.

Why pushdown: a customer's events outgrow one machine long before their account list does,
and they already pay for a warehouse engine. So every trailing-window feature is one SQL
statement that runs inside the warehouse, filtered on the timestamp column so partitions,
zone maps and indexes prune (only the window is read, never the whole history), grouped by
the product account key. Raw events never cross the wire; what comes back is one row per
account key with a handful of numbers.

How the SQL is written: SQLAlchemy Core expressions, compiled by each engine's own dialect
(duckdb-engine, psycopg, snowflake-sqlalchemy, sqlalchemy-bigquery). SQLAlchemy is already the
state store's library, the `url` contract is a SQLAlchemy URL, and those dialects are the
vendors' maintained ones; ibis would add a second expression language, its own backends
(not SQLAlchemy URLs) and sqlglot for the same few aggregates. Only one construct differs
between engines, seconds since the epoch of a timestamp column (`epoch_seconds` below, one
`@compiles` rule per dialect); the rest (COUNT DISTINCT over CASE, SUM, EXP, window
functions) is standard SQL every supported engine accepts as is. Every number is cast to
DOUBLE so integer division never truncates (PostgreSQL) and no engine returns decimals.

Features of the events relation (as of the run's time `end`; windows are [end - N days, end)):

    active_users_30d      distinct users with an event in the last 30 days
    sessions_30d/_90d     sum of `value` over login events (value 1 per row by default) in the last
                          30 and 90 days: logins per user per week, and the session trend (seed 002:
                          "declining logins signal risk")
    features_used         distinct non-login features used in the last 30 days (adoption breadth)
    decay_engagement      sum of value x exp(-lambda x age_days) over `lookback_days`
                          (seed 000_caaf87bd3b38802c.txt, "Churn Prediction Using Health Scores":
                          lambda 0.05)
    events_window         rows read in the window; last_event_at, the newest event

and of the touchpoints relation (seed 000, "Translating MTA Credits into Health Score Signals"):
per account, the touchpoints of the lookback window ordered in time get credits under each model
(first, last, linear, time-decay, position-based 40/20/40), each credit is decayed by its age
(exp(-lambda x age_days), lambda 0.1 as in the seed's pseudocode) and weighted by its channel,
and the decayed credits are summed: `mta_<model>` per model, `mta_engagement` for the chosen one.

Errors (connectors/base.py): a URL whose dialect is not installed, a database that does not
exist, bad credentials, a missing table or column or an invalid query are `ConfigurationError`
naming the `sources.warehouse...` key (exit 2); a warehouse that cannot be reached or times out
is `WarehouseUnreachableError` (exit 3, the CRMs' own stages go on). Messages never carry the
URL's password.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from healthsync.config.settings import WarehouseSource, redact_url, url_password
from healthsync.connectors.base import ConfigurationError, StopRunError

log = logging.getLogger(__name__)

KEY = "sources.warehouse"
SHORT_DAYS = 30
LONG_DAYS = 90  # the session trend compares the last 30 days with the last 90
DAY_SECONDS = 86400.0
#: MTA position-based split (seed 000: "Emphasizes first/last (40/40/20 split)")
POSITION_FIRST_LAST, POSITION_MIDDLE = 0.4, 0.2
MTA_MODELS = ("first", "last", "linear", "time_decay", "position_based")
#: which extra (installable) package provides a dialect, for the error message
DIALECT_EXTRAS = {"duckdb": "duckdb-engine (installed with healthsync)", "postgresql": "healthsync[postgres]",
                  "snowflake": "healthsync[snowflake]", "bigquery": "healthsync[bigquery]"}


class WarehouseUnreachableError(StopRunError):
    """The warehouse did not answer (network, timeout, server down): this run has no usage; CRMs go on."""


# ----------------------------------------------------------------------------- dialect-aware SQL


class epoch_seconds(FunctionElement):
    """Seconds since 1970-01-01 UTC of a timestamp (or date) column, as DOUBLE, fractions kept."""

    type = sa.Double()
    inherit_cache = True
    name = "epoch_seconds"


@compiles(epoch_seconds)
def _epoch_standard(element, compiler, **kw):  # PostgreSQL, DuckDB (and others that follow PostgreSQL)
    (arg,) = element.clauses
    return f"CAST(EXTRACT(EPOCH FROM CAST({compiler.process(arg, **kw)} AS TIMESTAMP)) AS DOUBLE PRECISION)"


@compiles(epoch_seconds, "duckdb")
def _epoch_duckdb(element, compiler, **kw):
    (arg,) = element.clauses
    return f"CAST(EXTRACT(EPOCH FROM CAST({compiler.process(arg, **kw)} AS TIMESTAMP)) AS DOUBLE)"


@compiles(epoch_seconds, "snowflake")
def _epoch_snowflake(element, compiler, **kw):
    (arg,) = element.clauses
    return f"(DATE_PART(EPOCH_MICROSECOND, CAST({compiler.process(arg, **kw)} AS TIMESTAMP_NTZ)) / 1000000.0)"


@compiles(epoch_seconds, "bigquery")
def _epoch_bigquery(element, compiler, **kw):
    (arg,) = element.clauses
    return f"(UNIX_MICROS(TIMESTAMP({compiler.process(arg, **kw)})) / 1000000.0)"


def _double(value: float) -> ColumnElement:
    return sa.literal(float(value), sa.Double())


def _relation(spec, name: str, columns: list[str] = ()) -> sa.FromClause:
    """The table (`schema.table` allowed) or the query as a FROM clause, with `columns` addressable in `.c`."""
    cols = [sa.column(c) for c in dict.fromkeys(columns)]
    if spec.query is not None:
        return sa.text(spec.query).columns(*cols).subquery(name)
    schema, _, table = spec.table.rpartition(".")
    return sa.table(table, *cols, schema=schema or None)


# ----------------------------------------------------------------------------- results


@dataclass
class UsagePull:
    """What one pull brought back: per product account key, the features; and facts about the window."""

    features: pd.DataFrame  # account_key + feature columns, one row per key seen in the window
    as_of: datetime
    rows_in_window: int = 0
    rows_without_key: int = 0
    newest_event_at: datetime | None = None
    touchpoints_in_window: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def freshness_hours(self) -> float | None:
        if self.newest_event_at is None:
            return None
        return max(0.0, (self.as_of - self.newest_event_at).total_seconds() / 3600.0)


# ----------------------------------------------------------------------------- the source


class WarehouseConnector:
    """Reads usage features from the configured warehouse; see the module docstring."""

    name = "warehouse"

    def __init__(self, config: WarehouseSource):
        if not config.url or config.events is None:
            raise ConfigurationError(f"{KEY}.url: no warehouse configured")
        self.config = config
        self._password = url_password(config.url)
        self.shown_url = redact_url(config.url)
        self.engine = self._engine()

    # ------------------------------------------------------------------ connection

    def _scrub(self, text: str) -> str:
        text = str(text)
        if self._password:
            text = text.replace(self._password, "***")
        return text.splitlines()[0][:300] if text else text

    def _engine(self) -> sa.Engine:
        url = sa.engine.make_url(self.config.url)
        backend = url.get_backend_name()
        kwargs: dict[str, Any] = {"poolclass": sa.pool.NullPool}
        connect_args: dict[str, Any] = {}
        if backend == "duckdb":
            database = url.database
            if database and database != ":memory:":
                if not Path(database).expanduser().exists():
                    raise ConfigurationError(f"{KEY}.url: DuckDB file {database} does not exist")
                # read-only: never creates a file by accident, never takes the writer's lock
                connect_args["read_only"] = True
        elif backend == "postgresql":
            timeout = max(1, int(self.config.timeout_s))
            connect_args["connect_timeout"] = timeout
            # timestamps compared and converted in UTC; a statement never runs longer than the timeout x 20
            connect_args["options"] = f"-c timezone=UTC -c statement_timeout={int(self.config.timeout_s * 20_000)}"
        try:
            engine = sa.create_engine(url, connect_args=connect_args, **kwargs)
        except NoSuchModuleError:
            extra = DIALECT_EXTRAS.get(backend, "the SQLAlchemy dialect package for it")
            raise ConfigurationError(
                f"{KEY}.url: no SQLAlchemy dialect for {url.drivername!r} is installed (install {extra})"
            ) from None
        except (ImportError, SQLAlchemyError, ValueError) as exc:
            raise ConfigurationError(f"{KEY}.url: cannot use this URL ({self.shown_url}): {self._scrub(exc)}") from None
        return engine

    def _connect(self) -> sa.Connection:
        """A connection, with connection failures sorted into configuration (2) or unreachable (3)."""
        try:
            conn = self.engine.connect()
        except DBAPIError as exc:
            raise self._connect_error(exc) from None
        except SQLAlchemyError as exc:
            raise WarehouseUnreachableError(f"warehouse {self.shown_url} unreachable: {self._scrub(exc)}") from None
        if self.engine.dialect.name == "duckdb":
            try:
                conn.exec_driver_sql("SET TimeZone = 'UTC'")
            except DBAPIError:  # without the ICU extension there are no time zones to convert
                conn.rollback()
        return conn

    def _connect_error(self, exc: DBAPIError) -> Exception:
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "diag", None), "sqlstate", None) or ""
        message = self._scrub(orig if orig is not None else exc)
        if sqlstate.startswith("28"):  # invalid_authorization_specification / invalid_password
            return ConfigurationError(f"{KEY}.url: the warehouse refused the credentials: {message} "
                                      "(set HEALTHSYNC__WAREHOUSE__URL)")
        if sqlstate == "3D000":  # invalid_catalog_name: the database does not exist
            return ConfigurationError(f"{KEY}.url: {message}")
        if self.engine.dialect.name == "duckdb":  # a local file: anything wrong with it is configuration
            return ConfigurationError(f"{KEY}.url: cannot open the DuckDB file: {message}")
        return WarehouseUnreachableError(f"warehouse {self.shown_url} unreachable: {message}")

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ checking the relations

    def _probe(self, conn: sa.Connection, spec, key: str, wanted: dict[str, str]) -> None:
        """Zero rows from the relation: it exists (or the query compiles) and has every configured column."""
        relation = _relation(spec, "probe")
        where = f"{key}.query" if spec.query is not None else f"{key}.table"
        try:
            result = conn.execute(sa.select(sa.text("*")).select_from(relation).limit(0))
            columns = list(result.keys())
            result.close()
        except DBAPIError as exc:
            conn.rollback()
            if exc.connection_invalidated:
                raise WarehouseUnreachableError(f"warehouse {self.shown_url} unreachable: {self._scrub(exc.orig)}") from None
            what = f"table {spec.table!r}" if spec.query is None else "the query"
            raise ConfigurationError(f"{where}: {what} cannot be read: {self._scrub(exc.orig)}") from None
        lowered = {c.lower() for c in columns}
        for option, column in wanted.items():
            if column is not None and column not in columns and column.lower() not in lowered:
                raise ConfigurationError(
                    f"{key}.{option}: column {column!r} not found in "
                    + (f"table {spec.table!r}" if spec.query is None else "the query's result")
                    + f" (columns: {', '.join(columns[:30])})"
                )

    def check(self) -> None:
        """Connect and probe the configured relations; raises ConfigurationError / WarehouseUnreachableError."""
        with self._connect() as conn:
            self._check(conn)

    def _check(self, conn: sa.Connection) -> None:
        ev = self.config.events
        self._probe(conn, ev, f"{KEY}.events", {"account_key": ev.account_key, "timestamp": ev.timestamp,
                                                "user_id": ev.user_id, "feature": ev.feature, "value": ev.value})
        tp = self.config.touchpoints
        if tp is not None:
            self._probe(conn, tp, f"{KEY}.touchpoints", {"account_key": tp.account_key, "timestamp": tp.timestamp,
                                                         "channel": tp.channel})

    # ------------------------------------------------------------------ the statements

    def scan_days(self) -> int:
        """The events window read by one pull: the longest feature window."""
        return max(LONG_DAYS, self.config.lookback_days)

    def events_statement(self, end: datetime) -> sa.Select:
        """One row per account key of the events window (see the module docstring)."""
        cfg, ev = self.config, self.config.events
        end_n = _naive_utc(end)
        rel = _relation(ev, "events_source", [c for c in (ev.account_key, ev.timestamp, ev.value, ev.user_id, ev.feature) if c])
        ts = rel.c[ev.timestamp]
        columns = [
            rel.c[ev.account_key].label("account_key"),
            ts.label("ts"),
            ((_double(end_n.replace(tzinfo=timezone.utc).timestamp()) - epoch_seconds(ts)) / _double(DAY_SECONDS)).label("age_days"),
            (sa.cast(rel.c[ev.value], sa.Double()) if ev.value else _double(1.0)).label("value"),
        ]
        if ev.user_id:
            columns.append(rel.c[ev.user_id].label("user_id"))
        if ev.feature:
            columns.append(rel.c[ev.feature].label("feature"))
        start = end_n - timedelta(days=self.scan_days())
        # the filter is on the raw column against constants: partitions, zone maps and indexes prune
        window = sa.select(*columns).where(ts >= start, ts < end_n).subquery("w")
        w = window.c
        recent = w.ts >= end_n - timedelta(days=SHORT_DAYS)
        in_long = w.ts >= end_n - timedelta(days=LONG_DAYS)
        is_login = (w.feature == ev.login_event) if ev.feature else sa.true()
        out = [
            w.account_key,
            sa.cast(sa.func.count(), sa.Double()).label("events_window"),
            sa.func.max(w.ts).label("last_event_at"),
            sa.cast(sa.func.sum(sa.case((sa.and_(recent, is_login), w.value))), sa.Double()).label("sessions_30d"),
            sa.cast(sa.func.sum(sa.case((sa.and_(in_long, is_login), w.value))), sa.Double()).label("sessions_90d"),
        ]
        decay = w.value * sa.func.exp(_double(-cfg.decay_lambda) * w.age_days)
        if cfg.lookback_days < self.scan_days():
            decay = sa.case((w.ts >= end_n - timedelta(days=cfg.lookback_days), decay))
        out.append(sa.cast(sa.func.sum(decay), sa.Double()).label("decay_engagement"))
        if ev.user_id:
            out.append(sa.cast(sa.func.count(sa.distinct(sa.case((recent, w.user_id)))), sa.Double()).label("active_users_30d"))
        if ev.feature:
            used = sa.case((sa.and_(recent, w.feature != ev.login_event), w.feature))
            out.append(sa.cast(sa.func.count(sa.distinct(used)), sa.Double()).label("features_used"))
        return sa.select(*out).group_by(w.account_key)

    def touchpoints_statement(self, end: datetime) -> sa.Select | None:
        """One row per account key: decayed MTA credits summed, per model (see the module docstring)."""
        tp = self.config.touchpoints
        if tp is None:
            return None
        end_n = _naive_utc(end)
        rel = _relation(tp, "touchpoints_source", [c for c in (tp.account_key, tp.timestamp, tp.channel) if c])
        ts = rel.c[tp.timestamp]
        columns = [
            rel.c[tp.account_key].label("account_key"),
            ((_double(end_n.replace(tzinfo=timezone.utc).timestamp()) - epoch_seconds(ts)) / _double(DAY_SECONDS)).label("age_days"),
            (rel.c[tp.channel] if tp.channel else sa.null()).label("channel"),
        ]
        t = sa.select(*columns).where(ts >= end_n - timedelta(days=tp.lookback_days), ts < end_n).subquery("t")
        decay = sa.func.exp(_double(-tp.decay_lambda) * t.c.age_days)
        journey = dict(partition_by=t.c.account_key)
        ranked = sa.select(
            t.c.account_key,
            t.c.channel,
            decay.label("decay"),
            sa.cast(sa.func.row_number().over(**journey, order_by=(t.c.age_days.desc(), t.c.channel.asc().nulls_last())),
                    sa.Double()).label("position"),
            sa.cast(sa.func.count().over(**journey), sa.Double()).label("n"),
            sa.func.sum(decay).over(**journey).label("decay_total"),
        ).subquery("r")
        r = ranked.c
        one, zero = _double(1.0), _double(0.0)
        credits = {
            "first": sa.case((r.position == one, one), else_=zero),
            "last": sa.case((r.position == r.n, one), else_=zero),
            "linear": one / r.n,
            # time-decay model: the journey's credit shared in proportion to each touch's recency
            "time_decay": r.decay / r.decay_total,
            "position_based": sa.case(
                (r.n == one, one),
                (r.n == _double(2.0), _double(0.5)),
                (sa.or_(r.position == one, r.position == r.n), _double(POSITION_FIRST_LAST)),
                else_=_double(POSITION_MIDDLE) / sa.func.nullif(r.n - _double(2.0), zero),
            ),
        }
        if tp.channel and tp.channel_weights:
            weight = sa.case({k: _double(v) for k, v in tp.channel_weights.items()}, value=r.channel, else_=one)
        else:
            weight = one
        out = [r.account_key, sa.cast(sa.func.count(), sa.Double()).label("touchpoints_window")]
        for model, credit in credits.items():
            out.append(sa.cast(sa.func.sum(credit * weight * r.decay), sa.Double()).label(f"mta_{model}"))
        return sa.select(*out).group_by(r.account_key)

    # ------------------------------------------------------------------ running them

    def usage_statement(self, end: datetime) -> sa.Select:
        """Events and touchpoints aggregates joined per account key in the warehouse: one result, one round trip."""
        events = self.events_statement(end).subquery("e")
        touch_stmt = self.touchpoints_statement(end)
        if touch_stmt is None:
            return sa.select(*events.c)
        touches = touch_stmt.subquery("t")
        key = sa.func.coalesce(events.c.account_key, touches.c.account_key).label("account_key")
        return sa.select(
            key, *[c for c in events.c if c.name != "account_key"], *[c for c in touches.c if c.name != "account_key"]
        ).select_from(events.join(touches, events.c.account_key == touches.c.account_key, full=True))

    def pull(self, as_of: datetime | None = None) -> UsagePull:
        """Run the aggregations in the warehouse; one row per account key back."""
        end = as_of or datetime.now(timezone.utc)
        clock = time.monotonic()
        with self._connect() as conn:
            self._check(conn)
            where = f"{KEY}.touchpoints" if self.config.touchpoints is not None else f"{KEY}.events"
            frame = self._fetch(conn, self.usage_statement(end), where)
        no_key = frame["account_key"].isna().to_numpy()
        pull = UsagePull(features=frame.loc[~no_key].reset_index(drop=True), as_of=end)
        events_window = frame["events_window"].fillna(0)
        pull.rows_in_window = int(events_window.sum())
        pull.rows_without_key = int(events_window[no_key].sum())
        if frame["last_event_at"].notna().any():
            newest = pd.Timestamp(frame["last_event_at"].max())
            newest = newest.tz_localize("UTC") if newest.tzinfo is None else newest.tz_convert("UTC")
            pull.newest_event_at = newest.to_pydatetime()
        if self.config.touchpoints is not None:
            pull.touchpoints_in_window = int(pull.features["touchpoints_window"].fillna(0).sum())
            pull.features["mta_engagement"] = pull.features[f"mta_{self.config.touchpoints.model}"]
        if pull.features["account_key"].dtype == object:
            pull.features["account_key"] = pull.features["account_key"].astype(str)
        pull.seconds = time.monotonic() - clock
        return pull

    def _fetch(self, conn: sa.Connection, statement: sa.Select, where: str) -> pd.DataFrame:
        try:
            if self.engine.dialect.name == "duckdb":
                return self._fetch_duckdb(conn, statement)
            result = conn.execute(statement)
            frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        except DBAPIError as exc:
            if exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError):
                raise WarehouseUnreachableError(f"warehouse {self.shown_url}: {self._scrub(exc.orig)}") from None
            raise ConfigurationError(f"{where}: the aggregation failed in the warehouse: {self._scrub(exc.orig)}") from None
        return _typed(frame)

    @staticmethod
    def _fetch_duckdb(conn: sa.Connection, statement: sa.Select) -> pd.DataFrame:
        """DuckDB hands its result over column by column (a million rows without a Python object per value)."""
        compiled = statement.compile(dialect=conn.dialect)
        params = compiled.params
        if compiled.positional:
            params = tuple(params[name] for name in compiled.positiontup)
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(str(compiled), params)
            fetch = getattr(cursor, "fetchdf", None) or cursor.df  # the name of DuckDB's columnar fetch varies by version
            frame = fetch()
        finally:
            cursor.close()
        return _typed(frame)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for column in frame.columns:
        if column in ("account_key", "last_event_at"):
            continue
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    if "last_event_at" in frame.columns:
        frame["last_event_at"] = pd.to_datetime(frame["last_event_at"], errors="coerce", utc=True)
    return frame


def _naive_utc(value: datetime) -> datetime:
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value
