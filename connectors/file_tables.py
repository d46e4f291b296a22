"""One CSV or Parquet file -> an Arrow table of the wanted columns, and where each row came from.

The reading half of `connectors/files.py`. A file is read in C++ (pyarrow) with column
projection: Parquet reads only the wanted columns from disk; CSV parses with pyarrow's
multi-threaded reader and converts only the wanted columns. What used to reject a whole file
is kept per record instead (issue 13):

- a ragged row (more or fewer fields than the header) is skipped and reported with its line;
- bytes that are not UTF-8 (one Latin-1 byte) clear that one value, reported with its line
  and column; the rest of the row and of the file is read;
- anything pyarrow's reader still refuses falls back to Python's csv module, so a readable
  file is never rejected whole.

Line numbers are only worked out when a problem needs one (a second pass over the text), so
a clean file costs nothing for them. Parquet problems are named by row (1-based).
"""

from __future__ import annotations

import csv
import io
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from healthsync.config.canonical import SPECS, FrameSpec
from healthsync.connectors.base import ConfigurationError

SUFFIXES = (".csv", ".parquet", ".pq")

#: the texts pandas reads as missing (read_csv's defaults), kept so files read as they always did
NULL_TEXTS = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]


@dataclass
class BadValue:
    """Bytes that are not UTF-8 text in one value: the value is cleared."""

    row: int  # position in the table
    column: str
    message: str


@dataclass
class RaggedRow:
    """A row with a different number of fields than the header: the row is skipped."""

    line: int | None
    fields: list[str] | None
    message: str


