"""`healthsync score --input DIR --output FILE`: score canonical files with no CRM at all.

Reads, through the files connector, only the frames and columns the model reads
(`engine.features.model_inputs`): with the default model that is the accounts and
tickets files, and of the tickets only the id, account, creation time and escalation
flag. The reader validates them and reports bad records instead of stopping; the
same engine pipeline as the main job scores them, and the scored frame is written by
the output's extension. Record problems make the exit code 1, never a silent success;
warnings (a file with 0 records, a column the model reads that is absent) are reported
and leave it 0.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pandas as pd

from healthsync.connectors.base import ConfigurationError
from healthsync.connectors.files import FRAMES, find_frame_file, read_frames, write_frame
from healthsync.engine.features import model_inputs
from healthsync.engine.pipeline import score_portfolio

#: The scored file's leading columns (the rest: dimension and metric scores).
OUTPUT_LEAD = [
    "account_id", "name", "segment", "score", "band", "raw_band", "confidence",
    "override", "override_reason", "method", "lifecycle_stage", "drivers",
]

#: why a frame matters, for the warning when the model reads it and the file is absent
_FRAME_USE = {"tickets": "ticket metrics", "opportunities": "opportunity metrics"}


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
    day = _parse_as_of(as_of)
    needs = model_inputs(settings.model)
    if find_frame_file(input_dir, "accounts") is None:
        raise ConfigurationError(f"--input {input_dir}: no accounts.csv or accounts.parquet found")
    frames, report = read_frames(input_dir, needs)
    for name in needs:
        if name not in frames and name in _FRAME_USE:
            report.warn(f"no {name}.csv or {name}.parquet in {input_dir}: {_FRAME_USE[name]} are absent for every account")
    result = score_portfolio(
        frames["accounts"],
        frames.get("tickets"),
        frames.get("opportunities"),
        settings.model,
        settings.forecast,
        history=None,
        as_of=day,
    )
    scores = result.scores
    accounts = frames["accounts"]
    if "name" not in scores.columns:
        names = accounts["name"].array if "name" in accounts.columns else pd.array([pd.NA] * len(accounts), dtype="string")
        scores.insert(1, "name", names)  # scores keep the accounts' order, one row each
    lead = [c for c in OUTPUT_LEAD if c in scores.columns]
    scores = scores[lead + [c for c in scores.columns if c not in lead]]
    write_frame(scores, output)
    problems = report.lines() if report else []
    return {
        "output": str(output),
        "accounts_scored": int(len(scores)),
        "bands": {str(k): int(v) for k, v in scores["band"].value_counts().sort_index().items()},
        "files_read": sorted(frames),
        "problems": problems,
        "warnings": list(report.warnings),
        "exit_code": 1 if problems else 0,
    }
