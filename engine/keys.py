"""Fast id joins and string tests for large frames (Arrow compute, no Python objects).

Joining 10M tickets to 1M accounts through Python string objects costs tens of
seconds; Arrow's hash kernels do it in well under one. Works for Arrow-backed
and object-backed string columns alike (object columns are converted once).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def arrow_strings(values: pd.Series | pd.Index | np.ndarray) -> pa.Array:
    """The values as one Arrow large_string array (numbers are rendered as text)."""
    try:
        arr = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        arr = pa.array(pd.Series(values).astype("string"), from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    return arr


def positions(keys, lookup) -> np.ndarray:
    """Row position in `lookup` of each key (-1 when absent or null); first match wins.

    The keys are dictionary-encoded first (one hash pass), so only the distinct
    keys are looked up: 10M ticket rows naming 1M accounts cost one pass, not two.
    """
    encoded = pc.dictionary_encode(arrow_strings(keys))
    found = pc.fill_null(pc.index_in(encoded.dictionary, value_set=arrow_strings(lookup)), -1)
    table = np.append(found.to_numpy(zero_copy_only=False).astype(np.int64), -1)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return table[codes]


def take_strings(names, codes: np.ndarray) -> pd.arrays.ArrowStringArray:
    """names[codes] as a pandas string array without Python objects (code -1 -> NA)."""
    table = pa.array([str(n) for n in names], pa.large_string())
    codes = np.asarray(codes, dtype=np.int64)
    missing = codes < 0
    taken = table.take(pa.array(np.where(missing, 0, codes), mask=missing if missing.any() else None))
    return pd.arrays.ArrowStringArray(taken)


def equals_any(values, choices: tuple[str, ...], case_insensitive: bool = True) -> np.ndarray:
    """Boolean mask: value (stripped, optionally lower-cased) is one of `choices`; null -> False."""
    arr = pc.utf8_trim_whitespace(arrow_strings(values))
    if case_insensitive:
        arr = pc.utf8_lower(arr)
        choices = tuple(c.lower() for c in choices)
    mask = pc.is_in(arr, value_set=pa.array(list(choices), pa.large_string()))
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def has_duplicates(values) -> bool:
    """True when a value repeats (several nulls count as a repeat)."""
    arr = arrow_strings(values)
    if len(arr) < 2:
        return False
    if arr.null_count == 0:
        # ids usually arrive sorted: strictly increasing proves uniqueness without hashing
        increasing = pc.all(pc.greater(arr.slice(1), arr.slice(0, len(arr) - 1))).as_py()
        if increasing:
            return False
    return len(pc.dictionary_encode(arr).dictionary) + arr.null_count < len(arr) or arr.null_count > 1
