"""Fuzzing the input files (issue 13, item 8, the records half).

Hypothesis draws 16 portfolios of 625 malformed records each (10,000 in all) spread over
accounts, opportunities and tickets: text where a number belongs, `inf`, numbers out of
range, fractions and overflowing integers in whole-number columns, unparsable dates,
unknown enum and boolean spellings, missing and duplicate ids, ragged rows and bytes that
are not UTF-8 (CSV), binary values (Parquet). The values come from Hypothesis strategies:
arbitrary Unicode with commas, quotes and line breaks, arbitrary byte strings.

Each portfolio is written to disk as CSV or Parquet next to good records and read twice:
- `healthsync score --input DIR --output FILE --json` (the console script): no traceback,
  exit code 1, and every malformed record in a column the model reads named, by its id or,
  without one, by file and line (CSV) or row (Parquet); no good record named wrongly;
- the reader API (`read_frames`, every column): every malformed record named.

Many records per file and one command per portfolio keep this near a minute.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthsync.config.canonical import ACCOUNTS, OPPORTUNITIES, TICKETS, FrameSpec
from healthsync.config.settings import load_settings
from healthsync.connectors.file_tables import NULL_TEXTS
from healthsync.connectors.files import read_frames
from healthsync.engine.features import model_inputs

BIN = Path(sys.executable).with_name("healthsync")
PORTFOLIOS = int(os.environ.get("HEALTHSYNC_FUZZ_PORTFOLIOS", "16"))  # more, to hunt locally
BAD_PER_PORTFOLIO = 625  # 16 x 625 = 10,000 malformed records
GOOD = {"accounts": 40, "opportunities": 40, "tickets": 80}
SPECS = {"accounts": ACCOUNTS, "opportunities": OPPORTUNITIES, "tickets": TICKETS}
PREFIX = {"accounts": "A", "opportunities": "O", "tickets": "T"}

#: a model that reads opportunities and every ticket column, so the command reads all three files
FUZZ_CONFIG = """
model:
  metrics:
    - {name: login_frequency, label: login_frequency, dimension: product, weight: 0.10, rule: {type: steps, column: logins_per_user_week, steps: [{min: 5, points: 100}, {min: 1, points: 70}, {min: 0.23, points: 40}], else_points: 0}}
    - {name: feature_adoption, label: feature_adoption, dimension: product, weight: 0.10, rule: {type: ratio, numerator: features_used, denominator: features_available, zero_at: 0, full_at: 1}}
    - {name: license_utilization, label: license_utilization, dimension: product, weight: 0.10, rule: {type: ratio, numerator: active_users_30d, denominator: seats_purchased, zero_at: 0, full_at: 1}}
    - {name: qbr_attendance, label: qbr_attendance, dimension: engagement, weight: 0.10, rule: {type: steps, column: qbrs_missed, steps: [{min: 2, points: 0}, {min: 1, points: 50}], else_points: 100}}
    - {name: email_response, label: email_response, dimension: engagement, weight: 0.08, rule: {type: steps, column: email_response_hours, steps: [{min: 72, points: 20}, {min: 24, points: 60}], else_points: 100}}
    - {name: exec_sponsor, label: exec_sponsor, dimension: engagement, weight: 0.07, rule: {type: category, column: exec_sponsor, points: {active: 100, partial: 50, none: 0}}}
    - {name: ticket_trend, label: ticket_trend, dimension: support, weight: 0.10, rule: {type: trend, short: tickets_rate_30d, long: tickets_rate_90d, tolerance: 0.2, points: {declining: 100, stable: 70, increasing: 30}}}
    - {name: escalations, label: escalations, dimension: support, weight: 0.05, rule: {type: steps, column: escalations_90d, steps: [{min: 2, points: 20}, {min: 1, points: 60}], else_points: 100}}
    - {name: open_p1, label: open_p1, dimension: support, weight: 0.05, rule: {type: steps, column: open_p1_90d, steps: [{min: 1, points: 0}], else_points: 100}}
    - {name: pipeline, label: pipeline, dimension: financial, weight: 0.05, rule: {type: linear, column: open_pipeline_amount, zero_at: 0, full_at: 100000}}
    - {name: payment_timeliness, label: payment_timeliness, dimension: financial, weight: 0.10, rule: {type: steps, column: days_payment_late, steps: [{min: 30, points: 10}, {min: 1, points: 50}], else_points: 100}}
    - {name: csm_sentiment, label: csm_sentiment, dimension: qualitative, weight: 0.10, rule: {type: category, column: csm_sentiment, points: {green: 100, yellow: 50, red: 0}}}
