"""Playbook trigger evaluation and episode planning at scale (not run by CI; timings only here).

    .venv/bin/python tests/benchmarks/bench_playbooks.py [accounts]
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from healthsync.config.settings import load_settings
from healthsync.playbooks.definitions import load_playbooks
from healthsync.playbooks.triggers import holds, prepare_frame
from healthsync.sync.playbooks_job import run_playbooks
from healthsync.sync.state import open_store


def scores(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = rng.uniform(0, 100, n).round(1)
    return pd.DataFrame(
        {
            "account_id": [f"sf:001{i:015d}" for i in range(n)],
            "crm": "salesforce",
            "name": [f"Account {i}" for i in range(n)],
            "segment": rng.choice(["enterprise", "mid_market", "smb"], n),
            "arr": rng.uniform(1e3, 5e5, n),
            "renewal_date": pd.Timestamp("2026-11-25") + pd.to_timedelta(rng.integers(0, 365, n), unit="D"),
            "owner_email": rng.choice([f"csm{i}@example.com" for i in range(50)], n),
            "score": score,
            "band": np.where(score <= 40, "Red", np.where(score <= 70, "Yellow", "Green")),
            "delta_30d": rng.normal(0, 8, n).round(1),
            "momentum": "stable",
            "drivers": "Logins down to 0.4/user/week",
        }
    )


def main(n: int) -> None:
    settings = load_settings(environ={})
    pset = load_playbooks(settings)
    frame = scores(n)
    now = datetime(2026, 11, 25, 6, tzinfo=timezone.utc)
    t = time.perf_counter()
    prepared = prepare_frame(frame, now)
    hits = {p.name: int(holds(p.condition, prepared).sum()) for p in pset.playbooks}
    print(f"triggers: {n} accounts x {len(pset.playbooks)} playbooks in {time.perf_counter() - t:.2f} s -> {hits}")
    with tempfile.TemporaryDirectory() as d:
        store = open_store(f"sqlite:///{d}/state.db")
        t = time.perf_counter()
        result = run_playbooks(store, settings, frame, {}, now, "bench", dry_run=True)
        print(f"episode planning (dry run, empty state): {result.episodes_opened} episodes in {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
