"""`healthsync score --input DIR --output FILE`: score canonical files with no CRM at all.

Reads, through the files connector, only the frames and columns the model reads
(`engine.inputs.model_inputs`): with the default model that is the accounts and
tickets files, and of the tickets only the id, account, creation time and escalation
flag. The reader validates them and reports bad records instead of stopping; the
same engine pipeline as the main job scores them, and the scored frame is written by
the output's extension. Record problems make the exit code 1, never a silent success;
warnings (a file with 0 records, a column the model reads that is absent) are reported
and leave it 0.

The files start decoding (Arrow, outside the GIL) before pandas and the engine are
imported, so on a multi-core machine reading and loading the libraries overlap: this
module imports nothing heavy at the top.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

from healthsync.connectors.base import ConfigurationError
from healthsync.engine.inputs import model_inputs

#: The scored file's leading columns (the rest: dimension and metric scores).
OUTPUT_LEAD = [
    "account_id", "name", "segment", "score", "band", "raw_band", "confidence",
    "override", "override_reason", "method", "lifecycle_stage", "drivers",
]

#: why a frame matters, for the warning when the model reads it and the file is absent
_FRAME_USE = {"tickets": "ticket metrics", "opportunities": "opportunity metrics"}


def _parse_as_of(as_of: str | date | None):
    import pandas as pd

    if as_of is None or isinstance(as_of, (date, datetime)):
        return None if as_of is None else pd.Timestamp(as_of)
    try:
        return pd.Timestamp(datetime.strptime(as_of, "%Y-%m-%d"))
    except ValueError:
        raise ConfigurationError(f"--as-of: {as_of!r} is not a date (YYYY-MM-DD)") from None


def _check_output(output: Path) -> None:
    """Fail before reading anything when the output cannot be written (no pandas needed)."""
    import os

    if output.parent.exists() and not output.parent.is_dir():
        raise ConfigurationError(f"--output {output}: {output.parent} is a file, not a directory")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"--output {output}: cannot create its directory ({exc.strerror or exc})") from None
    if output.is_dir():
        raise ConfigurationError(f"--output {output}: is a directory, not a file name")
    if not os.access(output.parent, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise ConfigurationError(f"--output {output}: not writable")


def score_files(input_dir: Path, output: Path, settings, as_of: str | None = None) -> dict:
    input_dir, output = Path(input_dir), Path(output)
    if output.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigurationError(f"--output {output}: use a .csv or .parquet file name")
    if not input_dir.is_dir():
        raise ConfigurationError(f"--input {input_dir}: not a directory")
    if as_of is not None and not isinstance(as_of, (date, datetime)):
        try:
            datetime.strptime(as_of, "%Y-%m-%d")
        except ValueError:
            raise ConfigurationError(f"--as-of: {as_of!r} is not a date (YYYY-MM-DD)") from None
    from healthsync.connectors.file_tables import find_frame_file, start_reading

    _check_output(output)
    if find_frame_file(input_dir, "accounts") is None:
        raise ConfigurationError(f"--input {input_dir}: no accounts.csv or accounts.parquet found")
    needs = model_inputs(settings.model)
    reading = start_reading(input_dir, {name: name == "accounts" for name in needs}, needs)

    # the heavy imports happen while the files decode
    import pandas as pd

    from healthsync.connectors.files import read_frames, write_frame
    from healthsync.engine.pipeline import score_portfolio

    frames, report = read_frames(input_dir, needs, reading=reading)
    for name in needs:
        if name not in frames and name in _FRAME_USE:
            report.warn(f"no {name}.csv or {name}.parquet in {input_dir}: {_FRAME_USE[name]} are absent for every account")
    accounts = frames["accounts"]
    result = score_portfolio(
        accounts,
        frames.pop("tickets", None),  # handed over, not kept: freed once the features are built
        frames.pop("opportunities", None),
        settings.model,
        settings.forecast,
        history=None,
        as_of=_parse_as_of(as_of),
    )
    scores = result.scores
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
        "files_read": sorted(reading.files),
        "problems": problems,
        "warnings": list(report.warnings),
        "exit_code": 1 if problems else 0,
    }