"""

_NULLS = {t.strip().lower() for t in NULL_TEXTS}
_SPELLINGS = {"true", "1", "yes", "y", "t", "false", "0", "no", "n", "f"}


# ----------------------------------------------------------------------------- good records


def good_value(spec: FrameSpec, column: str, i: int, rng: np.random.Generator):
    c = spec.column(column)
    if column == spec.key:
        return f"{PREFIX[spec.name]}{i:05d}"
    if column == "account_id":
        return f"A{int(rng.integers(0, GOOD['accounts'])):05d}"
    if c.kind == "str":
        return ["Acme, Inc.", 'The "Best" Co', "Caf\u00e9 \u00d6l", "plain"][i % 4]
    if c.kind == "enum":
        return c.choices[i % len(c.choices)]
    if c.kind == "bool":
        return bool(i % 2)
    if c.kind in ("int", "float"):
        top = c.maximum if c.maximum is not None else 50
        value = float(rng.integers(0, int(top) + 1)) if c.kind == "int" else float(rng.uniform(0, top))
        return int(value) if c.kind == "int" else round(value, 3)
    if c.kind == "date":
        return f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}"
    return f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:15:00Z"


# ----------------------------------------------------------------------------- malformations


def _letters_first(s: str) -> bool:
    t = s.strip()
    return bool(t) and t[0].isalpha() and t.lower() not in _NULLS


_unicode = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00") | st.sampled_from(",\"\n;'\t "),
    min_size=0, max_size=12,
)
#: text that starts with a letter: never a number (inf/nan spellings excluded), never a null token
_word = st.builds(lambda a, b: a + b, st.sampled_from("qwzxQWZXjkJK"), _unicode).filter(_letters_first)
#: byte strings that are not UTF-8 even between ASCII letters, and carry no CSV structure
_bad_bytes = st.binary(min_size=1, max_size=6).filter(
    lambda b: not any(x in b for x in b',"\n\r') and _not_utf8(b"x" + b + b"y")
)


def _not_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


DEFECTS = {
    "not_number": _word,
    "non_finite": st.sampled_from(["inf", "-inf", "Infinity", "-Infinity", "+inf", "INF", " inf "]),
    "below_min": st.floats(min_value=-1e12, max_value=-0.001).map(lambda v: f"{v!r}"),
    "above_max": st.floats(min_value=10.5, max_value=1e9).map(lambda v: f"{v!r}"),
    "fraction": st.floats(min_value=0.01, max_value=1e6).filter(lambda v: v != int(v)).map(lambda v: f"{v!r}"),
    "overflow": st.integers(min_value=2**63, max_value=10**30).map(str),
    "bad_date": st.one_of(
        st.builds(lambda y, m, d: f"{y}-{m}-{d}", st.integers(1000, 2999), st.integers(32, 99), st.integers(32, 99)),
        st.builds(lambda a, b: f"zz{a}{b}", st.integers(0, 99), st.sampled_from(["/", "-", "x", ""])),
    ),
    "unknown_enum": _word,
    "bad_bool": _word.filter(lambda s: s.strip().lower() not in _SPELLINGS),
    "bad_bytes": _bad_bytes,
    "missing_id": st.sampled_from(["", "   ", "\t"]),
    "duplicate_id": st.just(None),
    "ragged_more": st.lists(st.sampled_from(["x", "1", "extra", ""]), min_size=1, max_size=3),
    "ragged_less": st.integers(min_value=1, max_value=5),
}


@dataclass(frozen=True)
class Kind:
    frame: str
    column: str
    defect: str


def kinds_for(fmt: str) -> list[Kind]:
    out = []
    for name, spec in SPECS.items():
        for c in spec.columns:
            if c.name == spec.key:
                out += [Kind(name, c.name, "missing_id"), Kind(name, c.name, "duplicate_id")]
                out.append(Kind(name, c.name, "bad_bytes"))
                continue
            if c.required:
                out.append(Kind(name, c.name, "missing_id"))
            if c.kind in ("int", "float"):
                out += [Kind(name, c.name, "not_number"), Kind(name, c.name, "non_finite")]
                if c.minimum is not None:
                    out.append(Kind(name, c.name, "below_min"))
                if c.maximum is not None and c.maximum < 10.5:
                    out.append(Kind(name, c.name, "above_max"))
                if c.kind == "int":
                    out += [Kind(name, c.name, "fraction"), Kind(name, c.name, "overflow")]
            elif c.kind in ("date", "datetime"):
                out.append(Kind(name, c.name, "bad_date"))
            elif c.kind == "enum":
                out.append(Kind(name, c.name, "unknown_enum"))
            elif c.kind == "bool":
                out.append(Kind(name, c.name, "bad_bool"))
            else:
                out.append(Kind(name, c.name, "bad_bytes"))
        if fmt == "csv":
            out += [Kind(name, spec.key, "ragged_more"), Kind(name, spec.key, "ragged_less")]
    return out


KINDS = {fmt: kinds_for(fmt) for fmt in ("csv", "parquet")}


@st.composite
def portfolios(draw):
    fmt = draw(st.sampled_from(["csv", "parquet"]))
    kinds = KINDS[fmt]
    chosen = draw(st.lists(st.integers(0, len(kinds) - 1), min_size=BAD_PER_PORTFOLIO, max_size=BAD_PER_PORTFOLIO))
    pools = {d: draw(st.lists(strategy, min_size=3, max_size=3)) for d, strategy in DEFECTS.items()}
    seed = draw(st.integers(0, 2**32 - 1))
    return fmt, [kinds[i] for i in chosen], pools, seed


# ----------------------------------------------------------------------------- writing


@dataclass
class Record:
    values: dict            # column -> value (a str, number, bool, None or bytes)
    kind: Kind | None       # None: a good record
    expect_id: str | None   # the id a problem must name; None: named by file and line/row
    where: int = 0          # CSV line or Parquet row, filled in when written
    extra: list | None = None  # ragged: fields added
    cut: int | None = None     # ragged: fields kept


def build(kinds: list[Kind], pools: dict, seed: int) -> dict[str, list[Record]]:
    rng = np.random.default_rng(seed)
    frames: dict[str, list[Record]] = {}
    for name, spec in SPECS.items():
        frames[name] = [
            Record({c.name: good_value(spec, c.name, i, rng) for c in spec.columns}, None, f"{PREFIX[name]}{i:05d}")
            for i in range(GOOD[name])
        ]
    counter = {name: 10_000 for name in SPECS}
    for kind in kinds:
        spec = SPECS[kind.frame]
        counter[kind.frame] += 1
        i = counter[kind.frame]
        values = {c.name: good_value(spec, c.name, i, rng) for c in spec.columns}
        pick = pools[kind.defect][int(rng.integers(0, len(pools[kind.defect])))]
        record = Record(values, kind, values[spec.key])
        if kind.defect == "duplicate_id":
            values[spec.key] = f"{PREFIX[kind.frame]}{int(rng.integers(0, GOOD[kind.frame])):05d}"
            record.expect_id = values[spec.key]
        elif kind.defect == "missing_id":
            values[kind.column] = pick
            if kind.column == spec.key:
                record.expect_id = None
        elif kind.defect == "ragged_more":
            record.extra = list(pick)
        elif kind.defect == "ragged_less":
            record.cut = min(pick, len(spec.columns) - 1)
        elif kind.defect == "bad_bytes":
            values[kind.column] = b"x" + pick + b"y"
            if kind.column == spec.key:
                record.expect_id = None
        else:
            values[kind.column] = pick
        frames[kind.frame].append(record)
    for records in frames.values():  # malformed records among the good ones, in a drawn order
        order = rng.permutation(len(records))
        records[:] = [records[j] for j in order]
    return frames


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_csv(path: Path, spec: FrameSpec, records: list[Record]) -> None:
    names = spec.names
    out = bytearray()
    head = io.StringIO()
    csv.writer(head, lineterminator="\n").writerow(names)
    out += head.getvalue().encode()
    line = 2
    for r in records:
        fields, raw = [], {}
        for n in names:
            v = r.values[n]
            if isinstance(v, bytes):
                token = f"\x01RAW{len(raw)}\x01"
                raw[token.encode()] = v
                fields.append(token)
            else:
                fields.append(_cell(v))
        if r.extra is not None:
            fields += r.extra
        if r.cut is not None:
            fields = fields[: r.cut]
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(fields)
        row = text.getvalue().encode()
        for token, value in raw.items():
            row = row.replace(token, value)
        r.where = line
        line += row.count(b"\n")
        out += row
    path.write_bytes(bytes(out))


def write_parquet(path: Path, spec: FrameSpec, records: list[Record]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for c in spec.columns:
        values = [r.values[c.name] for r in records]
        if any(isinstance(v, bytes) for v in values):
            arr = pa.array([None if v is None else (v if isinstance(v, bytes) else _cell(v).encode()) for v in values], pa.binary())
        elif c.kind in ("int", "float") and all(
            v is None or isinstance(v, float) or isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63 for v in values
        ):
            arr = pa.array(values, pa.float64() if any(isinstance(v, float) for v in values) else pa.int64())
        elif c.kind == "bool" and all(v is None or isinstance(v, bool) for v in values):
            arr = pa.array(values, pa.bool_())
        else:
            arr = pa.array([None if v is None else _cell(v) for v in values], pa.string())
        columns[c.name] = arr
    pq.write_table(pa.table(columns), path)
    for i, r in enumerate(records):
        r.where = i + 1


# ----------------------------------------------------------------------------- checking


def unnamed(problems: list[str], frames: dict[str, list[Record]], fmt: str, read: dict[str, set[str]] | None) -> list[str]:
    """Malformed records (in columns that were read) that no problem names."""
    label = "line" if fmt == "csv" else "row"
    named_ids = {}
    located = set()
    for p in problems:
        head, _, _ = p.partition(": ")
        # "<file> line N: <frame> <id>: ..." or "<file> lines N, M: ..."
        rest = p[len(head) + 2:]
        frame, _, tail = rest.partition(" ")
        rid = tail.split(": ", 1)[0]
        named_ids.setdefault(frame, set()).add(rid)
        file, _, numbers = head.partition(f" {label}")
        for n in numbers.lstrip("s ").split(", "):
            if n.isdigit():
                located.add((file, int(n)))
    missing = []
    for name, records in frames.items():
        if read is not None and name not in read:
            continue
        for r in records:
            if r.kind is None:
                continue
            if read is not None and r.kind.column not in read[name] and not r.kind.defect.startswith("ragged") \
                    and r.kind.defect not in ("duplicate_id",) and r.kind.column != SPECS[name].key:
                continue
            file = f"{name}.{fmt}"
            if r.expect_id is not None:
                ok = r.expect_id in named_ids.get(name, set())
            else:
                ok = (file, r.where) in located
            if not ok:
                missing.append(f"{file} {label} {r.where} {r.kind} id={r.expect_id!r}")
    return missing


def wrongly_named(problems: list[str], frames: dict[str, list[Record]]) -> list[str]:
    """Problems about a record that was not malformed (nor duplicated by a malformed one)."""
    allowed = {name: {r.expect_id for r in recs if r.kind is not None} for name, recs in frames.items()}
    out = []
    for p in problems:
        rest = p.split(": ", 1)[1] if ": " in p else p
        frame, _, tail = rest.partition(" ")
        rid = tail.split(": ", 1)[0]
        if rid != "(no id)" and rid not in allowed.get(frame, set()):
            out.append(p)
    return out


@pytest.fixture(scope="module")
def fuzz_config(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"
    path.write_text(FUZZ_CONFIG)
    return path, model_inputs(load_settings(path).model)


@settings(max_examples=PORTFOLIOS, deadline=None, suppress_health_check=list(HealthCheck))
@given(portfolio=portfolios())
def test_given_10000_malformed_records_when_scored_then_no_traceback_exit_1_and_every_bad_record_named(
    portfolio, fuzz_config, tmp_path_factory
):
    fmt, kinds, pools, seed = portfolio
    config, read = fuzz_config
    assert len(kinds) == BAD_PER_PORTFOLIO
    directory = tmp_path_factory.mktemp("portfolio")
    frames = build(kinds, pools, seed)
    for name, records in frames.items():
        (write_csv if fmt == "csv" else write_parquet)(directory / f"{name}.{fmt}", SPECS[name], records)

    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env["HEALTHSYNC__STATE__URL"] = f"sqlite:///{directory}/state.db"
    r = subprocess.run(
        [str(BIN), "score", "--input", str(directory), "--output", str(directory / "out" / "scored.parquet"),
         "--config", str(config), "--as-of", "2026-01-01", "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    result = json.loads(r.stdout)
    assert result["files_read"] == ["accounts", "opportunities", "tickets"]
    problems = result["problems"]
    assert not (gaps := unnamed(problems, frames, fmt, read)), gaps[:10]
    assert not (wrong := wrongly_named(problems, frames)), wrong[:10]
    scored = pd.read_parquet(directory / "out" / "scored.parquet")
    assert result["accounts_scored"] == len(scored) > 0

    # the reader API, every column: every malformed record named
    _, report = read_frames(directory)
    lines = report.lines()
    assert not (gaps := unnamed(lines, frames, fmt, None)), gaps[:10]
    assert not (wrong := wrongly_named(lines, frames)), wrong[:10]


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(cut=st.floats(min_value=0.05, max_value=0.95), junk=st.binary(min_size=0, max_size=64))
def test_given_a_truncated_parquet_file_then_exit_2_names_the_file_without_a_traceback(cut, junk, tmp_path_factory):
    directory = tmp_path_factory.mktemp("corrupt")
    frame = pd.DataFrame({"account_id": [f"A{i}" for i in range(200)], "seats_purchased": np.arange(200)})
    frame.to_parquet(directory / "accounts.parquet")
    data = (directory / "accounts.parquet").read_bytes()
    (directory / "accounts.parquet").write_bytes(data[: int(len(data) * cut)] + junk)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env["HEALTHSYNC__STATE__URL"] = f"sqlite:///{directory}/state.db"
    r = subprocess.run(
        [str(BIN), "score", "--input", str(directory), "--output", str(directory / "o.csv"), "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "accounts.parquet" in r.stderr
