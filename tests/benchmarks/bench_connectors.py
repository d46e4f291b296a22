"""Benchmark: the connectors against the sandbox — full pull and write-back volume, per CRM.

    .venv/bin/python tests/benchmarks/bench_connectors.py [N]      (default 10000)

Seeds N accounts (no opportunities/tickets) in both CRMs, then per CRM prints the
seconds and API calls of a full accounts pull (canonical frames, validated) and of a
push of N score changes (Salesforce: Bulk API 2.0 above 2,000; HubSpot: batches of
100, paced under the professional tier's 190 requests / 10 s). Not run by CI.
"""

from __future__ import annotations

import sys
import time

import pandas as pd

from healthsync.config.settings import load_settings
from healthsync.connectors.base import Change
from healthsync.connectors.hubspot import hubspot_from_ready
from healthsync.connectors.salesforce import salesforce_from_ready
from healthsync.connectors.sandbox import Sandbox


def accounts_only(n: int, seed: int):
    import dataclasses

    from healthsync.connectors.demo_data import generate_portfolio

    p = generate_portfolio(n, seed)
    return dataclasses.replace(p, opportunities=p.opportunities.iloc[:0], tickets=p.tickets.iloc[:0])


def main(n: int) -> None:
    mapping = load_settings(environ={}).mapping
    with Sandbox(portfolio=accounts_only(n, 11), seed=11, precreate_fields=True) as sb:
        for name, build, m, field in (
            ("salesforce", salesforce_from_ready, mapping.salesforce, "Health_Score__c"),
            ("hubspot", hubspot_from_ready, mapping.hubspot, "health_score"),
        ):
            conn = build(sb.ready, m.model_dump(), **({"bulk_poll_seconds": 0.2} if name == "salesforce" else {}))
            t0 = time.perf_counter()
            frame = pd.concat([p.records for p in conn.pull("accounts")])
            pulled = time.perf_counter() - t0
            calls_pull = conn.stats.calls
            changes = [Change(i, {field: 50}) for i in frame["account_id"]]
            t1 = time.perf_counter()
            results = conn.push("accounts", changes)
            pushed = time.perf_counter() - t1
            ok = sum(r.ok for r in results)
            print(f"{name}: pull {len(frame)} accounts {pulled:.2f}s ({calls_pull} calls); "
                  f"push {ok}/{len(changes)} ok {pushed:.2f}s ({conn.stats.calls - calls_pull} calls)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
