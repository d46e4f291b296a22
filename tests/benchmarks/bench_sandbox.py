"""Benchmark: start the sandbox with N accounts (demo generator, both CRMs) and page every account through simple-salesforce.

    .venv/bin/python tests/benchmarks/bench_sandbox.py [N]      (default 100000)

Prints seconds to start (generation + seeding + servers) and to run
`query_all("SELECT Id, Name, ARR__c, SystemModstamp FROM Account")` (N / 2,000 pages).
Targets from issue 3: start < 30 s, and the 100,000-account query completes.
"""

from __future__ import annotations

import sys
import time

import requests
from simple_salesforce import Salesforce

from healthsync.connectors.sandbox import Sandbox


def main(n: int) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    with Sandbox(accounts=n, seed=7) as sb:
        started, started_cpu = time.perf_counter() - t0, time.process_time() - c0
        r = sb.ready["salesforce"]
        s = requests.Session()
        s.verify, s.trust_env = r["ca_file"], False
        sf = Salesforce(instance_url=r["instance_url"], session_id=r["access_token"], session=s)
        seq = sb.recorder.last_seq
        t1 = time.perf_counter()
        res = sf.query_all("SELECT Id, Name, ARR__c, SystemModstamp FROM Account")
        queried = time.perf_counter() - t1
        pages = sum(sb.requests(since=seq)["counts"]["salesforce"].values())
        sizes = {o: len(v) for o, v in sb.salesforce.records.items()}
        hs_sizes = {o: len(v) for o, v in sb.hubspot.objects.items()}
    print(f"accounts={n} start_s={started:.1f} (cpu {started_cpu:.1f}) query_all_s={queried:.1f} "
          f"records={res['totalSize']} pages={pages}")
    print(f"salesforce={sizes} hubspot={hs_sizes}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
