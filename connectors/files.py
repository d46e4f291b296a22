"""Canonical frames from and to CSV or Parquet files (chosen by extension).

Used by `healthsync score --input DIR`, `healthsync backtest --history DIR`,
product-usage imports and exports. Reading validates every frame with
`config.canonical.validate_frame`: bad values are cleared and reported, bad
records skipped and reported, never a stack trace; columns the contract does
not know (custom signals) pass through untouched.

Every problem names its file and line (CSV) or row (Parquet), so a record
without an id is still found. A ragged row or a value that is not UTF-8 costs
that record or value, never the file (connectors/file_tables.py). A caller
that needs only some columns (`score --input` reads what the model reads)
passes them, and only those are read from disk and checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from healthsync.config.canonical import SPECS, FrameSpec, Problem, ValidationReport, canonical_columns, validate_frame
from healthsync.connectors.base import ConfigurationError
from healthsync.connectors.file_tables import (  # noqa: F401 - find_frame_file, SUFFIXES re-exported
    SUFFIXES,
    FileTable,
    Reading,
    find_frame_file,
    id_columns,
    read_table,
    start_reading,
    text_columns,
)
#: canonical frames `read_frames` looks for, and whether a directory must hold it
FRAMES = {"accounts": True, "opportunities": False, "tickets": False, "tasks": False}
#: the history directory of design.md ("history for validation"); without tickets, ticket metrics are absent
HISTORY = {"accounts_history": True, "tickets": False, "opportunities_history": False}
#: what one record of a frame is called in a "0 accounts" warning
RECORD_NOUN = {"accounts_history": "account snapshots", "opportunities_history": "opportunity snapshots"}


def _spec(spec: FrameSpec | str) -> FrameSpec:
    if isinstance(spec, FrameSpec):
        return spec
    if spec not in SPECS:
        raise ConfigurationError(f"unknown canonical frame {spec!r} (expected one of {', '.join(SPECS)})")
    return SPECS[spec]


def _pandas_type(arrow_type: pa.DataType):
    if pa.types.is_large_string(arrow_type) or pa.types.is_string(arrow_type):
        return pd.StringDtype("pyarrow")
    if pa.types.is_integer(arrow_type):
        return pd.Int64Dtype() if not pa.types.is_uint64(arrow_type) else None
    if pa.types.is_boolean(arrow_type):
        return pd.BooleanDtype()
    return None


def _to_pandas(table: pa.Table, spec: FrameSpec) -> pd.DataFrame:
    """Arrow -> pandas without Python objects: Arrow-backed strings, nullable ints and booleans,
    dates as datetime64; ids as text."""
    for name in id_columns(spec):
        if name in table.column_names:
            i = table.column_names.index(name)
            column = table.column(i)
            if not pa.types.is_large_string(column.type):
                try:
                    column = column.cast(pa.large_string())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    column = pa.chunked_array([pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.large_string())])
                table = table.set_column(i, name, column)
    return table.to_pandas(types_mapper=_pandas_type, date_as_object=False, ignore_metadata=True)


def _locate(report: ValidationReport, file: FileTable) -> None:
    """File name and line (or row) numbers on every problem of one file's report."""
    rows = sorted({r for p in report.problems for r in p.rows})
    lines = file.lines(np.asarray(rows, dtype=np.int64)) if rows else None
    line_of = dict(zip(rows, lines.tolist())) if lines is not None else {}
    for p in report.problems:
        p.file = file.path.name
        if not p.rows:  # a ragged row: not in the table, its line came from the file's layout
            continue
        p.line_label = file.line_label
        p.lines = tuple(line_of[r] for r in p.rows if r in line_of)
        if not p.lines and file.line_label == "line":
            p.line_label = "record"  # line numbers unknown: the record's position among the data rows
            p.lines = tuple(r + 1 for r in p.rows)


def _file_problems(file: FileTable, spec: FrameSpec, frame: pd.DataFrame) -> list[Problem]:
    """Ragged rows and bytes that are not UTF-8, as problems named like the validator's."""
    out = []
    key = frame[spec.key] if spec.key in frame.columns else None
    for bad in file.bad_values:
        rid = None if key is None or pd.isna(key.iloc[bad.row]) else str(key.iloc[bad.row]).strip() or None
        column = spec.column(bad.column) if bad.column in spec.names else None
        dropped = column is not None and not column.nullable
        out.append(Problem(spec.name, rid or f"row {bad.row}", bad.column, bad.message, dropped, rows=(bad.row,), no_id=rid is None))
    key_index = file.columns_in_file.index(spec.key) if spec.key in file.columns_in_file else None
    for row in file.ragged:
        rid = None
        if row.fields is not None and key_index is not None and key_index < len(row.fields):
            rid = row.fields[key_index].strip() or None
        p = Problem(spec.name, rid or "?", "(row)", row.message, True, no_id=rid is None)
        p.lines = (row.line,) if row.line is not None else ()
        out.append(p)
    return out


