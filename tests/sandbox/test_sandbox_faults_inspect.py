"""Fault injection, the clock, the inspection endpoint, the ready file and `serve`."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timedelta

import pytest
import requests
from simple_salesforce.exceptions import SalesforceGeneralError

from healthsync.connectors.sandbox import Sandbox, parse_spec
from healthsync.connectors.sandbox.faults import FaultInjector
from healthsync.connectors.sandbox.serve import serve
from sandbox_helpers import hs_client, sf_client, slack_client, tiny_portfolio


def test_spec_parsing_and_clear_errors():
    assert parse_spec("salesforce.error_rate=0.1,hubspot.burst_429=5,slack.drop_rate=0.05") == {
        "salesforce": {"error_rate": 0.1}, "hubspot": {"burst_429": 5}, "slack": {"drop_rate": 0.05}}
    assert parse_spec("all.latency_ms=20")["slack"] == {"latency_ms": 20.0}
    for bad, needle in [("salesforce.error_rate", "api.key=value"), ("zendesk.error_rate=1", "unknown api"),
                        ("slack.nope=1", "unknown setting"), ("slack.drop_rate=x", "needs a number")]:
        with pytest.raises(ValueError, match=needle):
            parse_spec(bad)
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultInjector(1, parse_spec("hubspot.error_rate=2"))


def test_fault_decisions_are_deterministic_for_a_seed():
    def run(seed):
        inj = FaultInjector(seed, {"salesforce": {"error_rate": 0.3, "drop_rate": 0.1}})
        return [(d.action, d.status) for d in (inj.decide("salesforce", True) for _ in range(200))]

    assert run(5) == run(5) and run(5) != run(6)
    actions = [a for a, _ in run(5)]
    assert 30 < actions.count("error") < 90 and 5 < actions.count("drop") < 40


def test_faulted_writes_have_no_effect_and_lost_responses_do(sandbox):
    sf = sf_client(sandbox)
    acc = sf.query("SELECT Id, ARR__c FROM Account WHERE Name = 'Acme 1'")["records"][0]
    sandbox.set_faults(api="salesforce", error_rate=1.0)
    with pytest.raises(SalesforceGeneralError) as failed:
        sf.Account.update(acc["Id"], {"ARR__c": 1.0})
    assert failed.value.status in (500, 502, 503) and isinstance(failed.value.content, list)
    assert sandbox.record("salesforce", "Account", acc["Id"])["ARR__c"] == acc["ARR__c"]
    sandbox.set_faults({"salesforce": {"error_rate": 0.0, "lost_response_rate": 1.0}})
    with pytest.raises(requests.exceptions.ConnectionError):
        sf.Account.update(acc["Id"], {"ARR__c": 7.0})
    assert sandbox.record("salesforce", "Account", acc["Id"])["ARR__c"] == 7.0  # applied, answer lost
    sandbox.set_faults({"salesforce": "reset", "slack": {"drop_rate": 1.0}})
    with pytest.raises(Exception):
        slack_client(sandbox).chat_postMessage(channel="#general", text="dropped")
    assert sandbox.slack_messages() == []
    reqs = sandbox.requests()["requests"]
    assert [(r["status"], r["fault"]) for r in reqs if r["api"] == "salesforce"][-2:] == [
        (failed.value.status, "error"), (0, "lost_response")]
    slack = [(r["status"], r["fault"]) for r in reqs if r["api"] == "slack"]
    assert slack and set(slack) == {(0, "drop")}  # slack_sdk retries a dropped connection once by default


def test_token_endpoint_is_never_faulted_and_latency_is_added():
    with Sandbox(portfolio=tiny_portfolio(3), faults="salesforce.error_rate=1,salesforce.latency_ms=150") as sb:
        r = sb.ready["salesforce"]
        token = requests.post(r["instance_url"] + "/services/oauth2/token", verify=r["ca_file"],
                              data={"grant_type": "password", "client_id": r["consumer_key"],
                                    "username": r["username"], "password": r["password"]})
        assert token.status_code == 200 and token.json()["instance_url"] == r["instance_url"]
        started = time.monotonic()
        res = requests.get(r["instance_url"] + "/services/data/v59.0/limits/", verify=r["ca_file"],
                           headers={"Authorization": f"Bearer {token.json()['access_token']}"})
        assert res.status_code in (500, 502, 503) and time.monotonic() - started >= 0.15


def test_inspection_endpoint_requests_state_faults_clock(sandbox):
    base = sandbox.ready["inspect_url"]
    sf = sf_client(sandbox)
    sf.query("SELECT Id FROM Account")
    mark = requests.get(base + "/requests").json()["last_seq"]
    hs_client(sandbox).crm.companies.basic_api.get_page(limit=1)
    after = requests.get(base + "/requests", params={"since": mark}).json()
    assert after["counts"] == {"hubspot": {"GET /crm/v3/objects/{type}": 1}}
    assert [(q["api"], q["method"], q["status"]) for q in after["requests"]] == [("hubspot", "GET", 200)]

    accounts = requests.get(base + "/state/salesforce/Account").json()
    assert len(accounts) == 30 and {"Id", "ARR__c", "SystemModstamp", "IsDeleted"} <= set(accounts[0])
    companies = requests.get(base + "/state/hubspot/companies").json()
    assert len(companies) == 30 and companies[0]["properties"]["name"] == "Acme 0"
    assert requests.get(base + "/state/salesforce/Widget").status_code == 400

    before = sandbox.clock.now()
    moved = requests.post(base + "/clock", json={"advance_seconds": 7200}).json()
    assert moved["offset_seconds"] == 7200
    target = accounts[3]["Id"]
    changed = requests.post(f"{base}/state/salesforce/Account/{target}", json={"ARR__c": 5.5}).json()
    stamp = datetime.strptime(changed["SystemModstamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert changed["ARR__c"] == 5.5 and stamp - before >= timedelta(seconds=7200)
    assert requests.post(f"{base}/state/salesforce/Account/{target}", json={"Nope__c": 1}).status_code == 400

    set_faults = requests.post(base + "/faults", json={"hubspot": {"burst_429": 1}}).json()
    assert set_faults["hubspot"]["burst_429"] == 1
    limited = requests.get(sandbox.ready["hubspot"]["host"] + "/crm/v3/objects/companies",
                           headers={"Authorization": f"Bearer {sandbox.ready['hubspot']['access_token']}"})
    assert limited.status_code == 429 and limited.json()["policyName"] == "TEN_SECONDLY_ROLLING"
    slack_client(sandbox).chat_postMessage(channel="#revops", text="hello")
    assert [m["text"] for m in requests.get(base + "/slack/messages").json()] == ["hello"]
    assert requests.delete(f"{base}/state/hubspot/companies/{companies[0]['id']}").status_code == 204
    assert sandbox.record("hubspot", "companies", companies[0]["id"])["archived"] is True


def test_ready_file_and_serve_until_stopped(tmp_path):
    ready = tmp_path / "ready.json"
    stop = threading.Event()
    codes = []
    worker = threading.Thread(target=lambda: codes.append(serve(0, 7, "starter", "slack.latency_ms=1", ready,
                                                                portfolio=tiny_portfolio(3), stop_event=stop)))
    worker.start()
    try:
        for _ in range(200):
            if ready.exists():
                break
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert set(info) == {"salesforce", "hubspot", "slack", "inspect_url"}
        assert set(info["salesforce"]) == {"instance_url", "access_token", "ca_file", "username", "password",
                                           "consumer_key"}
        assert info["hubspot"]["host"].startswith("http://127.0.0.1:")
        assert info["slack"]["base_url"].startswith("http://127.0.0.1:") and info["slack"]["base_url"].endswith("/api/")
        assert oct(os.stat(ready).st_mode & 0o777) == "0o600"
        assert requests.get(info["inspect_url"] + "/faults").json()["slack"]["latency_ms"] == 1
    finally:
        stop.set()
        worker.join(10)
    assert codes == [0] and not ready.exists()
    for url in (info["inspect_url"], info["hubspot"]["host"], info["slack"]["base_url"]):
        with pytest.raises(requests.exceptions.ConnectionError):  # every server is gone
            requests.get(url, timeout=2)
    assert serve(0, 7, "starter", "bogus", None) == 2


def test_only_loopback_is_bound(sandbox):
    bound = [s._server.server_address for s in sandbox._servers]
    assert len(bound) == 4 and {host for host, _ in bound} == {"127.0.0.1"}
    assert all(0 < port < 65536 for _, port in bound)
