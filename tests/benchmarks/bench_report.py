"""Benchmark: the portfolio report for 10,000 accounts must be generated in < 10 s and weigh < 5 MB.

Not run by CI (`make bench`). The store is built first through the StateStore
API (10,000 accounts, ~50,000 opportunities, 8 scored runs = 80,000 score
history rows, tasks, escalations, drift, a backtest); only `write_report` is
timed. Prints the figures.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))

from healthsync.config.settings import load_settings  # noqa: E402
from report_store import NOW, build_store  # noqa: E402
from healthsync.sync.report import write_report  # noqa: E402

ACCOUNTS = 10_000
RUNS = 8
SECONDS = 10.0
MAX_BYTES = 5 * 1024 * 1024


def test_report_for_10k_accounts_is_fast_and_small(tmp_path):
    started = time.perf_counter()
    store = build_store(f"sqlite:///{tmp_path}/state.db", n_accounts=ACCOUNTS, runs=RUNS)
    built = time.perf_counter() - started
    settings = load_settings(environ={})
    started, cpu = time.perf_counter(), time.process_time()
    info = write_report(store, settings, tmp_path / "report.html", now=NOW)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    # CPU time too: on a shared 2-core machine the wall time mostly measures the neighbours
    print(
        f"\nreport: {info.accounts} accounts, {RUNS} runs, {info.charts} charts, "
        f"{info.size_bytes / 1e6:.2f} MB in {elapsed:.2f} s wall, {cpu:.2f} s CPU (store built in {built:.1f} s)"
    )
    assert info.accounts == ACCOUNTS
    assert info.size_bytes < MAX_BYTES, f"{info.size_bytes} bytes"
    assert elapsed < SECONDS, f"{elapsed:.2f} s"
