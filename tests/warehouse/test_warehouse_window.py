"""Only the trailing window is read: the timestamp filter reaches the scan, so zone maps and indexes prune.

Asserted from each engine's own account of the query it ran (EXPLAIN ANALYZE), not from timings.
"""

from __future__ import annotations

import json
from datetime import timezone

import sqlalchemy as sa

from warehouse_db import END
from healthsync.config.settings import WarehouseSource
from healthsync.connectors.warehouse import WarehouseConnector

# 1.2 million events, one every 72 s, ending at END: about 2.7 years of history, 108,000 in the last 90 days
ROWS, STEP_S = 1_200_000, 72
WINDOW_ROWS = 90 * 86400 // STEP_S


def _explain(connector: WarehouseConnector, prefix: str) -> str:
    statement = connector.events_statement(END.replace(tzinfo=timezone.utc))
    with connector.engine.connect() as conn:
        compiled = statement.compile(dialect=conn.dialect)
        params = compiled.params
        if compiled.positional:
            params = tuple(params[name] for name in compiled.positiontup)
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute(prefix + str(compiled), params)
        rows = cursor.fetchall()
        cursor.close()
    return rows


def _config(url: str) -> WarehouseSource:
    return WarehouseSource.model_validate(
        {"url": url, "events": {"table": "usage_events", "user_id": "user_id", "feature": "feature", "value": "value"}}
    )


def _nodes(node, key):
    if isinstance(node, dict):
        yield node
        for child in node.get(key, []):
            yield from _nodes(child, key)


def test_given_years_of_events_in_duckdb_when_features_are_pulled_then_only_the_window_row_groups_are_read(duckdb_url):
    engine = sa.create_engine(duckdb_url)
    with engine.begin() as conn:  # loaded in time order, as event tables are
        conn.exec_driver_sql(
            f"CREATE TABLE usage_events AS SELECT 'a' || (i % 100) AS account_key, "
            f"TIMESTAMP '{END:%Y-%m-%d %H:%M:%S}' - to_seconds(({ROWS} - i) * {STEP_S}) AS occurred_at, "
            "'u' || (i % 13) AS user_id, CASE WHEN i % 3 = 0 THEN 'login' ELSE 'f' || (i % 7) END AS feature, "
            f"1.0::DOUBLE AS value FROM range({ROWS}) t(i) ORDER BY occurred_at"
        )
    engine.dispose()
    connector = WarehouseConnector(_config(duckdb_url))
    try:
        plan = json.loads(_explain(connector, "EXPLAIN (ANALYZE, FORMAT json) ")[0][1])
        pulled = connector.pull(END.replace(tzinfo=timezone.utc))
    finally:
        connector.close()
    scans = [n for op in plan["operator"] for n in _nodes(op, "children") if n.get("type") == "TABLE_SCAN"]
    assert len(scans) == 1
    scan = scans[0]
    assert "occurred_at >=" in scan["extra_info"]["Filters"]  # the window filter is inside the scan
    assert scan.get("intermediate_rows", scan.get("operator_cardinality")) == WINDOW_ROWS  # rows the scan hands on
    rows_read = scan.get("rows_scanned", scan.get("operator_rows_scanned"))
    assert rows_read is not None and rows_read < ROWS / 4  # whole row groups before the window were skipped
    assert scan["row_groups_scanned"] < scan["total_row_groups_to_scan"]
    assert pulled.rows_in_window == WINDOW_ROWS


def test_given_an_indexed_event_table_in_postgresql_when_features_are_pulled_then_the_index_bounds_the_scan(
        fresh_postgres_url):
    engine = sa.create_engine(fresh_postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE usage_events AS SELECT 'a' || mod(i, 100) AS account_key, "
            f"TIMESTAMP '{END:%Y-%m-%d %H:%M:%S}' - make_interval(secs => ({ROWS} - i) * {STEP_S}) AS occurred_at, "
            "'u' || mod(i, 13) AS user_id, CASE WHEN mod(i, 3) = 0 THEN 'login' ELSE 'f' || mod(i, 7) END AS feature, "
            f"1.0::float8 AS value FROM generate_series(0, {ROWS} - 1) AS i"
        )
        conn.exec_driver_sql("CREATE INDEX usage_events_occurred_at ON usage_events (occurred_at)")
        conn.exec_driver_sql("ANALYZE usage_events")
    engine.dispose()
    connector = WarehouseConnector(_config(fresh_postgres_url))
    try:
        plan = _explain(connector, "EXPLAIN (ANALYZE, FORMAT JSON) ")[0][0][0]["Plan"]
        pulled = connector.pull(END.replace(tzinfo=timezone.utc))
    finally:
        connector.close()
    nodes = list(_nodes(plan, "Plans"))
    on_table = [n for n in nodes if n.get("Relation Name") == "usage_events"]
    assert on_table and not any(n["Node Type"] == "Seq Scan" for n in on_table)
    index_nodes = [n for n in nodes if n.get("Index Name") == "usage_events_occurred_at"]
    assert index_nodes and "occurred_at >=" in index_nodes[0]["Index Cond"]
    assert sum(n["Actual Rows"] for n in on_table) == WINDOW_ROWS  # rows fetched from the table: the window only
    assert pulled.rows_in_window == WINDOW_ROWS
