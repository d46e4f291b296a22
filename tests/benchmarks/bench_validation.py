"""Timings of the validation engine (not run by CI): backtest, calibrate and drift on demo data.

Run: .venv/bin/python tests/benchmarks/bench_validation.py [n_accounts]
"""

import sys
import time

import numpy as np
import pandas as pd

from healthsync.config.settings import load_settings
from healthsync.connectors.demo_data import generate_history
from healthsync.engine.backtest import backtest
from healthsync.engine.calibration import calibrate
from healthsync.engine.drift import drift_report


def _timed(label, fn):
    start = time.perf_counter()
    out = fn()
    print(f"{label:<40} {time.perf_counter() - start:8.2f} s")
    return out


def main(n_accounts: int = 5000) -> None:
    settings = load_settings(None)
    history = _timed(f"generate_history({n_accounts})", lambda: generate_history(n_accounts, seed=1))
    report = _timed("backtest (default model)", lambda: backtest(history, settings.model, settings.forecast))
    print(f"  AUC {report['auc']:.3f}  PR-AUC {report['pr_auc']:.3f}  Brier {report['brier']:.3f}  "
          f"MAPE {report['forecast']['mape_before']:.1f}% -> {report['forecast']['mape_after']:.1f}%")
    for method in ("correlation", "logistic"):
        result = _timed(f"calibrate ({method})", lambda: calibrate(history, settings.model, settings.forecast,
                                                                   method=method))
        r = result.report
        print(f"  held-out AUC {r['auc']:.3f}  recall {r['recall']:.3f}  precision {r['precision']:.3f}  "
              f"Brier {r['brier']:.3f}")
    rng = np.random.default_rng(1)
    n = 100_000
    frame = pd.DataFrame({f"m_{m.name}": rng.choice([0.0, 50.0, 100.0], n) for m in settings.model.metrics})
    frame["band"] = rng.choice(["Red", "Yellow", "Green"], n)
    _timed("drift_report (100k accounts)", lambda: drift_report(frame, frame, settings.model))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
