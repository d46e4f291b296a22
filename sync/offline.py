"""`healthsync score --input DIR --output FILE`: score canonical files with no CRM at all.

Reads `accounts`, `tickets` and `opportunities` (CSV or Parquet) from DIR through
the files connector (which validates them and reports bad records instead of
stopping), runs the same engine pipeline as the main job, and writes the scored
frame by the output's extension. Record problems make the exit code 1, never a
silent success.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pandas as pd

from healthsync.connectors.base import ConfigurationError
from healthsync.connectors.files import read_frames, write_frame
from healthsync.engine.pipeline import score_portfolio

#: The scored file's leading columns (the rest: dimension and metric scores).
OUTPUT_LEAD = [
    "account_id", "name", "segment", "score", "band", "raw_band", "confidence",
    "override", "override_reason", "method", "lifecycle_stage", "drivers",
]


def _parse_as_of(as_of: str | date | None) -> pd.Timestamp | None:
    if as_of is None or isinstance(as_of, (date, datetime)):
        return None if as_of is None else pd.Timestamp(as_of)
    try:
        return pd.Timestamp(datetime.strptime(as_of, "%Y-%m-%d"))
    except ValueError:
        raise ConfigurationError(f"--as-of: {as_of!r} is not a date (YYYY-MM-DD)") from None


def score_files(input_dir: Path, output: Path, settings, as_of: str | None = None) -> dict:
    input_dir, output = Path(input_dir), Path(output)
    if output.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigurationError(f"--output {output}: use a .csv or .parquet file name")
    if not input_dir.is_dir():
        raise ConfigurationError(f"--input {input_dir}: not a directory")
    frames, report = read_frames(input_dir)
    if "accounts" not in frames:
        raise ConfigurationError(f"--input {input_dir}: no accounts.csv or accounts.parquet found")
    result = score_portfolio(
        frames["accounts"],
        frames.get("tickets"),
        frames.get("opportunities"),
        settings.model,
        settings.forecast,
        history=None,
        as_of=_parse_as_of(as_of),
    )
    scores = result.scores
    accounts = frames["accounts"][[c for c in ("account_id", "name") if c in frames["accounts"].columns]]
    if "name" not in scores.columns and "name" in accounts.columns:
        scores = scores.merge(accounts, on="account_id", how="left")
    lead = [c for c in OUTPUT_LEAD if c in scores.columns]
    scores = scores[lead + [c for c in scores.columns if c not in lead]]
    output.parent.mkdir(parents=True, exist_ok=True)
    write_frame(scores, output)
    problems = report.lines() if report else []
    return {
        "output": str(output),
        "accounts_scored": int(len(scores)),
        "bands": {str(k): int(v) for k, v in scores["band"].value_counts().sort_index().items()},
        "problems": problems,
        "exit_code": 1 if problems else 0,
    }
