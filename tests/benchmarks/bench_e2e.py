"""Benchmark: whole `healthsync run`s against the sandbox at scale, next to the floor of the APIs' documented limits.

    nice .venv/bin/python tests/benchmarks/bench_e2e.py --accounts 20000 [--days 2] [--out results.json]

Not run by CI (issue 14 item 7). What it does, each step a real process talking real HTTP:

1. `healthsync sandbox serve --accounts N` (professional HubSpot tier; N accounts per CRM, each with
   ~5 opportunities and ~10 tickets; the seeding spreads modification stamps over the past year). Its
   clock is then moved on to the next 07:00 UTC, so that no day's runs cross midnight whenever the bench starts.
2. The first sync: `healthsync run --sandbox READY --config CONFIG --json` in a fresh state. Printed:
   wall time, the client's CPU time (rusage of the child), the calls per endpoint from the emulators'
   request log (`GET /requests`), and the **floor**: the calls the same work needs at the documented
   maximum page and batch sizes, divided by the documented rate (the derivation is printed).
3. Then `--days` days, each: 1% of the accounts of each CRM changed through the inspection API
   (`POST /state/{api}/{object}/{id}`, as a person's edit: half slip, half recover), the emulator clock
   advanced a day (`POST /clock`), one run. The first of them also re-reads, in HubSpot, every record
   the first sync wrote (HubSpot cannot leave our own writes out of a read; connectors/BEHAVIOR.md).
4. Two runs with no change, each ten minutes (emulator clock) after the one before, as scheduled runs are: the
   first lists the day's own writes again in HubSpot (search cannot leave them out), the second is the steady
   state. Both reuse the last scores (sync/score_memo.py).
5. Day one's workload: tasks per owner (max, median) and expansion tasks, from the state database.

Every figure is printed with the machine's load (`os.getloadavg`) before and after it. `--out` writes
everything as JSON. Runs with the default configuration (report off, default lookbacks, pacing at the
whole allowance); `--no-warehouse` sandbox (usage comes from the CRM fields).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
HEALTHSYNC = str(BIN / "healthsync")

# ------------------------------------------------------------------ documented limits (shared/reference/crm-api-notes.md)
#: HubSpot professional: 190 requests per rolling 10 s (2.8); search 5 per second (2.4), counted in both
HS_PER_S = 190 / 10.0
HS_SEARCH_PER_S = 5.0
HS_LIST_PAGE = 100  # list paging maximum (2.2), associations included
HS_BATCH = 100  # batch update / create inputs (2.3)
HS_SEARCH_PAGE = 200  # search page maximum (2.4)
HS_OWNERS_PAGE = 100  # owners page the SDK documents (2.7)
SF_QUERY_PAGE = 2000  # query batch maximum (1.x "Batch size")
SF_COLLECTION = 200  # sObject collections (1.6)
SF_BULK_THRESHOLD = 2000  # healthsync switches to Bulk 2.0 above this (sources.salesforce.bulk_threshold)
#: a Bulk 2.0 ingest job at the least: create, upload, close, status polls until JobComplete (the sandbox
#: answers UploadComplete, InProgress x3, then JobComplete: 4 polls at the least), successful and failed results
SF_BULK_CALLS = 3 + 4 + 2


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def http_json(url: str, body: dict | None = None, method: str | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        text = resp.read()
    return json.loads(text) if text else {}


# ------------------------------------------------------------------ the sandbox


def stage_of(request: dict) -> str:
    """The run stage a recorded request belongs to, from its endpoint and path (for the timeline)."""
    api, endpoint, path = request["api"], request["endpoint"], request["path"]
    if api == "slack":
        return "alerts"
    if "task" in path.lower():
        return "tasks"
    if "describe" in endpoint or "/properties/" in path or "CustomField" in endpoint:
        return "fields check"
    if "owners" in path or "userinfo" in endpoint or "account-info" in path:
        return "owners and instance"
    if endpoint.startswith("GET") or "/search" in path or "/associations/" in path:
        return "pull"
    return "write-back"


class SandboxProcess:
    def __init__(self, accounts: int, seed: int, workdir: Path, extra: list[str]):
        self.ready_file = workdir / "ready.json"
        self.log = open(workdir / "sandbox.log", "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [HEALTHSYNC, "sandbox", "serve", "--accounts", str(accounts), "--seed", str(seed), "--hubspot-tier", "professional",
             "--no-warehouse", "--ready-file", str(self.ready_file), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 3600
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise SystemExit(f"sandbox exited with {self.proc.returncode}; see {workdir / 'sandbox.log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("sandbox did not start within an hour")
            time.sleep(0.5)
        time.sleep(0.2)
        self.ready = json.loads(self.ready_file.read_text())
        self.inspect = self.ready["inspect_url"]
        self.start_s = time.perf_counter() - t0

    def last_seq(self) -> int:
        return int(http_json(f"{self.inspect}/requests?since=999999999999")["last_seq"])

    def counts_since(self, seq: int, marks: list[tuple[float, int]]) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, list[float]]]]:
        """Calls per API and endpoint since `seq`, and the timeline: per API and stage, [first, last] call in
        seconds after the run started (wall clock, to the second: `marks` are (seconds, last request seq)
        sampled every second during the run; the emulators' own clock runs ahead of the wall clock, as it
        gives every record written a distinct modification time), so the lanes' overlap shows."""
        reply = http_json(f"{self.inspect}/requests?since={seq}")
        out: dict[str, Counter] = {}
        spans: dict[str, dict[str, list[float]]] = {}
        for r in reply["requests"]:
            out.setdefault(r["api"], Counter())[r["endpoint"]] += 1
            t = next((at for at, last in marks if last >= r["seq"]), marks[-1][0] if marks else 0.0)
            span = spans.setdefault(r["api"], {}).setdefault(stage_of(r), [t, t])
            span[0], span[1] = min(span[0], t), max(span[1], t)
        return {api: dict(sorted(c.items())) for api, c in out.items()}, spans

    def advance(self, seconds: float) -> None:
        http_json(f"{self.inspect}/clock", {"advance_seconds": seconds})

    def to_morning(self, hour: int = 7) -> datetime:
        """Move the emulator clock on to the next `hour`:00 UTC, so the runs after it stay on one day.

        A day's runs (the day, then two no-change runs ten and twenty minutes on) that cross UTC
        midnight are rightly not "no change": the new day moves every score (decay, days in band)
        and releases the next day's queued tasks. A bench started in the evening measured that.
        """
        now = datetime.fromisoformat(http_json(f"{self.inspect}/clock")["now"])
        morning = now.replace(hour=hour, minute=0, second=0, microsecond=0)
        if morning <= now:
            morning += timedelta(days=1)
        self.advance((morning - now).total_seconds())
        return morning

    def modify(self, api: str, obj: str, record_id: str, fields: dict) -> None:
        http_json(f"{self.inspect}/state/{api}/{obj}/{record_id}", fields)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------ one run


