"""What a run did, as data (`--json`, the `runs` table) and as a readable report.

`RunSummary.to_json()` carries the contract keys of notes/sync_contract.md
(`run_id`, `mode`, `accounts_scored`, `bands`, `writes`, `tasks_created`,
`alerts_sent`, `escalations`, `errors`, `duration_s`) plus extras. A run is
never reported as `ok` when records failed: any write failure, invalid record,
playbook or escalation error makes the status `record_errors` (exit 1).

Status and exit code (README "Exit codes"): `ok` 0; `record_errors` 1; `failed`
2 for a configuration or credentials problem, 1 for an internal error (a bug,
`failure_kind: internal`); `stopped` 3 when a CRM (or Slack) could not go on
(`stopped_reason` says which CRM, which call and what to do; `lanes` gives
each CRM's outcome). A run that any lane stopped is never `ok`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

EXIT_CODES = {"ok": 0, "record_errors": 1, "failed": 2, "stopped": 3, "abandoned": 1}
#: error lines kept in a summary (the rest are counted)
MAX_ERRORS = 200


@dataclass
class RunSummary:
    run_id: str
    mode: str  # sandbox | live
    dry_run: bool = False
    status: str = "running"  # ok | record_errors | stopped | failed
    started_at: str | None = None
    accounts_scored: int = 0
    bands: dict[str, int] = field(default_factory=dict)
    pulled: dict[str, dict[str, dict]] = field(default_factory=dict)  # crm -> object -> counts
    writes: dict[str, dict[str, int]] = field(default_factory=dict)
    opportunities_adjusted: int = 0
    tasks_created: int = 0
    tasks_adopted: int = 0  # open healthsync tasks found in the CRM and taken over (never created twice)
    tasks_queued: int = 0  # episodes waiting under playbooks.max_new_tasks_per_owner_per_day
    episodes_opened: int = 0
    episodes_closed: int = 0
    alerts_sent: int = 0  # alert messages posted (a digest is one message)
    alert_episodes: int = 0  # episodes those alert messages carry
    escalations: int = 0
    recoveries: int = 0
    invalid: int = 0
    data_problems: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stopped_reason: str | None = None
    duration_s: float = 0.0
    diff: dict | None = None  # the dry-run plan (per record `before -> after`)
    report_path: str | None = None
    drift_warnings: list[str] = field(default_factory=list)
    stages_skipped: list[str] = field(default_factory=list)
    _started_monotonic: float = field(default_factory=time.monotonic, repr=False, compare=False)
    state: str | None = None  # where the state store is (a path, or the URL with its password hidden)
    lanes: dict[str, dict] = field(default_factory=dict)  # crm -> {"status", "stages", "stopped"}
    stopped: list[dict] = field(default_factory=list)  # one entry per stopped CRM / Slack (LaneStop.to_json)
    failure_kind: str | None = None  # configuration | credentials | internal, when status is failed
    log_file: str | None = None  # the traceback of an internal error
    data_quality: dict = field(default_factory=dict)  # per source KPIs (sync/data_quality.py)

    @property
    def exit_code(self) -> int:
        if self.status == "failed" and self.failure_kind == "internal":
            return 1
        return EXIT_CODES.get(self.status, 2)

    def add_stop(self, stop) -> None:
        """Record a stopped CRM (a `sync.lanes.LaneStop`); `stopped_reason` lists every one of them."""
        self.stopped.append(stop.to_json())
        line = stop.sentence
        self.stopped_reason = line if not self.stopped_reason else f"{self.stopped_reason} | {line}"
        self.errors.append(f"stopped: {line}")

    def add_errors(self, lines: list[str]) -> None:
        room = MAX_ERRORS - len(self.errors)
        if room > 0:
            self.errors.extend(lines[:room])
        if len(lines) > max(room, 0):
            self._dropped_errors = getattr(self, "_dropped_errors", 0) + len(lines) - max(room, 0)

    def finish_status(self) -> None:
        """ok unless something failed; `failed` (configuration) beats `stopped` beats record errors."""
        if self.status in ("stopped", "failed"):
            return
        kinds = {s.get("kind") for s in self.stopped}
        if kinds & {"configuration", "credentials"}:
            self.status = "failed"
            self.failure_kind = "credentials" if "credentials" in kinds else "configuration"
            return
        if self.stopped:
            self.status = "stopped"
            return
        failed = sum(w.get("failed", 0) for w in self.writes.values())
        self.status = "record_errors" if (self.errors or failed or self.invalid) else "ok"

    def to_json(self, include_diff: bool = True) -> dict[str, Any]:
        dropped = getattr(self, "_dropped_errors", 0)
        errors = list(self.errors) + ([f"... and {dropped} more errors"] if dropped else [])
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "mode": self.mode,
            "status": self.status,
            "exit_code": self.exit_code,
            "dry_run": self.dry_run,
            "started_at": self.started_at,
            "accounts_scored": self.accounts_scored,
            "bands": dict(self.bands),
            "writes": {crm: dict(w) for crm, w in self.writes.items()},
            "opportunities_adjusted": self.opportunities_adjusted,
            "tasks_created": self.tasks_created,
            "tasks_adopted": self.tasks_adopted,
            "tasks_queued": self.tasks_queued,
            "episodes_opened": self.episodes_opened,
            "episodes_closed": self.episodes_closed,
            "alerts_sent": self.alerts_sent,
            "alert_episodes": self.alert_episodes,
            "escalations": self.escalations,
            "recoveries": self.recoveries,
            "invalid": self.invalid,
            "pulled": self.pulled,
            "data_problems": self.data_problems,
            "errors": errors,
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "stopped_reason": self.stopped_reason,
            "stopped": list(self.stopped),
            "lanes": {crm: dict(v) for crm, v in self.lanes.items()},
            "state": self.state,
            "failure_kind": self.failure_kind,
            "log_file": self.log_file,
            "stages_skipped": list(self.stages_skipped),
            "drift_warnings": list(self.drift_warnings),
            "report_path": self.report_path,
            "data_quality": self.data_quality,
            # until the command sets the whole duration, the time so far (what the runs table records)
            "duration_s": round(self.duration_s or (time.monotonic() - self._started_monotonic), 3),
        }
        if include_diff and self.diff is not None:
            out["diff"] = self.diff
        return out

    # ------------------------------------------------------------------ text

    def render(self, console: Console) -> None:
        """The readable summary (stdout)."""
        title = {"ok": "[green]ok[/]", "record_errors": "[yellow]finished with record errors[/]",
                 "stopped": "[red]stopped[/]", "failed": "[red]failed[/]"}.get(self.status, self.status)
        dry = " (dry run: nothing sent)" if self.dry_run else ""
        console.print(f"[bold]healthsync run {self.run_id}[/] ({self.mode}){dry}: {title} in {self.duration_s:.1f}s")
        for note in self.notes:
            console.print(f"  {escape(note)}")
        bands = ", ".join(f"{b} {n}" for b, n in self.bands.items()) or "none"
        console.print(f"  accounts scored: {self.accounts_scored} ({bands})")
        if self.writes:
            # written = records changed and confirmed (records_changed), split into accounts and deals (opportunities)
            table = Table(title="write-back" + (" (planned)" if self.dry_run else ""), title_justify="left",
                          box=None, pad_edge=False, padding=(0, 1), header_style="bold underline")
            columns = ["crm", "written", "accounts", "deals", "unchanged", "failed", "invalid", "api calls"]
            if any(w.get("retried") for w in self.writes.values()):
                columns.insert(-1, "retried")
            for col in columns:
                table.add_column(col, justify="right" if col != "crm" else "left", no_wrap=True)
            for crm, w in self.writes.items():
                by_object = w.get("by_object")
                cells = {"crm": crm, "accounts": "-", "deals": "-"}  # a dry run plans records, it confirms none
                if by_object is not None:
                    cells.update(accounts=str(by_object.get("accounts", 0)), deals=str(by_object.get("opportunities", 0)))
                for col, key in (("written", "records_changed"), ("unchanged", "unchanged"), ("failed", "failed"),
                                 ("invalid", "invalid"), ("retried", "retried"), ("api calls", "api_calls")):
                    cells[col] = str(w.get(key, 0))
                table.add_row(*(cells[c] for c in columns))
            console.print(table)
        queued = f", {self.tasks_queued} queued" if self.tasks_queued else ""
        adopted = f", {self.tasks_adopted} found in the CRM" if self.tasks_adopted else ""
        console.print(
            f"  playbook tasks: {self.tasks_created} new{queued}{adopted} (episodes opened {self.episodes_opened}, closed {self.episodes_closed})"
        )
        console.print(
            f"  slack: {self.alerts_sent} alert messages ({self.alert_episodes} episodes), {self.escalations} escalations, {self.recoveries} recoveries"
        )
        if self.stages_skipped:
            console.print(f"  [yellow]stages not run:[/] {', '.join(self.stages_skipped)}")
        warehouse = self.data_quality.get("warehouse")
        if warehouse and warehouse.get("key_match_rate") is not None:
            console.print(
                f"  warehouse usage: {warehouse.get('rows_in_window', 0):,} events in the window aggregated in the warehouse, "
                f"{warehouse['key_match_rate']:.0%} of keys matched, {warehouse.get('accounts_without_usage')} accounts without usage"
            )
        if self.data_problems:
            console.print(f"  [yellow]{self.data_problems} record problems in CRM data[/] (values ignored or records skipped):")
            for w in self.warnings[:5]:
                console.print(f"    {escape(w)}", highlight=False)
        if self.stopped_reason:
            console.print(f"  [red]stopped:[/] {escape(self.stopped_reason)}", highlight=False)
        if self.errors:
            console.print(f"  [red]{len(self.errors)} errors[/]:")
            for e in self.errors[:10]:
                console.print(f"    {escape(e)}", highlight=False)
            if len(self.errors) > 10:
                console.print(f"    ... {len(self.errors) - 10} more (healthsync run --json lists them)")
        if self.report_path:
            console.print(f"  report: {self.report_path}")
        if self.state:
            console.print(f"  state: {escape(self.state)}", highlight=False)


def render_diff(diff: dict, console: Console, limit: int = 200) -> None:
    """The dry-run table: per record, each field `before -> after`."""
    counts = diff.get("counts", {})
    console.print(
        f"[bold]dry run[/]: {counts.get('changed', 0)} records would change, "
        f"{counts.get('unchanged', 0)} unchanged, {counts.get('invalid', 0)} invalid"
    )
    table = Table(show_edge=False)
    for col in ("crm", "object", "record", "field", "before", "after"):
        table.add_column(col, overflow="fold")
    shown = 0
    for record in diff.get("records", []):
        for name, change in record["fields"].items():
            if shown >= limit:
                break
            table.add_row(record["crm"], record["object"], record["record_id"], name,
                          _cell(change["before"]), _cell(change["after"]))
            shown += 1
    if shown:
        console.print(table)
    total = sum(len(r["fields"]) for r in diff.get("records", []))
    if total > shown:
        console.print(f"... {total - shown} more field changes (use --json for all)")
    for inv in diff.get("invalid", [])[:20]:
        console.print(f"[yellow]invalid[/] {inv['crm']} {inv['record_id']}: {inv['error_code']}: {inv['message']}", highlight=False)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
