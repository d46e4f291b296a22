"""Canonical frames from and to CSV or Parquet files (chosen by extension).

Used by `healthsync score --input DIR`, `healthsync backtest --history DIR`,
product-usage imports and exports. Reading validates every frame with
`config.canonical.validate_frame`: bad values are cleared and reported, bad
records skipped and reported, never a stack trace; columns the contract does
not know (custom signals) pass through untouched.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from healthsync.config.canonical import SPECS, FrameSpec, ValidationReport, canonical_columns, validate_frame
from healthsync.connectors.base import ConfigurationError

SUFFIXES = (".csv", ".parquet", ".pq")
#: canonical frames `read_frames` looks for, and whether a directory must hold it
FRAMES = {"accounts": True, "opportunities": False, "tickets": False, "tasks": False}
#: the history directory of design.md ("history for validation"); without tickets, ticket metrics are absent
HISTORY = {"accounts_history": True, "tickets": False, "opportunities_history": False}


def _spec(spec: FrameSpec | str) -> FrameSpec:
    if isinstance(spec, FrameSpec):
        return spec
    if spec not in SPECS:
        raise ConfigurationError(f"unknown canonical frame {spec!r} (expected one of {', '.join(SPECS)})")
    return SPECS[spec]


def _id_columns(spec: FrameSpec) -> list[str]:
    return [c.name for c in spec.columns if c.name.endswith("_id") or c.name == spec.key]


def read_frame(path: str | Path, spec: FrameSpec | str) -> tuple[pd.DataFrame, ValidationReport]:
    """Read one CSV/Parquet file as the canonical frame `spec`; returns (valid rows, report)."""
    spec = _spec(spec)
    path = Path(path)
    if not path.exists():
        raise ConfigurationError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            # ids stay text ("001" must not become 1); everything else is inferred, then coerced by the contract
            frame = pd.read_csv(path, dtype={c: "string" for c in _id_columns(spec)}, skipinitialspace=True)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            for c in _id_columns(spec):
                if c in frame.columns:
                    frame[c] = frame[c].astype("string")
        else:
            raise ConfigurationError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")
    except ConfigurationError:
        raise
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ConfigurationError(f"{path}: cannot read as {spec.name}: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    valid, report = validate_frame(frame, spec)
    return valid[canonical_columns(spec, valid)], report


def write_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame as CSV or Parquet (by extension); creates the parent directory."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigurationError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S")
    else:
        frame.to_parquet(path, index=False)
    return path


def _find(directory: Path, name: str) -> Path | None:
    for suffix in SUFFIXES:
        candidate = directory / f"{name}{suffix}"
        if candidate.exists():
            return candidate
    return None


def _read_directory(directory: str | Path, wanted: dict[str, bool], spec_for=lambda name: name) -> tuple[dict[str, pd.DataFrame], ValidationReport]:
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigurationError(f"{directory}: not a directory")
    frames: dict[str, pd.DataFrame] = {}
    report = ValidationReport()
    for name, required in wanted.items():
        path = _find(directory, name)
        if path is None:
            if required:
                raise ConfigurationError(f"{directory}: {name}.csv (or {name}.parquet) is required")
            continue
        frame, problems = read_frame(path, spec_for(name))
        frames[name] = frame
        report.extend(problems)
    return frames, report


def read_frames(directory: str | Path) -> tuple[dict[str, pd.DataFrame], ValidationReport]:
    """The canonical frames present in `directory` (`accounts` required; `opportunities`, `tickets`, `tasks` optional)."""
    return _read_directory(directory, FRAMES)


def read_history(directory: str | Path) -> tuple[dict[str, pd.DataFrame], ValidationReport]:
    """A history directory (design.md): `accounts_history`, optionally `tickets` and `opportunities_history`."""
    return _read_directory(directory, HISTORY)