def run_once(sb: SandboxProcess, workdir: Path, label: str, profile: str | None = None) -> dict:
    """`healthsync run --json` as a child process: its summary, wall and CPU time, calls per endpoint."""
    seq = sb.last_seq()
    before = load()
    cmd = [HEALTHSYNC, "run", "--sandbox", str(sb.ready_file), "--config", str(workdir / "config.yaml"), "--json"]
    if profile:
        cmd = [str(BIN / "py-spy"), "record", "--nonblocking", *(["--idle"] if os.environ.get("BENCH_IDLE") else []), "-r", "50", "-f", "speedscope",
               "-o", str(workdir / f"profile-{label}.json"), "--", *cmd]
    t0 = time.perf_counter()
    marks: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:  # (seconds since start, last request seq), once a second: the timeline's clock
        while not done.wait(1.0):
            try:
                marks.append((round(time.perf_counter() - t0, 1), sb.last_seq()))
            except OSError:
                pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(workdir / f"run-{label}.log", "w"))
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    marks.append((round(wall, 1), sb.last_seq()))
    try:  # py-spy (--profile) writes its own "py-spy> ..." lines around the run's one JSON object
        text = out.decode()
        summary = json.JSONDecoder().raw_decode(text, text.index("{"))[0]
    except ValueError:
        raise SystemExit(f"run {label}: no JSON on stdout (exit {status >> 8}); see {workdir}/run-{label}.log")
    calls, timeline = sb.counts_since(seq, marks)
    return {"label": label, "timeline": timeline, "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "max_rss_mb": round(usage.ru_maxrss / 1024), "load_before": before, "load_after": load(),
            "exit_code": status >> 8, "summary": summary, "calls": calls}


# ------------------------------------------------------------------ the floor


