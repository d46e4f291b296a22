"""Engine benchmark: 1M accounts, ~5M opportunities, ~10M tickets; features, score, trends, drivers, forecast.

Run: .venv/bin/python -m pytest -q -s tests/benchmarks/bench_engine.py -o python_files='bench_*.py'

Targets (issue 5, 2-core machine): under 20 s wall for the engine, under 4 GB peak
resident memory while it runs (input frames included), and at least 50x the
throughput of a plain per-account Python loop of the same model, measured in the
same run on 10,000 accounts. The loop is checked against the engine (same scores
and bands), so it really is the same model.

A score history of one snapshot 30 and 90 days back per account is fed to the
trends step so deltas, momentum and days-in-band do real work.
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
from datetime import timedelta

import numpy as np
import pandas as pd

from healthsync.config.model import BooleanRule, CategoryRule, IdentityRule, LinearRule, RatioRule, StepsRule, TrendRule
from healthsync.config.settings import load_settings
from healthsync.connectors.demo_data import generate_portfolio
from healthsync.engine.drivers import explain
from healthsync.engine.features import build_features
from healthsync.engine.forecast import adjust_opportunities
from healthsync.engine.scoring import HealthScorer
from healthsync.engine.trends import compute_trends

N_ACCOUNTS = int(os.environ.get("BENCH_ENGINE_ACCOUNTS", "1000000"))
N_LOOP = 10_000
WALL_TARGET_S = 20.0
MEMORY_TARGET_GB = 4.0
SPEEDUP_TARGET = 50.0


class PeakRss:
    """Samples this process's resident memory every 20 ms (VmHWM cannot be reset between phases)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.02)

    def __enter__(self):
        self.start = self._rss()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, self._rss())


def run_engine(accounts, tickets, opportunities, history, model, forecast, as_of):
    timings = {}
    t = time.perf_counter()
    features = build_features(accounts, tickets, as_of=as_of, model=model)
    timings["features"] = time.perf_counter() - t
    t = time.perf_counter()
    scores = HealthScorer(model).score(features)
    timings["score"] = time.perf_counter() - t
    t = time.perf_counter()
    trends = compute_trends(scores, history, as_of=as_of, stable_within=model.trend_stable_within)
    for col in ("delta_30d", "delta_90d", "momentum", "days_in_band"):
        scores[col] = trends[col].array
    timings["trends"] = time.perf_counter() - t
    t = time.perf_counter()
    scores["drivers"] = explain(scores, features, model).array
    timings["drivers"] = time.perf_counter() - t
    t = time.perf_counter()
    adjusted = adjust_opportunities(opportunities, scores, forecast, insufficient_band=model.insufficient_band)
    timings["forecast"] = time.perf_counter() - t
    return scores, adjusted, timings


# ----------------------------------------------------------------------------- the plain loop


def _py_rule(rule, f):
    def num(col):
        v = f.get(col)
        return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else float(v)

    if isinstance(rule, StepsRule):
        v = num(rule.column)
        if v is None:
            return None
        for step in rule.steps:
            if v >= step.min:
                return step.points
        return rule.else_points
    if isinstance(rule, (LinearRule, RatioRule)):
        if isinstance(rule, RatioRule):
            n, d = num(rule.numerator), num(rule.denominator)
            if n is None or d is None or d <= 0:
                return None
            v = n / d
        else:
            v = num(rule.column)
            if v is None:
                return None
        return min(100.0, max(0.0, (v - rule.zero_at) / (rule.full_at - rule.zero_at) * 100.0))
    if isinstance(rule, CategoryRule):
        v = f.get(rule.column)
        if v is None or v is pd.NA:
            return None
        return rule.points.get(str(v).strip().lower())
    if isinstance(rule, BooleanRule):
        v = f.get(rule.column)
        if v is None or v is pd.NA:
            return None
        return rule.true_points if v else rule.false_points
    if isinstance(rule, IdentityRule):
        v = num(rule.column)
        return None if v is None else min(100.0, max(0.0, v))
    if isinstance(rule, TrendRule):
        s, lg = num(rule.short), num(rule.long)
        if s is None or lg is None:
            return None
        change = (math.inf if s > 0 else 0.0) if lg == 0 else s / lg - 1
        key = "increasing" if change > rule.tolerance else "declining" if change < -rule.tolerance else "stable"
        return rule.points[key]
    raise TypeError(rule)


