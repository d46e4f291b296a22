"""`healthsync status` as a person reads it: recent runs as a table, then what is waiting.

The data is `sync.status.status()` (also printed as JSON by `healthsync status --json`); this
module only lays it out. Times are UTC; a run's "written" column is the records each CRM
confirmed in that run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

_STATUS_STYLE = {"ok": "green", "record_errors": "yellow", "stopped": "red", "failed": "red", "abandoned": "red",
                 "running": "cyan"}


def _when(text: str | None) -> str:
    if not text:
        return "-"
    try:
        return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return text


def _duration(run: dict) -> str:
    seconds = run.get("duration_s")  # measured by the run (a sandbox run's times are on its emulated clock)
    if not isinstance(seconds, (int, float)):
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _count(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


#: width of the output when it goes to a file or a pipe (a terminal's own width is used otherwise)
PIPED_WIDTH = 132
#: from this width on, the runs table also shows each run's id, mode and duration
WIDE = 120
_CRM_SHORT = {"salesforce": "SF", "hubspot": "HS"}


def _console() -> Console:
    probe = Console()
    return Console(highlight=False, width=None if probe.is_terminal else PIPED_WIDTH)


def _runs_table(runs: list[dict], *, wide: bool) -> Table:
    """One row per run. A narrow terminal gets fewer columns (run id, mode and duration are in `--json`)."""
    crms = [crm for crm in ("salesforce", "hubspot") if any(crm in (r.get("writes") or {}) for r in runs)]
    crms += sorted({crm for r in runs for crm in (r.get("writes") or {})} - set(crms))
    legend = " / ".join(f"{_CRM_SHORT.get(c, c)} {c}" for c in crms)
    table = Table(title="recent runs, newest first (UTC)", title_justify="left", box=None, pad_edge=False,
                  padding=(0, 1), header_style="bold underline",
                  caption=f"{legend}: records the CRM confirmed" if crms else None, caption_justify="left")
    columns = [*((("run", "left"),) if wide else ()), ("started", "left"), *((("mode", "left"),) if wide else ()),
               ("status", "left"), *((("took", "right"),) if wide else ()), ("scored", "right"),
               *((_CRM_SHORT.get(c, c), "right") for c in crms), ("tasks", "right"), ("alerts", "right"),
               ("escal.", "right"), ("errors", "right")]
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True, min_width=len(name))
    for run in runs:
        status = str(run.get("status"))
        style = _STATUS_STYLE.get(status, "")
        shown = (f"[{style}]{escape(status)}[/]" if style else escape(status)) + (" (dry)" if run.get("dry_run") else "")
        writes = run.get("writes") or {}
        cells = {
            "run": escape(str(run.get("run_id"))),
            "started": _when(run.get("started_at")) if wide else _when(run.get("started_at"))[5:],
            "mode": escape(str(run.get("mode") or "-")),
            "status": shown,
            "took": _duration(run),
            "scored": _count(run.get("accounts_scored")),
            **{_CRM_SHORT.get(c, c): _count((writes.get(c) or {}).get("records_changed")) for c in crms},
            "tasks": _count(run.get("tasks_created")),
            "alerts": _count(run.get("alerts_sent")),
            "escal.": _count(run.get("escalations")),
            "errors": _count(run.get("errors")),
        }
        table.add_row(*(cells[name] for name, _ in columns))
    return table


def render_status(data: dict[str, Any], console: Console | None = None) -> None:
    """Print the status: the recent runs, the queues and the oldest failures."""
    out = console or _console()  # where the state is: the `state:` line the command prints on stderr
    runs = data.get("runs") or []
    if not runs:
        out.print("no runs yet: `healthsync run` makes the first one (with no credentials, against the embedded sandbox)")
    else:
        out.print(_runs_table(runs, wide=out.width >= WIDE))
        for run in runs[:1]:
            if run.get("stopped_reason"):
                out.print(f"last run stopped: {escape(str(run['stopped_reason']))}", highlight=False)
    queues = data.get("queues") or {}
    out.print(
        f"waiting: {queues.get('failed_records', 0):,} failed records to retry, "
        f"{queues.get('open_episodes', 0):,} open playbook episodes, "
        f"{queues.get('slack_maybe_sent', 0):,} Slack messages maybe sent (checked in Slack by the next run)",
        highlight=False,
    )
    failures = data.get("failed_records") or []
    if failures:
        table = Table(title="failed records (oldest first; `healthsync sync --retry-failed` retries them)",
                      title_justify="left", show_edge=False, pad_edge=False, box=box.SIMPLE_HEAD)
        for column in ("crm", "object", "record", "error", "attempts", "since"):
            table.add_column(column, overflow="fold")
        for f in failures:
            table.add_row(escape(f.get("crm") or "-"), escape(f.get("object") or "-"), escape(f.get("record_id") or "-"),
                          escape(f"{f.get('error_code') or ''}: {f.get('message') or ''}".strip(": ")),
                          _count(f.get("attempts")), _when(f.get("first_failed_at")))
        out.print(table)
