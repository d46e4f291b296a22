"""`healthsync report --out FILE.html [--owner EMAIL]` over the state a sandbox run left behind."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dom import by_id, parse
from healthsync.sync.cli import app


def test_given_a_run_when_reporting_for_one_owner_then_the_file_holds_only_their_book(sandbox_report, tmp_path):
    _summary, _path, store, settings = sandbox_report
    owner = store.load_replica("hubspot", "accounts")[0]["owner_email"]
    mine = sum(1 for crm in ("salesforce", "hubspot") for a in store.load_replica(crm, "accounts") if a["owner_email"] == owner)
    out = tmp_path / "book.html"
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--owner", owner, "--json"],
                                env={"HEALTHSYNC__STATE__URL": settings.state.url})
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["accounts"] == mine and printed["path"] == str(out)
    els = parse(out.read_text())
    assert int(by_id(els, "kpi-accounts").get("data-value")) == mine
    assert {e.get("data-owner") for e in els if e.tag == "details" and "owner" in e.classes} == {owner}


def test_given_no_run_yet_when_reporting_then_the_report_says_to_run_first(tmp_path):
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", "--out", str(out)], env={"HEALTHSYNC__STATE__URL": f"sqlite:///{tmp_path}/new.db"})
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "No scored run in the state store yet: run `healthsync run` first." in html
    assert by_id(parse(html), "kpi-accounts").get("data-value") == "0"