def plain_loop(accounts, tickets, opportunities, model, forecast, as_of):
    """The same model, one account at a time, the way a script would do it."""
    end = pd.Timestamp(as_of) + pd.Timedelta(days=1)
    s30, s90 = end - pd.Timedelta(days=30), end - pd.Timedelta(days=90)
    by_account: dict[str, list] = {}
    for t in tickets.to_dict("records"):
        by_account.setdefault(t["account_id"], []).append(t)
    opps_by_account: dict[str, list] = {}
    for o in opportunities.to_dict("records"):
        opps_by_account.setdefault(o["account_id"], []).append(o)
    names = [b.name for b in model.bands]
    out = []
    for acc in accounts.to_dict("records"):
        f = dict(acc)
        n30 = n90 = esc = 0
        for t in by_account.get(acc["account_id"], []):
            c = t["created_at"]
            if c is pd.NaT or c is None or c >= end or c < s90:
                continue
            n90 += 1
            n30 += c >= s30
            esc += bool(t["escalated"]) if t["escalated"] is not pd.NA else 0
        f.update(tickets_rate_30d=n30 / 30, tickets_rate_90d=n90 / 90, escalations_90d=esc)
        tenure = (end - pd.Timedelta(days=1) - acc["customer_since"]).days if acc["customer_since"] is not pd.NaT else None
        to_renewal = (acc["renewal_date"] - (end - pd.Timedelta(days=1))).days if acc["renewal_date"] is not pd.NaT else None
        seg = str(acc["segment"]).lower() if acc["segment"] is not pd.NA else ""
        weights = model.weights(seg if seg in model.segments else None)
        total = conf = 0.0
        metric_scores = {}
        for m in model.metrics:
            v = _py_rule(m.rule, f)
            metric_scores[m.name] = v
            if v is not None:
                total += weights[m.name] * v
                conf += weights[m.name]
        score = math.floor(total / conf * 10 + 0.5 + 1e-7) / 10 if conf > 0 else None
        mins = {b.name: b.min for b in model.bands}
        if seg in model.segments:
            mins.update(model.segments[seg].thresholds)
        stage = None
        if tenure is not None and tenure >= 0:
            for st in model.lifecycle.stages:
                if st.max_tenure_days is None or tenure <= st.max_tenure_days:
                    stage = st
                    break
        if stage is not None:
            mins.update(stage.thresholds)
        rw = model.lifecycle.renewal_window
        if rw is not None and to_renewal is not None and 0 <= to_renewal <= rw.days:
            mins.update(rw.thresholds)
        running, ordered = 0.0, []
        for b in names:
            running = max(running, mins[b])
            ordered.append(running)
        if score is None or conf < model.confidence_floor:
            band = model.insufficient_band
        else:
            idx = max(i for i, lo in enumerate(ordered) if score >= lo)
            sentiment = acc.get(model.csm_override.column)
            if model.csm_override.enabled and sentiment is not None and sentiment is not pd.NA:
                shift = model.csm_override.shifts.get(str(sentiment).lower(), 0)
                idx = min(len(names) - 1, max(0, idx + max(-1, min(1, shift))))
            band = names[idx]
        lost = []
        for m in model.metrics:
            v = metric_scores[m.name]
            if v is not None:
                effect = weights[m.name] / conf * (v if band == names[-1] else 100 - v)
                if effect > 1e-9:
                    lost.append((-effect, m.label, m.name))
        lost.sort(key=lambda x: x[0])
        drivers = "; ".join(f"{label} {metric_scores[name]:g}" for _, label, name in lost[:3])[:255]
        for o in opps_by_account.get(acc["account_id"], []):
            if o["is_closed"] is True or score is None:
                continue
            mult = 1.0
            for bm in forecast.band_multipliers:
                if score >= bm.min:
                    mult = bm.multiplier
            factor = min(1 + forecast.max_swing, max(1 - forecast.max_swing, mult))
            o["adjusted_probability"] = min(1.0, max(0.0, o["probability"] * factor))
        out.append((acc["account_id"], score, band, drivers))
    return pd.DataFrame(out, columns=["account_id", "score", "band", "drivers"])


# ----------------------------------------------------------------------------- the benchmark


