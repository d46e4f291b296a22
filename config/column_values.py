"""Vectorised checks of one canonical column, on the values' own types.

Typed values (numbers, timestamps and booleans from Parquet, typed CSV columns, JSON numbers
from a CRM) are checked as they are: no value is turned into text to ask whether it is blank.
That conversion is what made reading 3M ticket timestamps and 1.5M opportunity amounts cost
seconds (issue 14). Only text is parsed, and only the values that fail the vectorised parse
are looked at one by one, to say what is wrong with them.

Every function returns the values coerced to the contract's dtype (config/canonical.py) and
the `Issues` found: (row positions, one message per row). The value of such a row is cleared
(absent, never zero); `validate_frame` turns issues into named record problems.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: (row positions, message per row): values that were cleared, and why
Issues = list[tuple[np.ndarray, list[str]]]

#: the largest magnitude a whole number column holds (int64)
_INT_LIMIT = float(2**63)



def _raw_values(raw: pd.Series, rows: np.ndarray) -> list:
    """The input values of some rows, as Python objects for messages."""
    values = raw.iloc[rows]
    return [None if v is pd.NA else v for v in values.astype(object)]


def _arrow_chunks(values: pd.Series) -> list[pa.Array] | None:
    """The Arrow string chunks behind an Arrow-backed pandas string column (zero-copy), else None."""
    if not (isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow"):
        return None
    arr = pa.array(values.array)
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    return chunks if all(pa.types.is_large_string(c.type) or pa.types.is_string(c.type) for c in chunks) else None


def _clean_text(chunks: list[pa.Array]) -> bool:
    """True when no value is empty or starts or ends with (possibly) white space.

    Reads only each value's first and last byte from Arrow's buffers: ids and names almost
    never need stripping, and finding that out this way costs half of stripping them and no
    copy. A byte up to 0x20 (ASCII space and control characters) or any non-ASCII byte (it
    may belong to a Unicode space) counts as possible white space: then the column is stripped.
    """
    for chunk in chunks:
        n = len(chunk)
        if n == 0:
            continue
        buffers = chunk.buffers()
        width = 8 if pa.types.is_large_string(chunk.type) else 4
        offsets = np.frombuffer(buffers[1], dtype=np.int64 if width == 8 else np.int32, count=n + 1, offset=chunk.offset * width)
        starts, ends = offsets[:-1], offsets[1:]
        if chunk.null_count:  # nulls are fine; look at the values only
            valid = chunk.is_valid().to_numpy(zero_copy_only=False)
            starts, ends = starts[valid], ends[valid]
        if starts.size == 0:
            continue
        if (ends == starts).any():  # an empty value: it becomes NA
            return False
        data = np.frombuffer(buffers[2], dtype=np.uint8)
        first, last = data[starts], data[ends - 1]
        if ((first <= 32) | (first >= 128)).any() or ((last <= 32) | (last >= 128)).any():
            return False
    return True


def text_values(raw: pd.Series) -> pd.Series:
    """Stripped text (pandas 'string'); empty or whitespace-only values become NA."""
    if isinstance(raw.dtype, pd.StringDtype) and raw.dtype.na_value is pd.NA:
        text = raw
    else:
        text = raw.astype("string")
    chunks = _arrow_chunks(text)
    if chunks is not None and _clean_text(chunks):
        return text
    text = text.str.strip()
    blank = (text == "").fillna(False).to_numpy(dtype=bool)
    if blank.any():
        text = text.mask(blank)
    return text


def _mask_rows(n: int, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


def _parse_numbers(raw: pd.Series) -> tuple[np.ndarray, np.ndarray, Issues]:
    """Text or mixed objects -> (float64 values, missing mask, issues for unparsable values)."""
    try:
        parsed = pd.to_numeric(raw, errors="coerce")
    except (TypeError, ValueError):  # non-scalar objects (lists, dicts): judge them by their text
        raw = raw.astype("string")
        parsed = pd.to_numeric(raw, errors="coerce")
    values = np.asarray(parsed.to_numpy(dtype="float64", na_value=np.nan), dtype="float64")
    given = raw.notna().to_numpy(dtype=bool)
    failed = np.flatnonzero(np.isnan(values) & given)
    issues: Issues = []
    if failed.size:
        texts = text_values(raw.iloc[failed])
        blank = texts.isna().to_numpy(dtype=bool)
        bad = failed[~blank]
        if bad.size:
            issues.append((bad, [f"not a number: {v!r}" for v in _raw_values(raw, bad)]))
    missing = np.isnan(values)
    return values, missing, issues


def number_values(raw: pd.Series, kind: str, minimum: float | None = None, maximum: float | None = None) -> tuple[pd.Series | pd.api.extensions.ExtensionArray, Issues]:
    """`float` -> float64 (NaN missing); `int` -> Int64. Infinite, out-of-range and (for `int`)
    fractional or overflowing values are cleared and reported."""
    n = len(raw)
    dtype = raw.dtype
    issues: Issues = []
    if pd.api.types.is_bool_dtype(dtype):
        raw = raw.astype("Int64")
        dtype = raw.dtype
    if pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_unsigned_integer_dtype(dtype):
        ints = raw.to_numpy(dtype="int64", na_value=0)
        missing = raw.isna().to_numpy(dtype=bool)
        cleared = np.zeros(n, dtype=bool)
        for bound, check, text in (
            (minimum, lambda b: ints < b, "is below the minimum"),
            (maximum, lambda b: ints > b, "is above the maximum"),
        ):
            if bound is None:
                continue
            rows = np.flatnonzero(check(bound) & ~missing & ~cleared)
            if rows.size:
                issues.append((rows, [f"{v:g} {text} {bound:g}" for v in ints[rows].astype("float64")]))
                cleared[rows] = True
        gone = missing | cleared
        if kind == "int":
            return pd.arrays.IntegerArray(ints, gone), issues
        floats = ints.astype("float64")
        floats[gone] = np.nan
        return floats, issues

    if pd.api.types.is_float_dtype(dtype) or pd.api.types.is_unsigned_integer_dtype(dtype):
        values = np.array(raw.to_numpy(dtype="float64", na_value=np.nan), dtype="float64", copy=True)
        missing = np.isnan(values)
    else:
        values, missing, issues = _parse_numbers(raw)
        values = values.copy()
        for rows, _ in issues:  # unparsable values were reported; they count as cleared, not missing
            missing[rows] = False

    cleared = np.zeros(n, dtype=bool)
    for rows, _ in issues:
        cleared[rows] = True
    present = ~missing & ~cleared

    def clear(mask: np.ndarray, message) -> None:
        rows = np.flatnonzero(mask & present & ~cleared)
        if rows.size:
            issues.append((rows, [message(v, r) for v, r in zip(values[rows], _raw_values(raw, rows))]))
            cleared[rows] = True

    with np.errstate(invalid="ignore"):
        clear(~np.isfinite(values), lambda v, r: f"not a finite number: {r!r}")
        if minimum is not None:
            clear(values < minimum, lambda v, r: f"{v:g} is below the minimum {minimum:g}")
        if maximum is not None:
            clear(values > maximum, lambda v, r: f"{v:g} is above the maximum {maximum:g}")
        if kind == "int":
            clear(np.abs(values) >= _INT_LIMIT, lambda v, r: f"{r!r} is out of range for a whole number")
            clear(values != np.floor(values), lambda v, r: f"{v:g} is not a whole number")
    gone = ~present | cleared
    if kind == "int":
        return pd.arrays.IntegerArray(np.where(gone, 0.0, values).astype(np.int64), gone), issues
    values[gone] = np.nan
    return values, issues


def date_values(raw: pd.Series, kind: str) -> tuple[pd.Series, Issues]:
    """datetime64 without timezone (UTC); `date` values at midnight. Typed timestamps and dates
    are taken as they are; text is parsed (ISO 8601 first, then any format pandas reads)."""
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        parsed = raw
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        issues: Issues = []
    else:
        text = text_values(raw)
        given = text.notna().to_numpy(dtype=bool)
        parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
        failed = np.flatnonzero(parsed.isna().to_numpy(dtype=bool) & given)
        if failed.size:
            retry = pd.to_datetime(text.iloc[failed], errors="coerce", utc=True, format="mixed")
            parsed = parsed.copy()
            parsed.iloc[failed] = retry.to_numpy()
            failed = failed[retry.isna().to_numpy(dtype=bool)]
        issues = [(failed, [f"unparsable date {v!r}" for v in _raw_values(raw, failed)])] if failed.size else []
        parsed = parsed.dt.tz_localize(None)
    if kind == "date":
        parsed = parsed.dt.normalize()
    return parsed, issues


def bool_values(raw: pd.Series) -> tuple[pd.Series | pd.api.extensions.ExtensionArray, Issues]:
    """Nullable booleans from booleans, 0/1 numbers or the spellings of `canonical._to_bool`."""
    dtype = raw.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return raw.astype("boolean"), []
    if pd.api.types.is_numeric_dtype(dtype):
        values = np.asarray(raw.to_numpy(dtype="float64", na_value=np.nan), dtype="float64")
        missing = np.isnan(values)
        bad = np.flatnonzero(~missing & (values != 0) & (values != 1))
        issues = [(bad, [f"not a boolean: {v!r}" for v in _raw_values(raw, bad)])] if bad.size else []
        return pd.arrays.BooleanArray(values == 1, missing | _mask_rows(len(raw), bad)), issues
    from healthsync.config.canonical import _to_bool  # the accepted spellings live with the contract

    values, bad_mask = _to_bool(raw)
    bad = np.flatnonzero(bad_mask.to_numpy(dtype=bool))
    return values, [(bad, [f"not a boolean: {v!r}" for v in _raw_values(raw, bad)])] if bad.size else []


def label_values(raw: pd.Series) -> tuple[pd.Series, Issues]:
    """0/1 outcome labels (Int64) from 0/1 numbers or the spellings of `canonical._to_label`."""
    from healthsync.config.canonical import _to_label  # the accepted spellings live with the contract

    values, bad_mask = _to_label(text_values(raw) if raw.dtype == object or isinstance(raw.dtype, pd.StringDtype) else raw)
    bad = np.flatnonzero(bad_mask.to_numpy(dtype=bool))
    message = "(use 0/1, true/false, yes/no or y/n)"
    issues = [(bad, [f"not an outcome label: {v!r} {message}" for v in _raw_values(raw, bad)])] if bad.size else []
    return values.mask(_mask_rows(len(raw), bad)) if bad.size else values, issues


def enum_values(raw: pd.Series, choices: tuple[str, ...], upper: bool = False) -> tuple[pd.Series, Issues]:
    """Lower-case text (upper-case when `upper`, e.g. P1) from `choices`; anything else cleared."""
    text = text_values(raw)
    lowered = text.str.lower()
    known = lowered.isin([c.lower() for c in choices]).fillna(False).to_numpy(dtype=bool)
    unknown = np.flatnonzero(text.notna().to_numpy(dtype=bool) & ~known)
    issues: Issues = []
    if unknown.size:
        values = text.iloc[unknown].tolist()
        issues.append((unknown, [f"unknown value {v!r} (expected one of {', '.join(choices)})" for v in values]))
        lowered = lowered.mask(_mask_rows(len(raw), unknown))
    return (lowered.str.upper() if upper else lowered), issues


def _fixed_width_hashes(arr: pa.Array) -> np.ndarray | None:
    """One uint64 per value from its bytes when all values have one length of at most 32 bytes."""
    n = len(arr)
    if n == 0 or arr.null_count or not pa.types.is_large_string(arr.type):
        return None
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    width = int(offsets[1] - offsets[0])
    if not 0 < width <= 32 or int(offsets[-1] - offsets[0]) != width * n or not (np.diff(offsets) == width).all():
        return None
    data = np.frombuffer(buffers[2], dtype=np.uint8, count=width * n, offset=int(offsets[0])).reshape(n, width)
    words = (width + 7) // 8
    padded = np.zeros((n, words * 8), dtype=np.uint8)
    padded[:, :width] = data
    view = padded.view(np.uint64)
    h = view[:, 0].copy()
    for k in range(1, words):
        h *= np.uint64(0x9E3779B97F4A7C15)
        h ^= view[:, k]
    return h


def _strictly_increasing(chunks: list[pa.Array]) -> bool:
    """No nulls and every value greater than the one before (compared chunk by chunk, no copy)."""
    previous = None
    for chunk in chunks:
        if chunk.null_count:
            return False
        if len(chunk) == 0:
            continue
        if previous is not None and not pc.greater(chunk[0], previous).as_py():
            return False
        if len(chunk) > 1 and not pc.all(pc.greater(chunk.slice(1), chunk.slice(0, len(chunk) - 1))).as_py():
            return False
        previous = chunk[len(chunk) - 1]
    return True


def duplicated(values: pd.Series) -> np.ndarray:
    """Every copy of a repeated, present value (pandas `duplicated(keep=False)`, NA never repeats).

    Ids usually arrive sorted or with one length (generated and CRM ids): a strictly increasing
    column has no repeats, and fixed-width ids are hashed as integers; only the candidates
    that hash alike are compared as text.
    """
    n = len(values)
    if n < 2:
        return np.zeros(n, dtype=bool)
    chunks = _arrow_chunks(values) or [pa.array(values.astype("string"), from_pandas=True)]
    if _strictly_increasing(chunks):
        return np.zeros(n, dtype=bool)
    arr = pa.chunked_array(chunks).combine_chunks()
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    hashes = _fixed_width_hashes(arr)
    if hashes is not None:
        candidates = np.flatnonzero(pd.Series(hashes).duplicated(keep=False).to_numpy())
        out = np.zeros(n, dtype=bool)
        if candidates.size:
            out[candidates] = values.iloc[candidates].duplicated(keep=False).to_numpy(dtype=bool)
        return out
    return (values.notna() & values.duplicated(keep=False)).to_numpy(dtype=bool)