def hubspot_minimum(pulled: dict, written: dict, tasks: int, owners: int, *, full: bool) -> dict:
    """HubSpot calls the work needs at the documented maximum page and batch sizes."""
    calls = {"properties (fields check, per object)": 4, "account details": 1,
             "owners": math.ceil(owners / HS_OWNERS_PAGE)}
    searches = 0
    for obj, n in pulled.items():
        if full:
            calls[f"list {obj} ({n:,} / {HS_LIST_PAGE})"] = max(1, math.ceil(n / HS_LIST_PAGE))
        else:  # changed records: search pages of 200 (associations of deals/tickets: 1 read per 1,000)
            s = max(1, math.ceil(n / HS_SEARCH_PAGE))
            searches += s
            calls[f"search {obj} ({n:,} / {HS_SEARCH_PAGE})"] = s
            if obj != "accounts" and n:
                calls[f"associations {obj} ({n:,} / 1,000)"] = math.ceil(n / 1000)
    for obj, n in written.items():
        if n:
            calls[f"batch update {obj} ({n:,} / {HS_BATCH})"] = math.ceil(n / HS_BATCH)
    if tasks:
        calls[f"batch create tasks ({tasks:,} / {HS_BATCH})"] = math.ceil(tasks / HS_BATCH)
    calls["task read-back (search)"] = 1
    searches += 1
    total = sum(calls.values())
    seconds = max(total / HS_PER_S, searches / HS_SEARCH_PER_S)
    return {"calls": calls, "total": total, "searches": searches, "seconds": round(seconds, 1)}


def salesforce_minimum(pulled: dict, written: dict, tasks: int, *, full: bool) -> dict:
    calls = {"describe (fields check, per object)": 4, "owners (User query)": 1, "task read-back (query)": 1}
    for obj, n in pulled.items():
        calls[f"query {obj} ({n:,} / {SF_QUERY_PAGE})"] = max(1, math.ceil(n / SF_QUERY_PAGE))
        if not full:
            calls[f"deleted {obj}"] = 1
    for obj, n in list(written.items()) + [("tasks", tasks)]:
        if not n:
            continue
        if n > SF_BULK_THRESHOLD:
            calls[f"write {obj} ({n:,}: one Bulk 2.0 job)"] = SF_BULK_CALLS
        else:
            calls[f"write {obj} ({n:,} / {SF_COLLECTION})"] = math.ceil(n / SF_COLLECTION)
    return {"calls": calls, "total": sum(calls.values())}


def work_of(result: dict, state_db: Path, run_id: str) -> dict:
    """What a run did, per CRM: records pulled and written per object, tasks created."""
    s = result["summary"]
    with sqlite3.connect(state_db) as db:
        tasks = dict(db.execute("SELECT crm, COUNT(*) FROM episodes WHERE task_origin = 'created' AND task_id IS NOT NULL "
                                "AND opened_at >= (SELECT started_at FROM runs WHERE run_id = ?) GROUP BY crm", (run_id,)).fetchall())
    out = {}
    for crm in ("salesforce", "hubspot"):
        pulled = {obj: v.get("records", 0) for obj, v in (s.get("pulled", {}).get(crm) or {}).items()}
        written = dict((s.get("writes", {}).get(crm) or {}).get("by_object") or {})
        out[crm] = {"pulled": pulled, "written": written, "tasks": int(tasks.get(crm, 0))}
    return out


def print_floor(result: dict, work: dict, owners: int, *, full: bool) -> dict:
    hs = hubspot_minimum(work["hubspot"]["pulled"], work["hubspot"]["written"], work["hubspot"]["tasks"], owners, full=full)
    sf = salesforce_minimum(work["salesforce"]["pulled"], work["salesforce"]["written"], work["salesforce"]["tasks"], full=full)
    made_hs = sum(result["calls"].get("hubspot", {}).values())
    made_sf = sum(result["calls"].get("salesforce", {}).values())
    print(f"  floor derivation (documented limits; HubSpot professional {HS_PER_S:.0f}/s, search {HS_SEARCH_PER_S:.0f}/s):")
    for name, n in hs["calls"].items():
        print(f"    hubspot    {n:>7,}  {name}")
    print(f"    hubspot    {hs['total']:>7,}  total -> {hs['total']:,} / {HS_PER_S:.0f} per s"
          f" (searches {hs['searches']} / {HS_SEARCH_PER_S:.0f} per s) = {hs['seconds']} s")
    for name, n in sf["calls"].items():
        print(f"    salesforce {n:>7,}  {name}")
    print(f"    salesforce {sf['total']:>7,}  total (no per-second limit documented; runs beside HubSpot)")
    ratio = result["wall_s"] / hs["seconds"] if hs["seconds"] else float("nan")
    print(f"  calls made: hubspot {made_hs:,} (minimum {hs['total']:,}), salesforce {made_sf:,} (minimum {sf['total']:,})")
    print(f"  wall {result['wall_s']} s = {ratio:.2f} x the floor of {hs['seconds']} s")
    return {"hubspot_minimum": hs, "salesforce_minimum": sf, "hubspot_calls": made_hs, "salesforce_calls": made_sf,
            "floor_s": hs["seconds"], "ratio": round(ratio, 3)}