def _history(accounts: pd.DataFrame, as_of, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(accounts)
    ids = accounts["account_id"]
    frames = []
    for days in (90, 30):
        score = np.round(rng.uniform(0, 100, n), 1)
        band = np.where(score >= 71, "Green", np.where(score >= 41, "Yellow", "Red"))
        frames.append(pd.DataFrame({"account_id": ids.array, "scored_at": pd.Timestamp(as_of) - pd.Timedelta(days=days),
                                    "score": score, "band": pd.array(band, dtype="string")}))
    return pd.concat(frames, ignore_index=True)


def test_engine_benchmark():
    settings = load_settings()
    model, forecast = settings.model, settings.forecast

    t = time.perf_counter()
    portfolio = generate_portfolio(N_ACCOUNTS, seed=5, opportunities_per_account=5, tickets_per_account=10)
    accounts, tickets, opps, as_of = portfolio.accounts, portfolio.tickets, portfolio.opportunities, portfolio.as_of
    history = _history(accounts, as_of)
    del portfolio
    gc.collect()
    generated = time.perf_counter() - t
    print(f"\ngenerated {len(accounts):,} accounts, {len(opps):,} opportunities, {len(tickets):,} tickets "
          f"and {len(history):,} history rows in {generated:.1f} s")

    with PeakRss() as mem:
        t, cpu = time.perf_counter(), os.times()
        scores, adjusted, timings = run_engine(accounts, tickets, opps, history, model, forecast, as_of)
        wall = time.perf_counter() - t
        cpu_s = sum(os.times()[:2]) - sum(cpu[:2])
    peak_gb = mem.peak / 1e9
    print("engine: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()) + f"; total {wall:.2f} s wall, "
          f"{cpu_s:.2f} s CPU; machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"memory: {mem.start / 1e9:.2f} GB resident before (inputs), peak {peak_gb:.2f} GB while scoring")
    assert len(scores) == len(accounts) and len(adjusted) == len(opps)
    assert scores["score"].between(0, 100).all() or scores["score"].isna().any()

    # the plain loop on the first N_LOOP accounts, same run
    sample_ids = accounts["account_id"].iloc[:N_LOOP]
    s_acc = accounts.iloc[:N_LOOP]
    s_tk = tickets[tickets["account_id"].isin(sample_ids)]
    s_op = opps[opps["account_id"].isin(sample_ids)]
    t, cpu = time.perf_counter(), os.times()
    looped = plain_loop(s_acc, s_tk, s_op, model, forecast, as_of)
    loop_s = time.perf_counter() - t
    loop_cpu_s = sum(os.times()[:2]) - sum(cpu[:2])
    per_account_loop = loop_s / N_LOOP
    per_account_engine = wall / len(accounts)
    speedup = per_account_loop / per_account_engine
    # the 2 cores are shared with other jobs, so wall-clock ratios swing with the load of the moment;
    # CPU time (all threads) is printed as the steadier comparison; the target is on wall time
    cpu_speedup = (loop_cpu_s / N_LOOP) / (cpu_s / len(accounts))
    print(f"plain loop: {loop_s:.2f} s wall / {loop_cpu_s:.2f} s CPU for {N_LOOP:,} accounts "
          f"({per_account_loop * 1e6:.0f} us/account) vs engine {per_account_engine * 1e6:.2f} us/account -> "
          f"{speedup:.0f}x wall, {cpu_speedup:.0f}x CPU; load average {os.getloadavg()[0]:.1f}")

    engine_sample = scores.iloc[:N_LOOP]
    same_score = np.isclose(engine_sample["score"].to_numpy(dtype=float), looped["score"].to_numpy(dtype=float),
                            atol=0.1, equal_nan=True)
    same_band = engine_sample["band"].to_numpy(dtype=object) == looped["band"].to_numpy(dtype=object)
    print(f"loop agrees with engine: scores {same_score.mean():.4%}, bands {same_band.mean():.4%}")
    assert same_score.mean() > 0.999 and same_band.mean() > 0.999

    assert wall < WALL_TARGET_S, f"engine took {wall:.1f} s"
    assert peak_gb < MEMORY_TARGET_GB, f"peak memory {peak_gb:.2f} GB"
    assert speedup >= SPEEDUP_TARGET, f"only {speedup:.0f}x the plain loop (wall; {cpu_speedup:.0f}x CPU)"
