"""`healthsync sandbox serve`: run the emulators until SIGTERM/SIGINT, announcing them in a ready file."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from healthsync.connectors.sandbox.faults import parse_spec
from healthsync.connectors.sandbox.sandbox import DEFAULT_SEARCH_LAG_S, Sandbox


def serve(accounts: int = 500, seed: int = 7, hubspot_tier: str = "professional", faults_spec: str | None = None,
          ready_file: str | Path | None = None, *, portfolio=None, stop_event: threading.Event | None = None,
          same_stamp: int = 0, search_lag_seconds: float = DEFAULT_SEARCH_LAG_S, warehouse: bool = False) -> int:
    """Start the sandbox, write `ready_file` (JSON, mode 600), block until a signal; returns the exit code.

    Returns 2 for a bad `faults_spec`, tier, `same_stamp` or `search_lag_seconds` (configuration error),
    0 after a clean stop. `stop_event` lets an embedding caller stop it without a signal. `warehouse`
    also writes the demo usage to DuckDB (ready["warehouse"]), which commands given the ready file score from.
    """
    try:
        faults = parse_spec(faults_spec)
    except ValueError as e:
        print(f"healthsync sandbox serve: --faults: {e}", file=sys.stderr)
        return 2
    if hubspot_tier not in ("starter", "professional", "enterprise"):
        print(f"healthsync sandbox serve: --hubspot-tier must be starter or professional, got {hubspot_tier!r}",
              file=sys.stderr)
        return 2
    if same_stamp < 0 or search_lag_seconds < 0:
        print("healthsync sandbox serve: --same-stamp and --search-lag must be >= 0", file=sys.stderr)
        return 2
    stop = stop_event or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        with Sandbox(accounts=accounts, seed=seed, hubspot_tier=hubspot_tier, faults=faults,
                     portfolio=portfolio, same_stamp=same_stamp, search_lag_seconds=search_lag_seconds,
                     warehouse=warehouse) as sb:
            if ready_file:
                sb.write_ready_file(ready_file)
            summary = {k: v for k, v in sb.ready.items() if k != "salesforce"}
            print(json.dumps({"sandbox": "ready", "salesforce": sb.ready["salesforce"]["instance_url"],
                              "hubspot": summary["hubspot"]["host"], "slack": summary["slack"]["base_url"],
                              "inspect_url": sb.ready["inspect_url"],
                              "ready_file": str(ready_file) if ready_file else None}), file=sys.stderr, flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if ready_file:
            Path(ready_file).unlink(missing_ok=True)
    return 0
