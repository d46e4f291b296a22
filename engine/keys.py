"""Fast id joins and string tests for large frames (Arrow compute, no Python objects).

Joining 10M tickets to 1M accounts through Python string objects costs tens of
seconds; Arrow's hash kernels do it in well under one. Works for Arrow-backed
and object-backed string columns alike (object columns are converted once).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

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


def _fixed_width_words(arr: pa.Array) -> np.ndarray | None:
    """Each string's bytes as uint64 words (n, words) when every string has the same length.

    Zero-copy view of Arrow's data buffer plus one padded copy; None when lengths
    vary, a value is null, or ids are longer than 32 bytes (then Arrow hashing is used).
    """
    n = len(arr)
    if n == 0 or arr.null_count:
        return None
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    width = int(offsets[1] - offsets[0])
    if not 0 < width <= 32 or int(offsets[-1] - offsets[0]) != width * n:
        return None
    if not (np.diff(offsets) == width).all():
        return None
    data = np.frombuffer(buffers[2], dtype=np.uint8, count=width * n, offset=int(offsets[0])).reshape(n, width)
    words = (width + 7) // 8
    padded = np.zeros((n, words * 8), dtype=np.uint8)
    padded[:, :width] = data
    return padded.view(np.uint64)


def _mix(words: np.ndarray) -> np.ndarray:
    """One uint64 per row: the word itself for ids up to 8 bytes, else a multiplicative mix."""
    h = words[:, 0].copy()
    for k in range(1, words.shape[1]):
        h *= np.uint64(0x9E3779B97F4A7C15)
        h ^= words[:, k]
    return h


class KeyIndex:
    """A lookup of ids built once and probed many times (e.g. chunk by chunk).

    Same-length ids (Salesforce ids, generated ids) go through an integer hash
    join on their bytes; anything else falls back to Arrow's hash kernels
    (keys dictionary-encoded first, so only distinct keys are looked up).
    """

    def __init__(self, lookup):
        self._arrow = arrow_strings(lookup)
        self._words = _fixed_width_words(self._arrow)
        self._index = None
        if self._words is not None:
            index = pd.Index(_mix(self._words))
            if index.is_unique:  # duplicate ids (or a hash collision): first-match semantics need Arrow
                self._index = index

    def positions(self, keys, rows: np.ndarray | None = None) -> np.ndarray:
        """Row position in the lookup of each key (-1 when absent or null); first match wins.

        `rows`: look up only these keys (positions into `keys`); fixed-width keys are then
        selected as integers, without copying the strings.
        """
        keys_arr = arrow_strings(keys)
        if self._index is not None:
            key_words = _fixed_width_words(keys_arr)
            if key_words is not None and key_words.shape[1] == self._words.shape[1]:
                if rows is not None:
                    key_words = key_words[rows]
                pos = self._index.get_indexer(_mix(key_words)).astype(np.int64)
                if key_words.shape[1] > 1:
                    # a hash hit on a different id means the key is absent (lookup hashes are unique)
                    hit = np.flatnonzero(pos >= 0)
                    same = (key_words[hit] == self._words[pos[hit]]).all(axis=1)
                    pos[hit[~same]] = -1
                return pos
        if rows is not None:
            keys_arr = keys_arr.take(pa.array(rows))
        encoded = pc.dictionary_encode(keys_arr)
        found = pc.fill_null(pc.index_in(encoded.dictionary, value_set=self._arrow), -1)
        table = np.append(found.to_numpy(zero_copy_only=False).astype(np.int64), -1)
        codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return table[codes]


def positions(keys, lookup) -> np.ndarray:
    """Row position in `lookup` of each key (-1 when absent or null); first match wins."""
    return KeyIndex(lookup).positions(keys)


def row_chunks(n: int, size: int = 262_144):
    """(start, stop) ranges. Large frames are processed in chunks so temporaries stay small
    enough for the allocator to reuse instead of mapping fresh pages from the OS each time
    (at a million rows that page-faulting was most of the engine's time)."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def map_chunks(function, n: int, size: int = 262_144, workers: int | None = None) -> list:
    """[function(start, stop) for each chunk], in order, on up to `workers` threads.

    NumPy and Arrow release the GIL inside their kernels, so chunks overlap on a
    multi-core machine; with one chunk (small frames) nothing is threaded. The chunks
    are evened out to a multiple of the workers (at most `size` rows each): three
    chunks on two cores would leave one core idle for the whole last chunk.
    """
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    count = -(-n // size) if n else 0
    if count > 1 and workers > 1:
        count = -(-count // workers) * workers
        size = -(-n // count)
    chunks = list(row_chunks(n, size))
    if len(chunks) <= 1 or workers <= 1:
        return [function(start, stop) for start, stop in chunks]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="healthsync-engine") as pool:
        return list(pool.map(lambda bounds: function(*bounds), chunks))


def take_strings(names, codes: np.ndarray) -> pd.arrays.ArrowStringArray:
    """names[codes] as a pandas string array without Python objects (code -1 -> NA)."""
    table = pa.array([str(n) for n in names], pa.large_string())
    codes = np.asarray(codes, dtype=np.int64)
    missing = codes < 0
    taken = table.take(pa.array(np.where(missing, 0, codes), mask=missing if missing.any() else None))
    return pd.arrays.ArrowStringArray(taken)


def equals_any(values, choices: tuple[str, ...], case_insensitive: bool = True) -> np.ndarray:
    """Boolean mask: value is one of `choices`; null -> False.

    Case-insensitive matching accepts the value as written in lower, UPPER or
    Title case (canonical frames are already normalised; this avoids lower-casing
    10M strings just to compare them).
    """
    wanted = set(choices)
    if case_insensitive:
        for c in choices:
            wanted |= {c.lower(), c.upper(), c.title(), c.capitalize()}
    mask = pc.is_in(arrow_strings(values), value_set=pa.array(sorted(wanted), pa.large_string()))
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
