"""`healthsync backtest` and `healthsync calibrate`: file reading and writing around engine validation.

The engine computes (no I/O); this module reads the history directory, writes
the config overlay that `--config` accepts, and records the last backtest in
the state store so the portfolio report can show model accuracy.

History records that cannot be used (an unreadable `churned` label, a missing
id, ...) are skipped and named by id in the report's `record_problems` and in
`warnings`; the command then exits 1 (finished with record errors). A history
or request the engine cannot work with at all (too few churn events, no usable
rows, a model without at-risk bands) is a configuration error naming what is
wrong, never a traceback.
"""

from __future__ import annotations

import json
import logging
import shlex
from datetime import datetime, timezone
from pathlib import Path

import yaml

from healthsync.connectors.base import ConfigurationError
from healthsync.connectors.files import read_history

log = logging.getLogger("healthsync.validation")
PROBLEMS_SHOWN = 20


def _history(path: Path):
    path = Path(path)
    if not path.is_dir():
        raise ConfigurationError(f"--history {path}: not a directory")
    frames, problems = read_history(path)  # (frames, ValidationReport): the engine takes the frames
    if "accounts_history" not in frames:
        raise ConfigurationError(f"--history {path}: no accounts_history.csv or accounts_history.parquet found")
    if problems:
        log.warning("%d history record problems (skipped or ignored); first: %s", len(problems), problems.lines(1)[0])
    return frames, problems


def _with_problems(report: dict, problems) -> dict:
    report = dict(report)
    report["record_problems"] = problems.lines(PROBLEMS_SHOWN) if problems else []
    report["record_problem_count"] = len(problems) if problems else 0
    if problems:
        report["warnings"] = [f"{len(problems)} history record problems (records skipped or values ignored); "
                              f"first: {problems.lines(1)[0]}"] + list(report.get("warnings") or [])
    return report


def _engine_errors():
    """The engine's refusals of a history (reported as configuration errors naming the directory)."""
    from healthsync.engine.backtest import HistoryError
    from healthsync.engine.splits import InsufficientHistoryError

    return (HistoryError, InsufficientHistoryError)


def _record_backtest(settings, report: dict) -> None:
    """Keep the latest backtest for the report; a missing or locked store never fails the command."""
    try:
        from healthsync.sync.state import dumps, open_store

        store = open_store(settings.state.url)
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        with store.begin() as conn:
            conn.execute(
                store.tables["backtests"].insert().values(
                    run_id=f"backtest-{now:%Y%m%dT%H%M%S}", created_at=now, report_json=dumps(report)
                )
            )
    except Exception as e:  # noqa: BLE001 - recording is a convenience; the printed report is the result
        log.warning("could not record the backtest in the state store: %s", e)


def run_backtest(settings, history_dir: Path, challenger=None) -> tuple[dict, str]:
    from healthsync.engine.backtest import backtest, format_text

    history, problems = _history(history_dir)
    try:
        report = backtest(
            history,
            settings.model,
            settings.forecast,
            challenger_model=challenger.model if challenger is not None else None,
            challenger_forecast=challenger.forecast if challenger is not None else None,
        )
    except _engine_errors() as e:
        raise ConfigurationError(f"--history {history_dir}: {e}") from None
    report = _with_problems(report, problems)
    _record_backtest(settings, report)
    return report, format_text(report)


def reproduce_command(history_dir: Path, out: Path, configs: list[Path], method: str, target_recall: float,
                      max_at_risk_share: float, split: str, holdout: float, seed: int) -> str:
    """The `healthsync calibrate` command line that writes this overlay again."""
    parts = ["healthsync", "calibrate", "--history", str(history_dir), "--out", str(out), "--method", method,
             "--target-recall", f"{target_recall:g}", "--max-at-risk-share", f"{max_at_risk_share:g}",
             "--split", split, "--holdout", f"{holdout:g}", "--seed", str(seed)]
    for c in configs:
        parts += ["--config", str(c)]
    return shlex.join(parts)


def run_calibrate(settings, history_dir: Path, out: Path, method: str = "logistic", target_recall: float = 0.75,
                  max_at_risk_share: float = 0.35, split: str = "auto", holdout: float = 0.25, seed: int = 0,
                  configs: list[Path] | None = None):
    from healthsync.engine.backtest import format_text
    from healthsync.engine.calibration import calibrate

    configs = [Path(c) for c in (configs or [])]
    history, problems = _history(history_dir)
    try:
        result = calibrate(history, settings.model, settings.forecast, method=method, target_recall=target_recall,
                           holdout_share=holdout, split=split, seed=seed, max_at_risk_share=max_at_risk_share)
    except _engine_errors() as e:
        raise ConfigurationError(f"--history {history_dir}: {e}") from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    held_out = {k: result.report.get(k) for k in ("auc", "brier", "recall", "precision", "at_risk_share")}
    fc = result.report.get("forecast") or {}
    if fc:
        held_out.update({"forecast.mape_before": fc.get("mape_before"), "forecast.mape_after": fc.get("mape_after")})
    use = shlex.join(["healthsync", "backtest", "--history", str(history_dir)]
                     + [a for c in configs for a in ("--config", str(c))] + ["--config", str(out)])
    header = (
        f"# healthsync calibration overlay ({method}; {result.report['calibration']['split_description']})\n"
        f"# stack it on the config it was calibrated with (later files win):\n"
        f"#   {use}\n"
        f"# reproduce it:\n"
        f"#   {reproduce_command(history_dir, out, configs, method, target_recall, max_at_risk_share, split, holdout, seed)}\n"
        f"# held-out validation: {json.dumps(held_out)}\n"
    )
    out.write_text(header + yaml.safe_dump(result.overlay, sort_keys=False))
    report = _with_problems(result.report, problems)
    report["overlay"] = str(out)
    report["use"] = use
    return report, format_text(report) + f"\n\nconfig overlay written: {out}\n  use: {use}"
