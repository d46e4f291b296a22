"""`score --input` reads only what the model reads (issue 14, item 5) and scores exactly as a full read.

`engine.inputs.model_inputs` names the frames and columns a model reads; the reader reads
only those. For models that use every rule type, custom columns, ticket priorities and
opportunity amounts, scoring the projected read must equal scoring the full read, column
for column, or the projection dropped something the engine needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from healthsync.config.settings import load_settings
from healthsync.connectors.demo_data import generate_portfolio, write_portfolio
from healthsync.connectors.files import read_frames
from healthsync.engine.inputs import model_inputs
from healthsync.engine.pipeline import score_portfolio

BIN = Path(sys.executable).with_name("healthsync")
AS_OF = "2026-01-01"

CUSTOM_MODEL = """
model:
  method: {method}
  percentile_cohort: segment
  csm_override: {{enabled: {csm}}}
  metrics:
    - {{name: logins, label: Logins, dimension: product, weight: 0.1, rule: {{type: linear, column: logins_per_user_week, zero_at: 0, full_at: 5}}}}
    - {{name: seats, label: Seats, dimension: product, weight: 0.1, rule: {{type: ratio, numerator: active_users_30d, denominator: seats_purchased, zero_at: 0, full_at: 1}}}}
    - {{name: adoption, label: Adoption, dimension: product, weight: 0.1, rule: {{type: steps, column: feature_adoption, steps: [{{min: 0.5, points: 100}}], else_points: 20}}}}
    - {{name: usage, label: Usage, dimension: product, weight: 0.1, rule: {{type: identity, column: product_usage_score}}}}
    - {{name: champion, label: Champion, dimension: engagement, weight: 0.1, rule: {{type: boolean, column: has_champion, true_points: 100, false_points: 0}}}}
    - {{name: sponsor, label: Sponsor, dimension: engagement, weight: 0.1, rule: {{type: category, column: exec_sponsor, points: {{active: 100, partial: 50, none: 0}}}}}}
    - {{name: trend, label: Tickets, dimension: support, weight: 0.1, rule: {{type: trend, short: tickets_rate_30d, long: tickets_rate_90d, tolerance: 0.2, points: {{declining: 100, stable: 70, increasing: 30}}}}}}
    - {{name: p1, label: P1s, dimension: support, weight: 0.1, rule: {{type: steps, column: open_p1_90d, steps: [{{min: 1, points: 0}}], else_points: 100}}}}
    - {{name: pipeline, label: Pipeline, dimension: financial, weight: 0.1, rule: {{type: linear, column: open_pipeline_amount, zero_at: 0, full_at: 200000}}}}
    - {{name: renewal, label: Renewal, dimension: financial, weight: 0.1, rule: {{type: linear, column: days_to_renewal, zero_at: 0, full_at: 365}}}}
"""


@pytest.fixture(scope="module")
def portfolio_dirs(tmp_path_factory):
    p = generate_portfolio(1500, seed=4)
    rng = np.random.default_rng(1)
    p.accounts["product_usage_score"] = rng.uniform(0, 100, len(p.accounts)).round(1)
    p.accounts["has_champion"] = rng.random(len(p.accounts)) < 0.5
    dirs = {}
    for fmt in ("csv", "parquet"):
        d = tmp_path_factory.mktemp(fmt)
        write_portfolio(p, d, fmt=fmt)
        dirs[fmt] = d
    return dirs


def settings_for(tmp_path: Path, variant: str):
    if variant == "default":
        return load_settings(None)
    method, csm = variant.split("-")
    path = tmp_path / f"{variant}.yaml"
    path.write_text(CUSTOM_MODEL.format(method=method, csm=csm))
    return load_settings(path)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("variant", ["default", "weighted-true", "points-false", "percentile-true"])
def test_given_a_model_when_only_its_columns_are_read_then_the_scores_equal_a_full_read(portfolio_dirs, tmp_path, fmt, variant):
    settings = settings_for(tmp_path, variant)
    needs = model_inputs(settings.model)
    full, _ = read_frames(portfolio_dirs[fmt])
    projected, report = read_frames(portfolio_dirs[fmt], needs)
    assert not report.problems
    assert set(projected) == set(needs)
    for name, frame in projected.items():
        assert set(frame.columns) <= set(needs[name]), (name, sorted(set(frame.columns) - set(needs[name])))

    def scores(frames):
        return score_portfolio(
            frames["accounts"], frames.get("tickets"), frames.get("opportunities"), settings.model, settings.forecast, as_of=AS_OF
        ).scores

    pd.testing.assert_frame_equal(scores(projected), scores(full))


def test_given_the_default_model_then_opportunities_and_unused_columns_are_not_read():
    needs = model_inputs(load_settings(None).model)
    assert set(needs) == {"accounts", "tickets"}
    assert needs["tickets"] == {"ticket_id", "account_id", "created_at", "escalated"}
    assert {"arr", "nps", "owner_email"}.isdisjoint(needs["accounts"])


def test_given_the_default_model_when_scored_offline_then_only_accounts_and_tickets_files_are_read(portfolio_dirs, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env["HEALTHSYNC__STATE__URL"] = f"sqlite:///{tmp_path}/state.db"
    # an unreadable opportunities file proves it is never opened
    src = tmp_path / "in"
    src.mkdir()
    for name in ("accounts", "tickets"):
        (src / f"{name}.parquet").write_bytes((portfolio_dirs["parquet"] / f"{name}.parquet").read_bytes())
    (src / "opportunities.parquet").write_bytes(b"not parquet at all")
    r = subprocess.run(
        [str(BIN), "score", "--input", str(src), "--output", str(tmp_path / "o.parquet"), "--as-of", AS_OF, "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["files_read"] == ["accounts", "tickets"] and result["accounts_scored"] == 1500
