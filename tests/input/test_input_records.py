"""Input that never crashes the reader (issue 13, item 6), through the console script.

`healthsync score --input` on files a user really sends: `inf` and a 23-digit number in
integer columns, a ragged row, a Latin-1 byte, a header-only file, a missing column. Each
bad record or value is named by file, line (CSV) or row (Parquet) and column; the rest of
the file is scored; the exit code follows the contract (0 ok, 1 record problems).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from healthsync.connectors.files import read_frame, read_history

BIN = Path(sys.executable).with_name("healthsync")
ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "fixtures" / "portfolio"
HEADER = "account_id,name,segment,seats_purchased,active_users_30d,logins_per_user_week,customer_since"


def score(tmp_path: Path, src: Path, output: str = "scored.parquet") -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env["HEALTHSYNC__STATE__URL"] = f"sqlite:///{tmp_path}/state.db"
    r = subprocess.run(
        [str(BIN), "score", "--input", str(src), "--output", str(tmp_path / output), "--as-of", "2026-11-01", "--json"],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r, json.loads(r.stdout)


def write(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path


def test_given_inf_and_a_23_digit_integer_in_integer_columns_when_scored_then_each_is_named_and_every_account_scored(tmp_path):
    src = write(tmp_path / "in", "accounts.csv", (
        f"{HEADER}\n"
        "A1,Acme,smb,10,9,2.5,2024-01-01\n"
        "A2,Beta,smb,inf,9,2.5,2024-01-01\n"
        "A3,Gamma,smb,10,99999999999999999999999,2.5,2024-01-01\n"
        "A4,Delta,smb,10,9,-inf,2024-01-01\n"
    ).encode()).parent
    r, result = score(tmp_path, src)
    assert r.returncode == 1
    assert result["accounts_scored"] == 4
    problems = result["problems"]
    assert any(p.startswith("accounts.csv line 3: accounts A2: seats_purchased: not a finite number") for p in problems), problems
    assert any(p.startswith("accounts.csv line 4: accounts A3: active_users_30d:") and "out of range" in p for p in problems), problems
    assert any(p.startswith("accounts.csv line 5: accounts A4: logins_per_user_week: not a finite number") for p in problems), problems
    assert len(problems) == 3
    scored = pd.read_parquet(tmp_path / "scored.parquet").set_index("account_id")
    # the bad value is absent (its metric left out), never zero; the good ones still count
    assert scored.loc["A1", "m_license_utilization"] == 90.0
    assert np.isnan(scored.loc["A2", "m_license_utilization"]) and np.isnan(scored.loc["A3", "m_license_utilization"])
    assert np.isnan(scored.loc["A4", "m_login_frequency"]) and scored.loc["A2", "m_login_frequency"] == 70.0


def test_given_parquet_with_inf_and_an_overflowing_float_in_integer_columns_then_named_by_row(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    pd.DataFrame({
        "account_id": ["A1", "A2", "A3"],
        "seats_purchased": [10.0, 1e23, np.inf],
        "active_users_30d": [5, 5, 5],
        "logins_per_user_week": [1.0, np.inf, 2.0],
    }).to_parquet(src / "accounts.parquet")
    r, result = score(tmp_path, src)
    assert r.returncode == 1 and result["accounts_scored"] == 3
    problems = result["problems"]
    assert any(p.startswith("accounts.parquet row 2: accounts A2: seats_purchased:") and "out of range" in p for p in problems)
    assert any(p.startswith("accounts.parquet row 2: accounts A2: logins_per_user_week: not a finite number") for p in problems)
    assert any(p.startswith("accounts.parquet row 3: accounts A3: seats_purchased: not a finite number") for p in problems)


def test_given_ragged_rows_when_scored_then_only_those_rows_are_skipped_and_named_by_line(tmp_path):
    src = write(tmp_path / "in", "accounts.csv", (
        f"{HEADER}\n"
        "A1,Acme,smb,10,9,2.5,2024-01-01\n"
        "A2,Beta,smb,10,9,2.5,2024-01-01,surplus\n"
        "\n"
        "A3,Gamma,smb,10\n"
        "A4,Delta,smb,10,9,2.5,2024-01-01\n"
    ).encode()).parent
    r, result = score(tmp_path, src)
    assert r.returncode == 1
    assert result["accounts_scored"] == 2
    assert result["problems"] == [
        "accounts.csv line 3: accounts A2: (row): 8 fields where the header has 7 (record skipped)",
        "accounts.csv line 5: accounts A3: (row): 4 fields where the header has 7 (record skipped)",
    ]
    assert sorted(pd.read_parquet(tmp_path / "scored.parquet")["account_id"]) == ["A1", "A4"]


def test_given_a_latin1_byte_in_a_name_when_scored_then_that_value_is_cleared_and_the_file_is_read(tmp_path):
    src = write(tmp_path / "in", "accounts.csv", (
        f"{HEADER}\n".encode()
        + "A1,Caf\u00e9 Latin,smb,10,9,2.5,2024-01-01\n".encode("latin-1")
        + "A2,Caf\u00e9 UTF-8,smb,10,9,2.5,2024-01-01\n".encode("utf-8")
        + b"A\xe93,Gamma,smb,10,9,2.5,2024-01-01\n"
    )).parent
    r, result = score(tmp_path, src)
    assert r.returncode == 1
    assert result["problems"] == [
        "accounts.csv line 2: accounts A1: name: not UTF-8 text (byte 0xe9 at position 4) (value ignored)",
        "accounts.csv line 4: accounts (no id): account_id: not UTF-8 text (byte 0xe9 at position 2) (record skipped)",
    ]
    scored = pd.read_parquet(tmp_path / "scored.parquet").set_index("account_id")
    assert list(scored.index) == ["A1", "A2"]
    assert pd.isna(scored.loc["A1", "name"]) and scored.loc["A2", "name"] == "Caf\u00e9 UTF-8"
    assert scored.loc["A1", "score"] == scored.loc["A2", "score"]  # the rest of A1's row counted


def test_given_a_latin1_byte_in_a_ticket_then_the_tickets_file_is_still_read(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "accounts.csv").write_bytes((FIXTURE / "accounts.csv").read_bytes())
    tickets = (FIXTURE / "tickets.csv").read_bytes().splitlines(keepends=True)
    tickets[2] = tickets[2].replace(b"F01", b"F\xa301")  # line 3: a pound sign in Latin-1 in the account id
    (src / "tickets.csv").write_bytes(b"".join(tickets))
    r, result = score(tmp_path, src)
    assert r.returncode == 1
    assert result["problems"] == ["tickets.csv line 3: tickets T01b: account_id: not UTF-8 text (byte 0xa3 at position 2) (record skipped)"]
    assert result["accounts_scored"] == 14 and result["files_read"] == ["accounts", "tickets"]


def test_given_a_header_only_accounts_file_then_a_warning_says_0_accounts_and_the_exit_code_is_0(tmp_path):
    src = write(tmp_path / "in", "accounts.csv", f"{HEADER}\n".encode()).parent
    r, result = score(tmp_path, src, "scored.csv")
    assert r.returncode == 0, r.stderr
    assert result["accounts_scored"] == 0 and result["problems"] == []
    assert "accounts.csv: 0 accounts (only a header)" in result["warnings"]
    assert pd.read_csv(tmp_path / "scored.csv").empty


def test_given_a_missing_optional_column_then_the_summary_warns_and_the_rest_is_scored(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    pd.read_csv(FIXTURE / "accounts.csv").drop(columns=["csm_sentiment"]).to_csv(src / "accounts.csv", index=False)
    (src / "tickets.csv").write_bytes((FIXTURE / "tickets.csv").read_bytes())
    r, result = score(tmp_path, src)
    assert r.returncode == 0, r.stderr
    assert result["accounts_scored"] == 14 and result["problems"] == []
    assert any(w.startswith("accounts.csv: no column csm_sentiment") for w in result["warnings"]), result["warnings"]
    assert pd.read_parquet(tmp_path / "scored.parquet")["m_csm_sentiment"].isna().all()


def test_given_no_tickets_file_when_the_model_reads_tickets_then_a_warning_says_so(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "accounts.csv").write_bytes((FIXTURE / "accounts.csv").read_bytes())
    r, result = score(tmp_path, src)
    assert r.returncode == 0
    assert any("no tickets.csv or tickets.parquet" in w for w in result["warnings"])


def test_given_inf_a_ragged_row_and_a_latin1_byte_in_history_files_then_the_history_reader_reads_the_rest(tmp_path):
    """The history reader (backtest, calibrate) goes through the same reader."""
    write(tmp_path, "accounts_history.csv", (
        "account_id,as_of,churned,seats_purchased\n"
        "A1,2025-01-01,0,10\n"
        "A2,2025-01-01,1,inf,extra\n"
        "A3,2025-01-01,0,99999999999999999999999\n"
    ).encode())
    write(tmp_path, "tickets.csv", b"ticket_id,account_id,created_at\nT1,A1,2024-12-01\nT2,A\xe91,2024-12-02\n")
    frames, report = read_history(tmp_path)
    assert list(frames["accounts_history"]["account_id"]) == ["A1", "A3"]
    assert list(frames["tickets"]["ticket_id"]) == ["T1"]
    lines = report.lines()
    assert any(l.startswith("accounts_history.csv line 3: accounts_history A2: (row)") for l in lines), lines
    assert any(l.startswith("accounts_history.csv line 4: accounts_history A3: seats_purchased:") for l in lines), lines
    assert "tickets.csv line 3: tickets T2: account_id: not UTF-8 text (byte 0xe9 at position 2) (record skipped)" in lines


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_given_ids_that_look_like_numbers_then_they_stay_text(tmp_path, fmt):
    frame = pd.DataFrame({"account_id": ["001", "002"], "name": ["007", "x"], "arr": [1.0, 2.0]})
    path = tmp_path / f"accounts.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    got, report = read_frame(path, "accounts")
    assert list(got["account_id"]) == ["001", "002"] and list(got["name"]) == ["007", "x"] and not report


def test_given_quoted_values_with_newlines_then_lines_still_point_at_the_record(tmp_path):
    path = write(tmp_path, "accounts.csv", (
        'account_id,name,seats_purchased\n'
        'A1,"two\nlines",5\n'
        'A2,"say ""hi""",abc\n'
    ).encode())
    got, report = read_frame(path, "accounts")
    assert list(got["name"]) == ["two\nlines", 'say "hi"']
    assert report.lines() == ["accounts.csv line 4: accounts A2: seats_purchased: not a number: 'abc' (value ignored)"]


