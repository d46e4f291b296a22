"""`healthsync score --input` against the same default model in DuckDB SQL (issue 14, item 5).

Both run as whole processes over the same canonical Parquet files (300,000 accounts by
default, from `healthsync demo-data --format parquet`): Python start, imports, reading,
validation (ours), scoring and writing the scored file. First the two outputs are checked
equal on every column, value for value (duckdb_peer.py says how the SQL mirrors the
engine); then each command runs ROUNDS times, alternating, and the medians of wall time and
the peaks of resident memory are compared. Target: ours no slower than the peer.

Run (nice, on a machine as quiet as you can get; the load is printed with the figures):

    nice -n 10 .venv/bin/python tests/benchmarks/bench_offline_duckdb.py [ACCOUNTS] [ROUNDS]

or through pytest with the other benchmarks (`make bench`). BENCH_OFFLINE_DIR keeps the
generated files between runs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).with_name("healthsync")
AS_OF = "2026-01-01"  # the demo generator's as_of


def load() -> str:
    """The 1, 5 and 15 minute load averages (`uptime`)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def generate(directory: Path, accounts: int) -> None:
    if (directory / "accounts.parquet").exists() and len(pd.read_parquet(directory / "accounts.parquet", columns=["account_id"])) == accounts:
        return
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN), "demo-data", "--out", str(directory), "--accounts", str(accounts), "--format", "parquet"], check=True)


def ours(directory: Path, output: Path) -> list[str]:
    return [str(BIN), "score", "--input", str(directory), "--output", str(output), "--as-of", AS_OF, "--json"]


def peer(directory: Path, output: Path) -> list[str]:
    return [sys.executable, str(HERE / "duckdb_peer.py"), str(directory), str(output), AS_OF]


#: runs one command and prints its wall time, CPU time and peak memory. A small process of its
#: own: a child's peak resident memory (ru_maxrss) starts from its parent's at fork, so
#: measuring from this process (pandas loaded, outputs read) would report our size, not theirs.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"wall": time.perf_counter() - start, "cpu": usage.ru_utime + usage.ru_stime,
                  "peak_mb": usage.ru_maxrss / 1024, "code": os.waitstatus_to_exitcode(status), "err": err.decode()[-2000:]}))
"""


def measure(command: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak resident MB) of one whole process."""
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True, env=env, check=True)
    r = json.loads(done.stdout)
    if r["code"] != 0:
        raise RuntimeError(f"{command[0]} failed: {r['err']}")
    return r["wall"], r["cpu"], r["peak_mb"]


def differences(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """Every column of `a` and `b` compared value for value (floats exactly, NaN == NaN)."""
    out = []
    if list(a.columns) != list(b.columns):
        out.append(f"columns differ: {list(a.columns)} vs {list(b.columns)}")
    if len(a) != len(b):
        return out + [f"rows differ: {len(a)} vs {len(b)}"]
    for column in a.columns:
        if column not in b.columns:
            continue
        x, y = a[column], b[column]
        if pd.api.types.is_float_dtype(x.dtype) or pd.api.types.is_float_dtype(y.dtype):
            xv = x.to_numpy(dtype="float64", na_value=np.nan)
            yv = y.to_numpy(dtype="float64", na_value=np.nan)
            bad = ~((xv == yv) | (np.isnan(xv) & np.isnan(yv)))
        elif pd.api.types.is_datetime64_any_dtype(x.dtype):
            bad = (pd.to_datetime(x).to_numpy() != pd.to_datetime(y).to_numpy())
        else:
            xo = x.astype(object).where(x.notna(), None).to_numpy()
            yo = y.astype(object).where(y.notna(), None).to_numpy()
            bad = np.array([p != q for p, q in zip(xo, yo)], dtype=bool)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            out.append(f"{column}: {int(bad.sum())} rows differ, e.g. {a['account_id'].iloc[i]}: {x.iloc[i]!r} vs {y.iloc[i]!r}")
    return out


def run(accounts: int = 300_000, rounds: int = 5) -> dict:
    base = Path(os.environ.get("BENCH_OFFLINE_DIR") or tempfile.mkdtemp(prefix="bench-offline-"))
    data = base / f"portfolio-{accounts}"
    generate(data, accounts)
    out_ours, out_peer = base / "scored-healthsync.parquet", base / "scored-duckdb.parquet"

    measure(ours(data, out_ours))  # warm the page cache for both, and check the outputs agree
    measure(peer(data, out_peer))
    diff = differences(pd.read_parquet(out_ours), pd.read_parquet(out_peer))
    assert not diff, "the DuckDB peer and healthsync disagree:\n" + "\n".join(diff)

    load_before = load()
    results: dict[str, list[tuple[float, float, float]]] = {"healthsync": [], "duckdb": []}
    for i in range(rounds):
        pair = [("healthsync", ours(data, out_ours)), ("duckdb", peer(data, out_peer))]
        for name, command in (pair if i % 2 == 0 else pair[::-1]):
            results[name].append(measure(command))
    load_after = load()
    summary = {
        name: {
            "wall_s": statistics.median(r[0] for r in runs),
            "cpu_s": statistics.median(r[1] for r in runs),
            "peak_mb": max(r[2] for r in runs),
            "walls": [round(r[0], 2) for r in runs],
        }
        for name, runs in results.items()
    }
    summary["load"] = {"before": load_before, "after": load_after}
    summary["accounts"] = accounts
    print(f"\nscore --input vs DuckDB SQL, {accounts:,} accounts, {rounds} rounds each, load before {load_before} after {load_after}")
    for name in ("healthsync", "duckdb"):
        s = summary[name]
        print(f"  {name:10s} median {s['wall_s']:.2f} s wall ({s['cpu_s']:.2f} s CPU), peak {s['peak_mb']:.0f} MB; runs {s['walls']}")
    print("  outputs equal on every column:", not diff)
    return summary


def test_score_input_is_no_slower_than_the_duckdb_peer():
    accounts = int(os.environ.get("BENCH_OFFLINE_ACCOUNTS", "300000"))
    summary = run(accounts, int(os.environ.get("BENCH_OFFLINE_ROUNDS", "5")))
    assert summary["healthsync"]["wall_s"] <= summary["duckdb"]["wall_s"], summary


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 300_000, int(sys.argv[2]) if len(sys.argv) > 2 else 5)