def read_frame(
    path: str | Path, spec: FrameSpec | str, columns: Collection[str] | None = None
) -> tuple[pd.DataFrame, ValidationReport]:
    """Read one CSV/Parquet file as the canonical frame `spec`; returns (valid rows, report).

    `columns`: read only these (the frame's key is always read); None reads every column,
    custom ones included. The report's warnings say when the file holds no records or a
    wanted contract column is absent.
    """
    spec = _spec(spec)
    return _frame_from_table(_read_table(Path(path), spec, columns), spec, columns)


def _read_table(path: Path, spec: FrameSpec, columns: Collection[str] | None) -> FileTable:
    if not path.exists():
        raise ConfigurationError(f"{path}: file not found")
    if path.is_dir():
        raise ConfigurationError(f"{path}: is a directory, not a file")
    wanted = None if columns is None else set(columns) | {spec.key}
    return read_table(path, wanted, text_columns(spec))


def _frame_from_table(
    file: FileTable, spec: FrameSpec, columns: Collection[str] | None
) -> tuple[pd.DataFrame, ValidationReport]:
    path = file.path
    wanted = None if columns is None else set(columns) | {spec.key}
    try:
        frame = _to_pandas(file.table, spec)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise ConfigurationError(f"{path}: cannot read as {spec.name}: {exc}") from None
    file.table = None  # the pandas frame holds the data now; let the Arrow copy go
    valid, report = validate_frame(frame, spec)
    located = ValidationReport(problems=_file_problems(file, spec, frame))
    # a value cleared for bad bytes in a column the record cannot lack is one problem, not two
    cleared = {(p.rows, p.column) for p in located.problems if p.dropped and p.rows}
    located.problems += [p for p in report.problems if not (p.message == "missing" and (p.rows, p.column) in cleared)]
    _locate(located, file)
    located.problems.sort(key=lambda p: p.lines[0] if p.lines else 0)  # in file order
    if not any(p.record_id == "*" for p in report.problems):
        if len(valid) == 0:
            noun = RECORD_NOUN.get(spec.name, spec.name)
            located.warn(f"{path.name}: 0 {noun}" + (" (only a header)" if len(frame) == 0 and not file.ragged else ""))
        present = set(file.columns_in_file)
        absent = [c.name for c in spec.columns if not c.required and c.name not in present and (wanted is None or c.name in wanted)]
        if absent:
            located.warn(f"{path.name}: no column {', '.join(absent)} (absent: the metrics reading it are left out, never zero)")
    return valid[canonical_columns(spec, valid)], located


def write_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame as CSV or Parquet (by extension); creates the parent directory."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigurationError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S")
        else:
            frame.to_parquet(path, index=False)
    except OSError as exc:  # a read-only place, a parent that is a file, a full disk: the user's to fix
        raise ConfigurationError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


_find = find_frame_file


def _read_directory(
    directory: str | Path,
    wanted: dict[str, bool],
    spec_for=lambda name: name,
    columns: Mapping[str, Collection[str] | None] | None = None,
    reading: Reading | None = None,
) -> tuple[dict[str, pd.DataFrame], ValidationReport]:
    # the files are decoded side by side (Arrow works outside the GIL), then checked one by one
    reading = reading or start_reading(Path(directory), wanted, columns, spec_for)
    frames: dict[str, pd.DataFrame] = {}
    report = ValidationReport()
    for name, (_, spec, wanted_columns, _) in reading.files.items():
        frame, problems = _frame_from_table(reading.result(name), spec, wanted_columns)
        frames[name] = frame
        report.extend(problems)
    return frames, report


def read_frames(
    directory: str | Path, columns: Mapping[str, Collection[str] | None] | None = None, reading: Reading | None = None
) -> tuple[dict[str, pd.DataFrame], ValidationReport]:
    """The canonical frames present in `directory` (`accounts` required; `opportunities`, `tickets`, `tasks` optional).

    `columns` maps a frame to the columns to read (None: all of them); frames it leaves out
    are not read at all. Without it, every frame and column is read. `reading`: files
    already being decoded (`file_tables.start_reading`).
    """
    return _read_directory(directory, FRAMES, columns=columns, reading=reading)


def read_history(directory: str | Path) -> tuple[dict[str, pd.DataFrame], ValidationReport]:
    """A history directory (design.md): `accounts_history`, optionally `tickets` and `opportunities_history`."""
    return _read_directory(directory, HISTORY)
