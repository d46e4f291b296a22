"""The default health model (config/default.yaml) written as one DuckDB SQL query: the peer
`healthsync score --input` is measured against (issue 14, "an input layer at DuckDB's speed").

It reads the same canonical Parquet files and writes the same columns, in the same
order, as `healthsync score --input DIR --output FILE` with the default configuration and no
score history. `bench_offline_duckdb.py` checks the two outputs equal on every column before it
times anything, so this really is the same model.

What it implements, and where each number comes from:
- the measure table, weights and step points of seed 003_cec208348d92c0f6.txt ("Score measure
  configuration example"), as config/default.yaml lists them next to the warehouse usage
  metrics; canonical files carry no warehouse usage, so those are left out and their weight
  returns to their pillar (engine/usage.py), which gives back seed 003's weights;
- bands Red 0-40 / Yellow 41-70 / Green 71-100 (seed 003);
- segment thresholds: enterprise Green from 70, SMB Green from 80 (seed 001_9b7515619717186a.txt);
- lifecycle (seed 001): onboarding (tenure <= 90 days) Yellow 40 / Green 60, adoption
  (<= 365 days) and maturity standard; the renewal window (0-60 days before renewal) Yellow 65;
  minimums made non-decreasing, later overrides winning per band (engine/scoring.py);
- the CSM override (seed 003): red -1 tier, green +1 tier, at most one, with its reason;
- drivers: the three metrics costing (or, in the best band, adding) the most points, with the
  default texts of engine/drivers.py.

Floating-point sums follow numpy's order (pairwise over a row of metrics: ((w0+w1)+(w2+w3)) +
((w4+w5)+(w6+w7)), then the rest one by one) and rounding follows numpy's (half to even), so
the result is equal to the engine's bit for bit, not only approximately.

Run: .venv/bin/python tests/benchmarks/duckdb_peer.py INPUT_DIR OUTPUT.parquet [YYYY-MM-DD]
"""

from __future__ import annotations

import sys
from pathlib import Path

#: (name, dimension, weight, reads only warehouse columns) in config order, as config/default.yaml lists
#: them: seed 003's measure table at 0.8 of its weight in the product and engagement pillars, next
#: to the warehouse usage metrics of issue 15
METRICS = (
    ("login_frequency", "product", 0.12, False),
    ("feature_adoption", "product", 0.12, False),
    ("license_utilization", "product", 0.08, False),
    ("session_trend", "product", 0.04, True),
    ("product_engagement", "product", 0.04, True),
    ("qbr_attendance", "engagement", 0.08, False),
    ("email_response", "engagement", 0.064, False),
    ("exec_sponsor", "engagement", 0.056, False),
    ("mta_engagement", "engagement", 0.05, True),
    ("ticket_trend", "support", 0.10, False),
    ("escalations", "support", 0.05, False),
    ("payment_timeliness", "financial", 0.10, False),
    ("csm_sentiment", "qualitative", 0.10, False),
)
DIMENSIONS = ("product", "engagement", "support", "financial", "qualitative")


def _frame(directory: Path, name: str, options: str = "") -> str:
    path = directory / f"{name}.parquet"
    if not path.exists():
        raise SystemExit(f"{directory}: no {name}.parquet")
    return f"read_parquet('{path}'{options})"


def effective_weights() -> dict[str, float]:
    """Canonical files carry no warehouse usage: the warehouse-only metrics are left out and their
    weight goes to the other metrics of their dimension, in proportion (engine/usage.py), which
    gives back seed 003's weights. Computed with the engine's float operations, in its order."""
    weights = {name: w for name, _, w, _ in METRICS}
    for dim in DIMENSIONS:
        members = [m for m in METRICS if m[1] == dim]
        dropped = [m[0] for m in members if m[3]]
        if not dropped:
            continue
        kept = [m[0] for m in members if not m[3]]
        freed = sum_in_order([weights[n] for n in dropped])
        total = sum_in_order([weights[n] for n in kept])
        scale = (total + freed) / total
        for n in kept:
            weights[n] *= scale
        for n in dropped:
            weights[n] = 0.0
    return weights


def sum_in_order(values: list[float]) -> float:
    """numpy's sum of fewer than eight values: left to right."""
    out = values[0]
    for v in values[1:]:
        out += v
    return out


