"""Demo data generator speed and memory (issue 2: 1M accounts, 5M opportunities, 10M tickets in about a minute).

Each scenario runs in a fresh interpreter so its peak RSS is its own. Prints the
figures; asserts only that the volumes are what was asked for (CI asserts
behaviour, never timings). Run:

    .venv/bin/python -m pytest -q -s tests/benchmarks/bench_generator.py -o python_files='bench_*.py'
"""

import json
import subprocess
import sys
import textwrap

import pytest

SCENARIO = textwrap.dedent(
    """
    import json, resource, sys, tempfile, time
    from healthsync.connectors.demo_data import generate_history, generate_portfolio, write_history, write_portfolio

    kind, n, fmt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    started = time.perf_counter()
    if kind == "portfolio":
        data = generate_portfolio(n, seed=0)
        rows = {"accounts": len(data.accounts), "opportunities": len(data.opportunities), "tickets": len(data.tickets)}
    else:
        data = generate_history(n, seed=0)
        rows = {"accounts_history": len(data.accounts_history), "opportunities_history": len(data.opportunities_history),
                "tickets": len(data.tickets)}
    generated = time.perf_counter() - started
    written = None
    if fmt != "none":
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            (write_portfolio if kind == "portfolio" else write_history)(data, out, fmt=fmt)
            written = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"rows": rows, "generate_s": generated, "write_s": written, "peak_rss_gb": peak_gb}))
    """
)


def _run(kind: str, n: int, fmt: str = "none") -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO, kind, str(n), fmt], capture_output=True, text=True, check=True, timeout=900
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    write = f", write {fmt} {result['write_s']:.1f} s" if result["write_s"] is not None else ""
    print(
        f"\n{kind} n={n:,}: generate {result['generate_s']:.1f} s{write}, peak RSS {result['peak_rss_gb']:.2f} GB, "
        + ", ".join(f"{k} {v:,}" for k, v in result["rows"].items())
    )
    return result


def test_portfolio_one_million_accounts():
    result = _run("portfolio", 1_000_000)
    assert result["rows"]["accounts"] == 1_000_000
    assert result["rows"]["opportunities"] == pytest.approx(5_000_000, rel=0.01)
    assert result["rows"]["tickets"] == pytest.approx(10_000_000, rel=0.03)


def test_portfolio_write_parquet_and_csv():
    _run("portfolio", 1_000_000, "parquet")
    _run("portfolio", 100_000, "csv")


def test_history_hundred_thousand_accounts():
    result = _run("history", 100_000, "csv")
    assert result["rows"]["accounts_history"] > 400_000
