"""`healthsync report --out FILE.html [--owner EMAIL|NAME] [--account ID [--customer]]` over a sandbox run's state."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from healthsync.sync.cli import app
from report_store import latest_accounts


def _invoke(settings, *args):
    return CliRunner().invoke(app, ["report", *args], env={"HEALTHSYNC__STATE__URL": settings.state.url})


def test_given_a_run_when_reporting_for_one_owner_by_email_or_name_then_the_file_holds_only_their_book(sandbox_report, tmp_path):
    _summary, _path, store, settings = sandbox_report
    frame = latest_accounts(store)
    owner = store.load_replica("hubspot", "owners")[0]
    mine = int((frame["owner_email"] == owner["email"]).sum())
    for who in (owner["email"], owner["name"].upper()):
        out = tmp_path / "book.html"
        result = _invoke(settings, "--out", str(out), "--owner", who, "--json")
        assert result.exit_code == 0, result.output
        printed = json.loads(result.stdout.strip().splitlines()[-1])
        assert printed["accounts"] == mine and printed["path"] == str(out) and printed["size_bytes"] == out.stat().st_size


def test_given_an_unknown_owner_then_exit_2_names_it_and_the_nearest_known(sandbox_report, tmp_path):
    _summary, _path, store, settings = sandbox_report
    owner = store.load_replica("salesforce", "owners")[1]
    typo = owner["email"].replace("@", "@@")
    out = tmp_path / "none.html"
    result = _invoke(settings, "--out", str(out), "--owner", typo)
    assert result.exit_code == 2
    assert f"--owner '{typo}'" in result.output and "nearest known" in result.output and owner["email"] in result.output
    assert not out.exists()


def test_given_an_unknown_account_then_exit_2_names_it_and_the_nearest_known(sandbox_report, tmp_path):
    _summary, _path, store, settings = sandbox_report
    frame = latest_accounts(store)
    name = frame.sort_values("account_id").iloc[0]["name"]
    typo = name[:-1] + "x"
    for extra in ([], ["--customer"]):
        result = _invoke(settings, "--out", str(tmp_path / "a.html"), "--account", typo, *extra)
        assert result.exit_code == 2, result.output
        assert f"--account '{typo}'" in result.output and name in result.output


def test_given_one_account_then_the_report_opens_on_it(sandbox_report, tmp_path):
    _summary, _path, store, settings = sandbox_report
    aid = latest_accounts(store).sort_values("account_id").iloc[-1]["account_id"]
    result = _invoke(settings, "--out", str(tmp_path / "one.html"), "--account", aid, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["accounts"] == 1


def test_given_customer_without_an_account_then_exit_2(sandbox_report, tmp_path):
    _summary, _path, _store, settings = sandbox_report
    result = _invoke(settings, "--out", str(tmp_path / "c.html"), "--customer")
    assert result.exit_code == 2 and "--customer needs --account" in result.output


def test_given_no_run_yet_when_reporting_then_the_report_says_to_run_first(tmp_path):
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", "--out", str(out)], env={"HEALTHSYNC__STATE__URL": f"sqlite:///{tmp_path}/new.db"})
    assert result.exit_code == 0, result.output
    assert "No scored run in the state store yet: run `healthsync run` first." in out.read_text()
