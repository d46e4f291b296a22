"""Fixtures of the warehouse-source tests (helpers in warehouse_db.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def duckdb_url(tmp_path) -> str:
    return f"duckdb:///{tmp_path / 'warehouse.duckdb'}"


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse_url(request, tmp_path) -> str:
    """An empty warehouse database: a DuckDB file, then a database on the suite's PostgreSQL server."""
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    return request.getfixturevalue("fresh_postgres_url")