def print_run(result: dict) -> None:
    s = result["summary"]
    writes = {crm: w.get("by_object") for crm, w in (s.get("writes") or {}).items()}
    pulled = {crm: {o: v.get("records") for o, v in objs.items()} for crm, objs in (s.get("pulled") or {}).items()}
    print(f"[{result['label']}] wall {result['wall_s']} s, client CPU {result['cpu_s']} s, max RSS {result['max_rss_mb']} MB, "
          f"exit {result['exit_code']} ({s.get('status')}); load before {result['load_before']}, after {result['load_after']}")
    print(f"  pulled {pulled}")
    print(f"  written {writes}; tasks {s.get('tasks_created')} (queued {s.get('tasks_queued')}), alerts {s.get('alerts_sent')}, "
          f"escalations {s.get('escalations')}")
    for api, counts in result["calls"].items():
        print(f"  {api}: {sum(counts.values()):,} calls: " + ", ".join(f"{e} {n}" for e, n in counts.items()))
    for api, spans in result["timeline"].items():
        print(f"  timeline {api}: " + ", ".join(f"{stage} {a:.0f}-{b:.0f} s" for stage, (a, b) in sorted(spans.items(), key=lambda kv: kv[1])))
    if s.get("errors"):
        print(f"  errors: {s['errors'][:5]}")


# ------------------------------------------------------------------ a day of changes


