"""Readers of what reached the emulated APIs, and checks of CRM state against the state store."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pandas as pd

from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.state import StateStore
#: POST endpoints that only read (everything else that is not GET is a write)
_READ_POSTS = re.compile(r"(/search|/batch/read|oauth2/token|users\.lookupByEmail|conversations\.open|/query)")


def writes(requests: list[dict]) -> list[dict]:
    """Requests that change something in a CRM or Slack."""
    return [r for r in requests if r["method"] in ("PATCH", "PUT", "DELETE")
            or (r["method"] == "POST" and not _READ_POSTS.search(r["path"]))]


def field_writes(requests: list[dict]) -> list[dict]:
    """Record updates (Salesforce PATCH, HubSpot batch update)."""
    return [r for r in writes(requests) if (r["api"] == "salesforce" and r["method"] == "PATCH")
            or (r["api"] == "hubspot" and "/batch/update" in r["path"])]


def slack_posts(requests: list[dict]) -> list[dict]:
    return [r for r in requests if r["api"] == "slack" and "chat.postMessage" in r["path"] and r["status"] == 200]


def task_creates(requests: list[dict]) -> list[dict]:
    return [r for r in writes(requests) if r["api"] in ("salesforce", "hubspot") and r not in field_writes([r])
            and "properties" not in r["path"] and "CustomField" not in r["path"]]


# ----------------------------------------------------------------------------- CRM values vs state


def crm_values(sb: Sandbox, crm: str, object: str) -> dict[str, dict]:
    """canonical record id -> its field values in the emulated CRM (live records only)."""
    if crm == "salesforce":
        sobject = {"accounts": "Account", "opportunities": "Opportunity"}[object]
        return {f"sf:{r['Id']}": r for r in sb.records("salesforce", sobject) if not r.get("IsDeleted")}
    htype = {"accounts": "companies", "opportunities": "deals"}[object]
    return {f"hs:{r['id']}": r["properties"] for r in sb.records("hubspot", htype) if not r.get("archived")}


def same_value(crm_value, pushed_value) -> bool:
    """A CRM's spelling of a value (HubSpot strings, Salesforce datetimes) equals what healthsync stored."""
    if pushed_value is None:
        return crm_value in (None, "")
    if crm_value in (None, ""):
        return False
    if isinstance(pushed_value, (int, float)) and not isinstance(pushed_value, bool):
        try:
            return math.isclose(float(crm_value), float(pushed_value), abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    if isinstance(pushed_value, str) and re.match(r"^\d{4}-\d\d-\d\dT", pushed_value):
        a = pd.Timestamp(crm_value)
        b = pd.Timestamp(pushed_value)
        a = a.tz_convert("UTC").tz_localize(None) if a.tzinfo else a
        b = b.tz_convert("UTC").tz_localize(None) if b.tzinfo else b
        return a == b
    return str(crm_value) == str(pushed_value)


def assert_crm_matches_pushed(sb: Sandbox, store: StateStore, crms=("salesforce", "hubspot")) -> int:
    """Every field healthsync recorded as confirmed holds exactly that value in the CRM; returns fields checked."""
    checked = 0
    for crm in crms:
        for object in ("accounts", "opportunities"):
            in_crm = crm_values(sb, crm, object)
            for record_id, fields in store.pushed_values(crm, object).items():
                assert record_id in in_crm, f"{crm} {object} {record_id} was pushed but is not in the CRM"
                for field, value_json in fields.items():
                    expected = json.loads(value_json)
                    actual = in_crm[record_id].get(field)
                    assert same_value(actual, expected), f"{crm} {record_id} {field}: CRM {actual!r} != confirmed {expected!r}"
                    checked += 1
    return checked


def assert_no_duplicate_tasks(sb: Sandbox) -> Counter:
    keys = Counter()
    for t in sb.records("salesforce", "Task"):
        if not t.get("IsDeleted") and t.get("Healthsync_Key__c"):
            keys[("salesforce", t["Healthsync_Key__c"])] += 1
    for t in sb.records("hubspot", "tasks"):
        if not t.get("archived") and t["properties"].get("healthsync_key"):
            keys[("hubspot", t["properties"]["healthsync_key"])] += 1
    dupes = {k: n for k, n in keys.items() if n > 1}
    assert not dupes, f"duplicate tasks: {dupes}"
    return keys


def assert_no_duplicate_messages(sb: Sandbox, store: StateStore) -> int:
    """Every Slack message the sandbox received is one recorded (episode, level, kind) key, sent once.

    (Text alone does not identify a message: both sandbox CRMs hold accounts with the same
    names and owners, so two episodes can read alike in the same DM.)
    """
    from sqlalchemy import select

    from healthsync.sync.state import escalations

    messages = sb.slack_messages()
    ts_seen = Counter(m["ts"] for m in messages)
    assert all(n == 1 for n in ts_seen.values())
    # data-quality alerts to the ops channel (sync/data_quality.py) are keyed by their change of state: each once
    dq_keys = [key for key in (((m.get("metadata") or {}).get("event_payload") or {}).get("key") or "" for m in messages)
               if key.startswith("dq-")]
    assert len(dq_keys) == len(set(dq_keys)), "a data-quality alert was posted twice"
    messages = [m for m in messages
                if not (((m.get("metadata") or {}).get("event_payload") or {}).get("key") or "").startswith("dq-")]
    with store.engine.connect() as conn:
        keys = conn.execute(select(escalations.c.episode_id, escalations.c.level, escalations.c.kind, escalations.c.ts)).all()
    recorded = {k.ts for k in keys if k.ts}  # one message may cover several keys (a digest)
    pending = [k for k in keys if not k.ts]  # "maybe sent" markers (at-most-once)
    assert recorded <= set(ts_seen), "a recorded message is not in Slack"
    assert len(messages) <= len(recorded) + len(pending), f"{len(messages)} messages for {len(recorded)} recorded sends: something was sent twice"
    return len(messages)