@dataclass
class FileTable:
    """The columns read from one file, plus what could not be read and where it was."""

    path: Path
    table: pa.Table
    line_label: str  # "line" (CSV) or "row" (Parquet)
    columns_in_file: list[str]
    bad_values: list[BadValue] = field(default_factory=list)
    ragged: list[RaggedRow] = field(default_factory=list)
    _lines: object = None  # callable rows -> line numbers, or None

    def lines(self, rows: np.ndarray) -> np.ndarray | None:
        """Line numbers (CSV, 1-based, header = 1) or row numbers (Parquet, 1-based) of table rows."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.line_label == "row":
            return rows + 1
        if self._lines is None:
            return None
        return self._lines(rows)


# ----------------------------------------------------------------------------- Parquet


def _read_parquet(path: Path, wanted: Collection[str] | None) -> FileTable:
    try:
        # ParquetFile, not pq.read_table: the latter goes through pyarrow.dataset, whose import
        # alone (~0.2 s of CPU holding the GIL) would compete with pandas loading meanwhile.
        # pre_buffer off: column chunks are read as they are decoded, not all held at once
        file = pq.ParquetFile(path, pre_buffer=False)
        names = [n for n in file.schema_arrow.names if not n.startswith("__index_level_")]
        by_stripped = {n.strip(): n for n in names}
        read = names if wanted is None else [by_stripped[w] for w in by_stripped if w in wanted]
        table = file.read(columns=read, use_threads=True)
        file.close()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ConfigurationError(f"{path}: cannot read as Parquet: {exc}") from None
    table = table.rename_columns([n.strip() for n in table.column_names])
    out = FileTable(path, table, "row", list(by_stripped))
    out.table = _repair_text(out)
    return out


# ----------------------------------------------------------------------------- CSV


def _header(data: bytes) -> list[str]:
    """The header's names, stripped; a repeated name gets pandas' suffix (a, a.1, a.2)."""
    end = data.find(b"\n")
    if end < 0:
        first = data
    elif b'"' in data[:end]:
        first = data[: 1 << 22]  # a quoted name may hold a line break: let the csv module find the end
    else:
        first = data[: end + 1]
    head = first.decode("utf-8", errors="replace").lstrip("\ufeff")
    try:
        names = next(csv.reader(io.StringIO(head, newline="")))
    except (StopIteration, csv.Error):
        return []
    seen: dict[str, int] = {}
    out = []
    for name in (n.strip() for n in names):
        if name in seen:  # pandas' naming of repeated headers: a, a.1, a.2
            seen[name] += 1
            name = f"{name}.{seen[name]}"
        seen.setdefault(name, 0)
        out.append(name)
    return out


def _records(data: bytes):
    """(first physical line, fields) of every record after the header; empty lines skipped."""
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), strict=False)
    try:
        next(reader)
    except StopIteration:
        return
    line = reader.line_num
    for fields in reader:
        start, line = line + 1, reader.line_num
        if fields:
            yield start, fields


class _CsvLayout:
    """Lines of the records pyarrow kept, worked out once when a problem needs them.

    Holds the file's path, not its bytes: a clean file's text is freed as soon as it is
    decoded, and only a file with problems is read a second time, by Python's csv module.
    """

    def __init__(self, path: Path, n_fields: int, kept_rows: int, ragged_rows: int):
        self._path, self._n, self._kept, self._ragged = path, n_fields, kept_rows, ragged_rows
        self._done = False
        self.kept_lines: np.ndarray | None = None
        self.ragged: list[tuple[int, list[str]]] = []

    def scan(self, data: bytes | None = None) -> None:
        if self._done:
            return
        self._done = True
        try:
            data = self._path.read_bytes() if data is None else data
        except OSError:
            return  # gone since it was read: problems are then named by record number
        kept, ragged = [], []
        for start, fields in _records(data):
            if len(fields) == self._n:
                kept.append(start)
            else:
                ragged.append((start, fields))
        if len(kept) == self._kept and len(ragged) == self._ragged:
            self.kept_lines = np.asarray(kept, dtype=np.int64)
            self.ragged = ragged

    def lines(self, rows: np.ndarray) -> np.ndarray | None:
        self.scan()
        return None if self.kept_lines is None else self.kept_lines[rows]


def _read_csv_arrow(data: bytes, names: list[str], wanted: Collection[str] | None, text_columns: Collection[str]):
    import pyarrow.csv as pacsv  # here, not at the top: a Parquet read starts without loading it

    skipped: list[str] = []

    def skip(row) -> str:
        skipped.append(row.text)
        return "skip"

    include = [n for n in names if wanted is None or n in wanted]
    table = pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pacsv.ParseOptions(invalid_row_handler=skip, newlines_in_values=b'"' in data),
        convert_options=pacsv.ConvertOptions(
            include_columns=include,
            column_types={n: pa.large_string() for n in include if n in text_columns},
            null_values=NULL_TEXTS,
            strings_can_be_null=True,
            check_utf8=False,
        ),
    )
    return table, len(skipped)


def _read_csv_python(data: bytes, names: list[str], wanted: Collection[str] | None):
    """All wanted columns as text, record by record (for files pyarrow's reader refuses)."""
    include = [i for i, n in enumerate(names) if wanted is None or n in wanted]
    columns: list[list] = [[] for _ in include]
    ragged = 0
    nulls = set(NULL_TEXTS)
    for _, fields in _records(data):
        if len(fields) != len(names):
            ragged += 1
            continue
        for out, i in zip(columns, include):
            value = fields[i]
            out.append(None if value in nulls else value)
    table = pa.table({names[i]: pa.array(col, pa.large_string()) for i, col in zip(include, columns)})
    return table, ragged


def _read_csv(path: Path, wanted: Collection[str] | None, text_columns: Collection[str]) -> FileTable:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read ({exc.strerror})") from None
    names = _header(data)
    if not names or not any(names):
        return FileTable(path, pa.table({}), "line", [])
    try:
        table, ragged_count = _read_csv_arrow(data, names, wanted, text_columns)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        table, ragged_count = _read_csv_python(data, names, wanted)
    layout = _CsvLayout(path, len(names), table.num_rows, ragged_count)
    out = FileTable(path, table, "line", names, _lines=layout.lines)
    out.table = _repair_text(out)
    if ragged_count:
        layout.scan(data)
        if layout.kept_lines is not None:
            rows = layout.ragged
        else:
            rows = [(None, None)] * ragged_count
        for line, fields in rows:
            count = "" if fields is None else f"{len(fields)} fields where the header has {len(names)}"
            out.ragged.append(RaggedRow(line, fields, count or "wrong number of fields"))
    return out


# ----------------------------------------------------------------------------- values


def _bad_utf8_rows(chunk: pa.Array) -> list[tuple[int, str]]:
    """(position in the chunk, message) of values whose bytes are not UTF-8."""
    out = []
    for i, value in enumerate(chunk.cast(pa.large_binary()).to_pylist()):
        if value is None:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as e:
            out.append((i, f"not UTF-8 text (byte 0x{value[e.start]:02x} at position {e.start + 1})"))
    return out


def _repair_text(file: FileTable) -> pa.Table:
    """Text columns with valid UTF-8 only: a value that is not is cleared and recorded.

    The check is Arrow's own validation (fast, per chunk); only a chunk that fails it is
    decoded value by value. Dictionary, binary and decimal columns become plain strings
    and floats, so the validator sees ordinary types.
    """
    table = file.table
    columns = []
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_decimal(column.type):
            column = column.cast(pa.float64())
        if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type) or pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            chunks, offset = [], 0
            for chunk in column.chunks:
                binary = pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type)
                try:
                    if binary:
                        chunk = chunk.cast(pa.large_binary()).cast(pa.large_string())
                    else:
                        chunk.validate(full=True)
                except pa.ArrowInvalid:
                    bad = _bad_utf8_rows(chunk)
                    mask = np.zeros(len(chunk), dtype=bool)
                    for i, message in bad:
                        mask[i] = True
                        file.bad_values.append(BadValue(offset + i, name, message))
                    import pyarrow.compute as pc  # only for a chunk with bad bytes

                    as_binary = chunk.cast(pa.large_binary())
                    cleared = pc.if_else(pa.array(mask), pa.scalar(None, pa.large_binary()), as_binary)
                    chunk = cleared.cast(pa.large_string())
                chunks.append(chunk.cast(pa.large_string()) if not pa.types.is_large_string(chunk.type) else chunk)
                offset += len(chunk)
            column = pa.chunked_array(chunks, pa.large_string()) if chunks else pa.chunked_array([], pa.large_string())
        columns.append(column)
    return pa.table(columns, names=table.column_names) if table.num_columns else table


