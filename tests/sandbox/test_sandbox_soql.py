"""The SOQL subset: parsing, literals and evaluation, checked against hand-written expectations."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from healthsync.connectors.sandbox.soql import SoqlError, compile_where, parse, sort_records

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
TYPES = {"Name": "string", "Amount": "double", "Closed": "boolean", "Stamp": "datetime", "Due": "date",
         "OwnerId": "reference"}
ROWS = [
    {"Name": "Acme", "Amount": 10.0, "Closed": False, "Stamp": "2026-11-25T08:00:00.000+0000", "Due": "2026-11-25",
     "OwnerId": "005Hs0000000001IAA"},
    {"Name": "globex", "Amount": None, "Closed": True, "Stamp": "2026-11-20T08:00:00.000+0000", "Due": "2026-12-01",
     "OwnerId": "005Hs0000000002IAA"},
    {"Name": "Initech", "Amount": 30.0, "Closed": False, "Stamp": "2025-01-01T00:00:00.000+0000", "Due": None,
     "OwnerId": None},
]


def resolve(name):
    key = next(k for k in TYPES if k.lower() == name.lower())
    return (lambda r: r.get(key)), TYPES[key]


def names(where: str) -> list[str]:
    q = parse(f"SELECT Name FROM Thing WHERE {where}", NOW)
    pred = compile_where(q.where, resolve)
    return [r["Name"] for r in ROWS if pred(r)]


@pytest.mark.parametrize("where,expected", [
    ("Name = 'ACME'", ["Acme"]),
    ("Name != 'acme'", ["globex", "Initech"]),
    ("Amount > 5 AND Amount <= 30", ["Acme", "Initech"]),
    ("Amount = null", ["globex"]),
    ("NOT (Amount = null)", ["Acme", "Initech"]),
    ("Name IN ('acme', 'INITECH')", ["Acme", "Initech"]),
    ("Name NOT IN ('acme')", ["globex", "Initech"]),
    ("Name LIKE 'g%'", ["globex"]),
    ("Name LIKE '_cme'", ["Acme"]),
    ("Closed = true OR Amount >= 30", ["globex", "Initech"]),
    ("(Closed = false AND Amount < 20) OR Name = 'globex'", ["Acme", "globex"]),
    ("Stamp > 2026-11-21T00:00:00Z", ["Acme"]),
    ("Stamp >= 2026-11-20T09:00:00+01:00", ["Acme", "globex"]),
    ("Stamp = TODAY", ["Acme"]),
    ("Stamp = LAST_N_DAYS:7", ["Acme", "globex"]),
    ("Due < 2026-12-01", ["Acme"]),
    ("Due = NEXT_N_DAYS:7", ["globex"]),
    ("OwnerId = '005Hs0000000002'", ["globex"]),
    ("Name = 'it\\'s'", []),
])
def test_where_clauses(where, expected):
    assert names(where) == expected


def test_select_order_limit_offset_and_count():
    q = parse("select Name, Amount from Thing order by Amount desc nulls last, Name limit 2 offset 1", NOW)
    assert q.fields == ["Name", "Amount"] and q.limit == 2 and q.offset == 1
    ordered = sort_records(ROWS, q.order, resolve)
    assert [r["Name"] for r in ordered] == ["Initech", "Acme", "globex"]
    asc = sort_records(ROWS, parse("SELECT Name FROM T ORDER BY Amount", NOW).order, resolve)
    assert [r["Name"] for r in asc] == ["globex", "Acme", "Initech"]  # SOQL: nulls first ascending
    assert parse("SELECT COUNT() FROM Thing", NOW).count_only


@pytest.mark.parametrize("bad,code", [
    ("SELECT FROM Thing", "MALFORMED_QUERY"),
    ("SELECT Name FROM Thing WHERE", "MALFORMED_QUERY"),
    ("SELECT Name FROM Thing WHERE (Name = 'a'", "MALFORMED_QUERY"),
    ("SELECT Name FROM Thing GROUP BY Name", "MALFORMED_QUERY"),
    ("SELECT Name FROM Thing WHERE Amount = 'ten'", "INVALID_FIELD"),
    ("SELECT Name FROM Thing WHERE Stamp > '2024-01-01'", "INVALID_FIELD"),
])
def test_errors_name_the_problem(bad, code):
    with pytest.raises(SoqlError) as err:
        q = parse(bad, NOW)
        compile_where(q.where, resolve)
    assert err.value.code == code
