"""`healthsync backtest` and `healthsync calibrate`: file reading and writing around engine validation.

The engine computes (no I/O); this module reads the history directory, writes
the config overlay that `--config` accepts, and records the last backtest in
the state store so the portfolio report can show model accuracy.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import yaml

from healthsync.connectors.base import ConfigurationError
from healthsync.connectors.files import read_history

log = logging.getLogger("healthsync.validation")


def _history(path: Path):
    path = Path(path)
    if not path.is_dir():
        raise ConfigurationError(f"--history {path}: not a directory")
    frames, problems = read_history(path)  # (frames, ValidationReport): the engine takes the frames
    if "accounts_history" not in frames:
        raise ConfigurationError(f"--history {path}: no accounts_history.csv or accounts_history.parquet found")
    if problems:
        log.warning("%d history record problems (skipped or ignored); first: %s", len(problems), problems.lines(1)[0])
    return frames


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

    history = _history(history_dir)
    report = backtest(
        history,
        settings.model,
        settings.forecast,
        challenger_model=challenger.model if challenger is not None else None,
        challenger_forecast=challenger.forecast if challenger is not None else None,
    )
    _record_backtest(settings, report)
    return report, format_text(report)


def run_calibrate(settings, history_dir: Path, out: Path, method: str = "correlation", target_recall: float = 0.75):
    from healthsync.engine.backtest import format_text
    from healthsync.engine.calibration import InsufficientHistoryError, calibrate

    history = _history(history_dir)
    try:
        result = calibrate(history, settings.model, settings.forecast, method=method, target_recall=target_recall)
    except InsufficientHistoryError as e:
        raise ConfigurationError(f"--history {history_dir}: {e}") from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# healthsync calibration overlay ({method}); use with --config {out.name}\n"
        f"# held-out validation: {json.dumps({k: result.report.get(k) for k in ('auc', 'recall', 'precision', 'brier')})}\n"
    )
    out.write_text(header + yaml.safe_dump(result.overlay, sort_keys=False))
    report = dict(result.report)
    report["overlay"] = str(out)
    return report, format_text(result.report) + f"\n\nconfig overlay written: {out}"