def _pairwise(terms: list[str]) -> str:
    """numpy's float64 sum along a contiguous row of 8 or more values: eight accumulators
    combined pairwise, then the rest one by one (pairwise_sum)."""
    assert len(terms) >= 8
    t = [f"({x})" for x in terms]
    head = f"((({t[0]} + {t[1]}) + ({t[2]} + {t[3]})) + (({t[4]} + {t[5]}) + ({t[6]} + {t[7]})))"
    for x in t[8:]:
        head = f"({head} + {x})"
    return head


def _round_score(x: str) -> str:
    """engine.scoring.round_score: one decimal, halves up, robust to float noise."""
    return f"floor(({x}) * 10.0 + 0.5 + 1e-7) / 10.0"


def _num_text(x: str, decimals: int | None = None) -> str:
    """engine.drivers._number_text: numpy rounding (half to even), Arrow's shortest float text."""
    if decimals is None:
        rounded = f"CASE WHEN abs({x}) < 10 THEN round_even(({x}) * 100.0, 0) / 100.0 ELSE round_even(({x}) * 10.0, 0) / 10.0 END"
    else:
        rounded = f"round_even({x}, 0)"
    return f"regexp_replace(CAST({rounded} AS VARCHAR), '\\.0$', '')"


def query(input_dir: Path, as_of: str) -> str:
    d = lambda v: f"CAST({v!r} AS DOUBLE)"  # noqa: E731 - exact doubles; DuckDB reads 0.15 as DECIMAL otherwise
    names = [m[0] for m in METRICS]
    weights = {name: d(w) for name, w in effective_weights().items()}
    present_w = [f"CASE WHEN m_{n} IS NULL THEN 0.0 ELSE {weights[n]} END" for n in names]
    contrib = [f"CASE WHEN m_{n} IS NULL THEN 0.0 ELSE m_{n} * {weights[n]} END" for n in names]
    warehouse = {m[0] for m in METRICS if m[3]}
    dims = []
    for dim in DIMENSIONS:
        members = [i for i, m in enumerate(METRICS) if m[1] == dim]
        num = " + ".join(contrib[i] for i in members)
        den = " + ".join(present_w[i] for i in members)
        dims.append(f"CASE WHEN ({den}) > 0 THEN {_round_score(f'({num}) / ({den})')} END AS {dim}_score")
    texts = {
        "login_frequency": f"'Logins ' || {_num_text('logins_per_user_week')} || '/user/week (target 5)'",
        "feature_adoption": f"'Feature adoption ' || {_num_text('feature_ratio * 100.0', 0)} || '% (target 100%)'",
        "license_utilization": f"'License utilisation ' || {_num_text('license_ratio * 100.0', 0)} || '% (target 100%)'",
        "qbr_attendance": f"'QBRs missed in a row: ' || {_num_text('qbrs_missed')}",
        "email_response": f"'Email response ' || {_num_text('email_response_hours')} || ' h (target 24)'",
        "exec_sponsor": "'Exec sponsor: ' || exec_sponsor_value",
        "ticket_trend": "'Ticket volume ' || ticket_trend_class",
        "escalations": f"{_num_text('escalations_90d')} || ' escalations in 90 days'",
        "payment_timeliness": f"'Invoice ' || {_num_text('days_payment_late')} || ' days late'",
        "csm_sentiment": "'CSM sentiment: ' || csm_value",
    }
    driver_rows = " UNION ALL ".join(
        f"SELECT rn, {i} AS idx, CASE WHEN best THEN {weights[n]} / conf * m_{n} ELSE {weights[n]} / conf * (100.0 - m_{n}) END AS effect, "
        f"{texts[n]} AS text FROM scored WHERE m_{n} IS NOT NULL"
        for i, n in enumerate(names) if n not in warehouse
    )
    band = lambda idx: f"CASE {idx} WHEN 0 THEN 'Red' WHEN 1 THEN 'Yellow' WHEN 2 THEN 'Green' ELSE 'Insufficient data' END"  # noqa: E731
    return f"""
WITH
acc AS (
    SELECT file_row_number AS rn, account_id, name, NULLIF(trim(segment), '') AS segment,
        CAST(logins_per_user_week AS DOUBLE) AS logins_per_user_week, features_used, features_available,
        active_users_30d, seats_purchased, qbrs_missed, CAST(email_response_hours AS DOUBLE) AS email_response_hours,
        lower(trim(exec_sponsor)) AS exec_sponsor, days_payment_late, lower(trim(csm_sentiment)) AS csm_sentiment,
        CAST(customer_since AS DATE) AS customer_since, CAST(renewal_date AS DATE) AS renewal_date
    FROM {_frame(input_dir, 'accounts', ", file_row_number = true")}
),
tick AS (
    SELECT account_id,
        count(*) FILTER (WHERE created_at >= TIMESTAMP '{as_of}' + INTERVAL 1 DAY - INTERVAL 30 DAY) AS n30,
        count(*) AS n90,
        count(*) FILTER (WHERE escalated) AS esc90
    FROM {_frame(input_dir, 'tickets')}
    WHERE created_at < TIMESTAMP '{as_of}' + INTERVAL 1 DAY
      AND created_at >= TIMESTAMP '{as_of}' + INTERVAL 1 DAY - INTERVAL 90 DAY
    GROUP BY account_id
),
feat AS (
    SELECT acc.*,
        CASE WHEN features_available > 0 THEN CAST(features_used AS DOUBLE) / features_available END AS feature_ratio,
        CASE WHEN seats_purchased > 0 THEN CAST(active_users_30d AS DOUBLE) / seats_purchased END AS license_ratio,
        CAST(coalesce(tick.n30, 0) AS DOUBLE) / 30 AS rate30,
        CAST(coalesce(tick.n90, 0) AS DOUBLE) / 90 AS rate90,
        CAST(coalesce(tick.esc90, 0) AS DOUBLE) AS escalations_90d,
        CASE WHEN DATE '{as_of}' - customer_since >= 0 THEN DATE '{as_of}' - customer_since END AS tenure_days,
        renewal_date - DATE '{as_of}' AS days_to_renewal
    FROM acc LEFT JOIN tick USING (account_id)
),
metric AS (
    SELECT *,
        CASE WHEN logins_per_user_week IS NULL THEN NULL WHEN logins_per_user_week >= 5 THEN 100.0
             WHEN logins_per_user_week >= 1 THEN 70.0 WHEN logins_per_user_week >= 0.23 THEN 40.0 ELSE 0.0 END AS m_login_frequency,
        least(greatest(feature_ratio * 100.0, 0.0), 100.0) AS m_feature_adoption,
        least(greatest(license_ratio * 100.0, 0.0), 100.0) AS m_license_utilization,
        CASE WHEN qbrs_missed IS NULL THEN NULL WHEN qbrs_missed >= 2 THEN 0.0 WHEN qbrs_missed >= 1 THEN 50.0 ELSE 100.0 END AS m_qbr_attendance,
        CASE WHEN email_response_hours IS NULL THEN NULL WHEN email_response_hours >= 72 THEN 20.0
             WHEN email_response_hours >= 24 THEN 60.0 ELSE 100.0 END AS m_email_response,
        CASE exec_sponsor WHEN 'active' THEN 100.0 WHEN 'partial' THEN 50.0 WHEN 'none' THEN 0.0 END AS m_exec_sponsor,
        CASE exec_sponsor WHEN 'active' THEN 'active' WHEN 'partial' THEN 'partial' WHEN 'none' THEN 'none' END AS exec_sponsor_value,
        CASE WHEN rate90 = 0 THEN (CASE WHEN rate30 > 0 THEN 'increasing' ELSE 'stable' END)
             WHEN rate30 / rate90 - 1.0 > 0.2 THEN 'increasing'
             WHEN rate30 / rate90 - 1.0 < -0.2 THEN 'declining' ELSE 'stable' END AS ticket_trend_class,
        CASE WHEN escalations_90d >= 2 THEN 20.0 WHEN escalations_90d >= 1 THEN 60.0 ELSE 100.0 END AS m_escalations,
        CASE WHEN days_payment_late IS NULL THEN NULL WHEN days_payment_late >= 30 THEN 10.0
             WHEN days_payment_late >= 1 THEN 50.0 ELSE 100.0 END AS m_payment_timeliness,
        CASE csm_sentiment WHEN 'green' THEN 100.0 WHEN 'yellow' THEN 50.0 WHEN 'red' THEN 0.0 END AS m_csm_sentiment,
        CASE csm_sentiment WHEN 'green' THEN 'green' WHEN 'yellow' THEN 'yellow' WHEN 'red' THEN 'red' END AS csm_value,
        CASE WHEN tenure_days IS NULL THEN NULL WHEN tenure_days <= 90 THEN 'onboarding'
             WHEN tenure_days <= 365 THEN 'adoption' ELSE 'maturity' END AS lifecycle_stage,
        coalesce(days_to_renewal >= 0 AND days_to_renewal <= 60, false) AS in_renewal_window
    FROM feat
),
trended AS (
    SELECT *, CASE ticket_trend_class WHEN 'declining' THEN 100.0 WHEN 'stable' THEN 70.0 ELSE 30.0 END AS m_ticket_trend,
        {", ".join(f"CAST(NULL AS DOUBLE) AS m_{n}" for n in names if n in warehouse)}
    FROM metric
),
composite AS (
    SELECT *,
        {_pairwise(present_w)} AS conf,
        {_pairwise(contrib)} AS contrib_sum
    FROM trended
),
banded AS (
    SELECT *,
        CASE WHEN conf > 0 THEN {_round_score('least(greatest(contrib_sum / conf, 0.0), 100.0)')} END AS score,
        -- base bands (seed 003) -> segment (seed 001) -> lifecycle stage -> renewal window, later wins
        CAST(0 AS DOUBLE) AS min_red,
        CASE WHEN in_renewal_window THEN 65.0 WHEN lifecycle_stage = 'onboarding' THEN 40.0 ELSE 41.0 END AS min_yellow_raw,
        CASE WHEN lifecycle_stage = 'onboarding' THEN 60.0 WHEN lower(segment) = 'enterprise' THEN 70.0
             WHEN lower(segment) = 'smb' THEN 80.0 ELSE 71.0 END AS min_green_raw
    FROM composite
),
indexed AS (
    SELECT *,
        CASE WHEN score IS NULL OR conf < 0.5 - 1e-12 THEN 3
             ELSE greatest(least(CAST(score >= min_red AS INT) + CAST(score >= greatest(min_red, min_yellow_raw) AS INT)
                  + CAST(score >= greatest(min_red, min_yellow_raw, min_green_raw) AS INT) - 1, 2), 0) END AS raw_idx
    FROM banded
),
overridden AS (
    SELECT *,
        CASE WHEN raw_idx = 3 THEN 3
             ELSE greatest(least(raw_idx + CASE csm_value WHEN 'red' THEN -1 WHEN 'green' THEN 1 ELSE 0 END, 2), 0) END AS idx
    FROM indexed
),
scored AS (
    SELECT *, idx = 2 AS best FROM overridden
),
drivers AS (
    SELECT rn, string_agg(text, '; ' ORDER BY place) AS drivers
    FROM (
        SELECT rn, text, row_number() OVER (PARTITION BY rn ORDER BY effect DESC, idx) AS place
        FROM ({driver_rows}) WHERE effect > 1e-9
    ) WHERE place <= 3
    GROUP BY rn
)
SELECT account_id, name, segment, score, {band('idx')} AS band, {band('raw_idx')} AS raw_band,
    round_even(conf * 10000.0, 0) / 10000.0 AS confidence,
    idx <> raw_idx AS override,
    CASE WHEN idx <> raw_idx THEN 'CSM sentiment ' || csm_value || ': ' || {band('raw_idx')} || ' -> ' || {band('idx')} END AS override_reason,
    'weighted' AS method, lifecycle_stage, coalesce(drivers.drivers, '') AS drivers,
    {", ".join(dims)},
    {", ".join(f"m_{n}" for n in names)},
    in_renewal_window,
    CAST('NaN' AS DOUBLE) AS delta_30d, CAST('NaN' AS DOUBLE) AS delta_90d,
    CAST(NULL AS VARCHAR) AS momentum, CAST(0 AS BIGINT) AS days_in_band,
    TIMESTAMP '{as_of}' AS as_of
FROM scored LEFT JOIN drivers USING (rn)
ORDER BY rn
"""


def score_with_duckdb(input_dir: str | Path, output: str | Path, as_of: str) -> None:
    import duckdb

    con = duckdb.connect()
    con.sql(f"COPY ({query(Path(input_dir), as_of)}) TO '{output}' (FORMAT parquet)")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__.split("Run: ")[1])
    score_with_duckdb(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else "2026-01-01")