def _number(value, default: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(out) else out


def change_accounts(sb: SandboxProcess, state_db: Path, share: float, day: int, seed: int) -> dict[str, int]:
    """Edit `share` of each CRM's accounts as a person would (half slip, half recover), through the inspection API."""
    from healthsync.connectors.sandbox.schema import mapping

    maps = mapping()
    with sqlite3.connect(state_db) as db:
        rows = db.execute("SELECT crm, record_id, data_json FROM replica WHERE object = 'accounts' AND deleted = 0 "
                          "ORDER BY crm, record_id").fetchall()
    by_crm: dict[str, list] = {}
    for crm, rid, data in rows:
        by_crm.setdefault(crm, []).append((rid, json.loads(data)))
    done = {}
    for crm, records in by_crm.items():
        fields = maps[crm]["account"]["read"]
        obj = "Account" if crm == "salesforce" else "companies"
        rng = np.random.default_rng([seed, day, 0 if crm == "salesforce" else 1])
        k = max(1, round(len(records) * share))
        picked = sorted(rng.choice(len(records), size=k, replace=False).tolist())
        for i, index in enumerate(picked):
            rid, data = records[index]
            logins = _number(data.get("logins_per_user_week"), 2.0)
            qbrs = int(_number(data.get("qbrs_missed"), 0))
            late = int(_number(data.get("days_payment_late"), 0))
            if i % 2 == 0:
                values = {"logins_per_user_week": round(logins * 0.3, 1), "qbrs_missed": min(qbrs + 1, 3),
                          "days_payment_late": late + 35, "csm_sentiment": "red"}
            else:
                values = {"logins_per_user_week": round(max(logins * 2.5, 5.0), 1), "qbrs_missed": 0,
                          "days_payment_late": 0, "csm_sentiment": "green"}
            crm_fields = {}
            for column, value in values.items():
                if crm == "hubspot":
                    value = str(int(value)) if isinstance(value, (int, float)) and float(value).is_integer() else str(value)
                crm_fields[fields[column]] = value
            sb.modify(crm, obj, rid.split(":", 1)[1], crm_fields)
        done[crm] = k
    return done


# ------------------------------------------------------------------ day one's workload


def workload(state_db: Path, run_id: str) -> dict:
    with sqlite3.connect(state_db) as db:
        started = db.execute("SELECT started_at FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0]
        rows = db.execute("SELECT lower(owner_email), playbook, status FROM episodes WHERE opened_at >= ?", (started,)).fetchall()
    per_owner = Counter(o for o, _, status in rows if status == "open")
    queued = Counter(o for o, _, status in rows if status == "queued")
    by_playbook = Counter(p for _, p, status in rows if status == "open")
    owners = sorted(set(per_owner) | set(queued))
    counts = [per_owner.get(o, 0) for o in owners]
    return {"owners": len(owners), "tasks": sum(counts), "max": max(counts) if counts else 0,
            "median": statistics.median(counts) if counts else 0, "queued": sum(queued.values()),
            "by_playbook": dict(by_playbook), "expansion": by_playbook.get("expansion_opportunity", 0)}


# ------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounts", type=int, default=20000, help="accounts per CRM")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--days", type=int, default=2, help="days with 1%% of the accounts changed, after the first sync")
    ap.add_argument("--share", type=float, default=0.01, help="share of each CRM's accounts changed per day")
    ap.add_argument("--out", type=Path, help="write every figure as JSON here")
    ap.add_argument("--workdir", type=Path, help="keep the state, logs and profiles here (default: a temporary folder)")
    ap.add_argument("--profile", default="", help="comma-separated run labels to record with py-spy (first, day1, ..., nochange, nochange2)")
    ap.add_argument("--idle", action="store_true", help="with --profile: sample waiting threads too (where the wall time goes)")
    args = ap.parse_args()
    if args.idle:
        os.environ["BENCH_IDLE"] = "1"  # read by run_once's py-spy command

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / ".healthsync").exists():
        shutil.rmtree(workdir / ".healthsync")
    (workdir / "config.yaml").write_text("version: 1\n")
    state_db = workdir / ".healthsync" / "state.db"
    profile = set(filter(None, args.profile.split(",")))
    print(f"bench_e2e: {args.accounts:,} accounts per CRM, seed {args.seed}, workdir {workdir}; load {load()}", flush=True)
    results: dict = {"accounts": args.accounts, "seed": args.seed, "runs": []}

    sb = SandboxProcess(args.accounts, args.seed, workdir, [])
    try:
        morning = sb.to_morning()
        print(f"sandbox started in {sb.start_s:.1f} s, emulator clock moved on to {morning:%Y-%m-%d %H:%M} UTC; load {load()}", flush=True)
        first = run_once(sb, workdir, "first", "first" if "first" in profile else None)
        print_run(first)
        run_id = first["summary"]["run_id"]
        owners = portfolio_owners(args.accounts)
        first["floor"] = print_floor(first, work_of(first, state_db, run_id), owners, full=True)
        first["workload"] = workload(state_db, run_id)
        w = first["workload"]
        print(f"  day one: {w['tasks']:,} tasks over {w['owners']} owners, max {w['max']}, median {w['median']}, "
              f"queued {w['queued']:,}; by playbook {w['by_playbook']}", flush=True)
        results["runs"].append(first)

        for day in range(1, args.days + 1):
            t0 = time.perf_counter()
            changed = change_accounts(sb, state_db, args.share, day, args.seed)
            sb.advance(86400)
            print(f"day {day}: changed {changed} accounts in {time.perf_counter() - t0:.1f} s, clock advanced a day", flush=True)
            label = f"day{day}"
            result = run_once(sb, workdir, label, label if label in profile else None)
            result["changed"] = changed
            print_run(result)
            result["floor"] = print_floor(result, work_of(result, state_db, result["summary"]["run_id"]), owners, full=False)
            results["runs"].append(result)

        # scheduled runs ten minutes apart (emulator clock): the first lists the day's own writes again (HubSpot
        # search cannot leave them out); the second is the steady state, once they are behind the cursor, its
        # lookback (sources.hubspot.lookback_minutes, 5) and the search lag (search_lag_s, 60 s)
        for label in ("nochange", "nochange2"):
            sb.advance(600)
            result = run_once(sb, workdir, label, label if label in profile else None)
            print_run(result)
            reused = [n for n in result["summary"].get("notes", []) if "reused" in n]
            print(f"  scores: {reused[0] if reused else 'scored afresh'}", flush=True)
            results["runs"].append(result)
    finally:
        sb.stop()
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
        print(f"written {args.out}")


def portfolio_owners(accounts: int) -> int:
    """Owners the sandbox seeds for `accounts` (CSMs, their managers, one VP; connectors/demo_data.py)."""
    from healthsync.connectors.demo_data import _csm_count

    csm = _csm_count(accounts)
    return csm + math.ceil(csm / 6) + 1


if __name__ == "__main__":
    main()