def test_given_values_that_look_like_terminal_markup_when_printed_as_text_then_they_are_shown_not_interpreted(tmp_path):
    src = write(tmp_path / "in", "accounts.csv", f"{HEADER}\nA1,[bold]Acme,smb,[/x],9,2.5,2024-01-01\n".encode()).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env["HEALTHSYNC__STATE__URL"] = f"sqlite:///{tmp_path}/state.db"
    r = subprocess.run([str(BIN), "score", "--input", str(src), "--output", str(tmp_path / "o.csv")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in r.stderr and r.returncode == 1, r.stderr
    assert "not a number: '[/x]'" in " ".join(r.stderr.split())


@pytest.mark.parametrize("where", ["under_a_file", "in_proc"])
def test_given_an_output_that_cannot_be_written_then_exit_2_names_it_without_a_traceback(tmp_path, where):
    src = tmp_path / "in"
    src.mkdir()
    (src / "accounts.csv").write_bytes((FIXTURE / "accounts.csv").read_bytes())
    output = src / "accounts.csv" / "scored.csv" if where == "under_a_file" else Path("/proc/healthsync-nowhere/scored.csv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env["HEALTHSYNC__STATE__URL"] = f"sqlite:///{tmp_path}/state.db"
    r = subprocess.run([str(BIN), "score", "--input", str(src), "--output", str(output), "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in r.stderr and r.returncode == 2, (r.returncode, r.stderr)
    assert str(output) in "".join(r.stderr.split())  # rich wraps long lines
