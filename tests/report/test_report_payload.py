"""The data the page receives (payload.py): the score history survives its compact encoding, and its size is bounded."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from healthsync.sync.report.data import nearest
from healthsync.sync.report.payload import HISTORY_POINTS, decode, history_grid


def _payload(path) -> dict:
    match = re.search(r'<script type="application/octet-stream" id="report-data">([^<]+)</script>', path.read_text())
    return decode(match.group(1))


def test_given_a_year_of_10000_accounts_then_recent_days_stay_daily_and_older_ones_weekly():
    grid, daily_from = history_grid(0, 364, 10_000)
    assert len(grid) * 10_000 <= HISTORY_POINTS
    daily = [d for d in grid if d >= daily_from]
    assert daily == list(range(daily_from, 365)) and len(daily) >= 60
    older = [d for d in grid if d < daily_from]
    assert older and all(b - a == 7 for a, b in zip(older, older[1:])) and daily_from - older[-1] == 7
    assert grid[0] <= 6  # the whole year is covered


def test_given_a_year_of_1500_accounts_then_every_day_is_a_point():
    assert history_grid(0, 364, 1_500) == (list(range(365)), 0)


def test_given_the_generated_report_then_each_accounts_daily_scores_decode_exactly(generated_report):
    store, info = generated_report
    payload = _payload(info.path)
    grid = payload["meta"]["history"]["grid"]
    sh = store.tables["score_history"]
    with store.engine.connect() as conn:
        rows = conn.execute(sh.select().with_only_columns(sh.c.account_id, sh.c.scored_at, sh.c.score, sh.c.band)).all()
    history = pd.DataFrame(rows, columns=["account_id", "scored_at", "score", "band"])
    history["day"] = (pd.to_datetime(history["scored_at"]).dt.normalize() - pd.Timestamp("1970-01-01")).dt.days
    ids = payload["accounts"]["id"]
    bands = [b["name"] for b in payload["meta"]["bands"]]
    for position in (0, 17, len(ids) - 1):
        encoded = payload["history"]["series"][position]
        values, previous = [], None
        for v in encoded:
            if v is None:
                values.append(None)
                continue
            previous = v if previous is None else previous + v
            values.append(previous / 10)
        mine = history[history["account_id"] == ids[position]].sort_values("day")
        assert [d for d, v in zip(grid, values) if v is not None] == list(mine["day"])
        assert np.allclose([v for v in values if v is not None], mine["score"].round(1))
        changes = [[int(d), bands.index(b)] for d, b, prev in zip(mine["day"], mine["band"], [None] + list(mine["band"])[:-1]) if b != prev]
        assert payload["history"]["bands"][position] == changes


def test_given_a_typo_then_the_nearest_known_values_are_offered():
    known = ["ana.lopez@example.com", "Ana Lopez", "hugo.lopez@example.com", "Omar Lopez"]
    assert nearest("ana.lopes@example.com", known)[0] == "ana.lopez@example.com"
    assert nearest("zzzz", known) == []