def id_columns(spec: FrameSpec) -> list[str]:
    return [c.name for c in spec.columns if c.name.endswith("_id") or c.name == spec.key]


def text_columns(spec: FrameSpec) -> set[str]:
    """Columns read as text from CSV whatever they look like ("001" stays "001")."""
    return set(id_columns(spec)) | {c.name for c in spec.columns if c.kind in ("str", "enum")}


def find_frame_file(directory: Path, name: str) -> Path | None:
    for suffix in SUFFIXES:
        candidate = directory / f"{name}{suffix}"
        if candidate.exists():
            return candidate
    return None


@dataclass
class Reading:
    """Files being decoded in the background: frame name -> (file, spec, columns wanted, Future)."""

    files: dict[str, tuple[Path, FrameSpec, Collection[str] | None, Future]]

    def result(self, name: str) -> FileTable:
        return self.files[name][3].result()


def start_reading(
    directory: Path,
    frames: Mapping[str, bool],
    columns: Mapping[str, Collection[str] | None] | None = None,
    spec_for=lambda name: name,
) -> Reading:
    """Find each frame's file (`frames`: name -> required) and start decoding them side by side.

    `columns` maps a frame to the columns to read (None: all); frames it leaves out are not
    read. Arrow decodes outside the GIL, so the files are read while the caller goes on
    (`healthsync score --input` loads pandas and the engine meanwhile). Needs no pandas.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigurationError(f"{directory}: not a directory")
    plans = {}
    for name, required in frames.items():
        if columns is not None and name not in columns:
            continue
        path = find_frame_file(directory, name)
        if path is None:
            if required:
                raise ConfigurationError(f"{directory}: {name}.csv (or {name}.parquet) is required")
            continue
        if path.is_dir():
            raise ConfigurationError(f"{path}: is a directory, not a file")
        spec = spec_for(name)
        spec = SPECS[spec] if isinstance(spec, str) else spec
        wanted = None if columns is None or columns[name] is None else set(columns[name]) | {spec.key}
        plans[name] = (path, spec, wanted)
    pool = ThreadPoolExecutor(max_workers=max(1, len(plans)), thread_name_prefix="healthsync-read")
    try:
        return Reading({
            name: (path, spec, wanted, pool.submit(read_table, path, wanted, text_columns(spec)))
            for name, (path, spec, wanted) in plans.items()
        })
    finally:
        pool.shutdown(wait=False)


def read_table(path: Path, wanted: Collection[str] | None = None, text_columns: Collection[str] = ()) -> FileTable:
    """The wanted columns (None: all) of a .csv/.parquet file; header names stripped.

    `text_columns` are read as text from CSV whatever they look like (ids: "001" stays "001").
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, wanted, text_columns)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path, wanted)
    raise ConfigurationError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")
