"""Block Kit builders for playbook alerts, SLA escalations, recovery notes and ops reports.

Every piece of CRM text (account names, drivers, owner names, segment) goes
through `escape_mrkdwn`, and titles are mrkdwn sections rather than header
blocks, so a record named `<!channel> Acme` is shown, never interpreted. The
builders are pure: they return `(text, blocks)`; sending is the caller's job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from healthsync.connectors.slack import escape_mrkdwn

CRM_LABELS = {"salesforce": "Salesforce", "hubspot": "HubSpot"}


@dataclass
class AccountFacts:
    """What a message says about one account (any field may be unknown)."""

    account_id: str
    crm: str
    name: str | None = None
    score: float | None = None
    band: str | None = None
    delta_30d: float | None = None
    momentum: str | None = None
    drivers: list[str] = field(default_factory=list)
    arr: float | None = None
    renewal_date: str | None = None
    segment: str | None = None
    owner_email: str | None = None
    record_url: str | None = None


@dataclass
class EpisodeFacts:
    """The episode side of a message: which playbook, which task, when due."""

    episode_id: str
    playbook_title: str
    task_due_at: datetime | None
    level: str
    kind: str  # alert | escalation | recovery
    hours_overdue: float | None = None
    close_reason: str | None = None
    fallback_note: str | None = None  # why this went to a channel instead of a person (plain text, escaped here)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: Any) -> str:
    if _missing(value):
        return "n/a"
    v = float(value)
    return f"{v:.0f}" if abs(v - round(v)) < 0.05 else f"{v:.1f}"


def _money(value: Any) -> str:
    return "n/a" if _missing(value) else f"${float(value):,.0f}"


def _when(value: datetime | None) -> str:
    return "n/a" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def trend_text(delta_30d: Any, momentum: Any) -> str:
    parts = []
    if not _missing(delta_30d):
        d = float(delta_30d)
        parts.append(f"{'+' if d > 0 else ''}{_num(d)} pts in 30 days")
    if isinstance(momentum, str) and momentum:
        parts.append(escape_mrkdwn(momentum))
    return ", ".join(parts) or "n/a"


def _title(account: AccountFacts, episode: EpisodeFacts) -> str:
    name = escape_mrkdwn(account.name or account.account_id)
    playbook = escape_mrkdwn(episode.playbook_title)
    if episode.kind == "recovery":
        return f":white_check_mark: Resolved: {playbook} for {name}"
    if episode.kind == "escalation":
        return f":rotating_light: Escalation ({escape_mrkdwn(episode.level)}): {playbook} for {name} is past due"
    return f":warning: {playbook}: {name}"


def _lead(account: AccountFacts, episode: EpisodeFacts) -> str:
    if episode.kind == "recovery":
        reason = {"task_completed": "the task was completed", "condition_cleared": "the condition cleared"}.get(
            episode.close_reason or "", escape_mrkdwn(episode.close_reason or "the episode closed")
        )
        return f"No further escalation: {reason}."
    owner = escape_mrkdwn(account.owner_email or "the account owner")
    if episode.kind == "escalation":
        late = f" ({_num(episode.hours_overdue)} h overdue)" if not _missing(episode.hours_overdue) else ""
        return f"The playbook task owned by {owner} was due {_when(episode.task_due_at)} and is still open{late}."
    return f"A playbook task was opened for {owner}, due {_when(episode.task_due_at)}."


def episode_message(account: AccountFacts, episode: EpisodeFacts) -> tuple[str, list[dict]]:
    """Alert / escalation / recovery message: (fallback text, blocks)."""
    title = _title(account, episode)
    blocks: list[dict] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*\n{_lead(account, episode)}"}},
    ]
    if episode.fallback_note:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": escape_mrkdwn(episode.fallback_note)}]})
    band = f" ({escape_mrkdwn(account.band)})" if account.band else ""
    blocks.append(
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Score*\n{_num(account.score)}{band}"},
                {"type": "mrkdwn", "text": f"*Trend*\n{trend_text(account.delta_30d, account.momentum)}"},
                {"type": "mrkdwn", "text": f"*ARR*\n{_money(account.arr)}"},
                {"type": "mrkdwn", "text": f"*Renewal*\n{escape_mrkdwn(account.renewal_date or 'n/a')}"},
                {"type": "mrkdwn", "text": f"*Task due*\n{_when(episode.task_due_at)}"},
                {"type": "mrkdwn", "text": f"*Owner*\n{escape_mrkdwn(account.owner_email or 'n/a')}"},
            ],
        }
    )
    if account.drivers:
        lines = "\n".join(f"• {escape_mrkdwn(d)}" for d in account.drivers[:5])
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Drivers*\n{lines}"}})
    link = record_link(account)
    if link:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": link}]})
    text = title.split(": ", 1)[-1] if episode.kind == "alert" else title
    return _plain_fallback(text), blocks


def record_link(account: AccountFacts) -> str | None:
    if not account.record_url:
        return None
    crm = CRM_LABELS.get(account.crm, escape_mrkdwn(account.crm))
    # a URL with `|` or `>` would break out of the link syntax; escape_mrkdwn handles < > &
    url = escape_mrkdwn(account.record_url).replace("|", "%7C")
    return f"<{url}|Open in {crm}>"


def _plain_fallback(text: str) -> str:
    """The notification text: already escaped, emoji shortcodes dropped."""
    return " ".join(part for part in text.split(" ") if not (part.startswith(":") and part.endswith(":") and len(part) > 2))


def ops_message(job: str, outcome: str, detail: str, when: datetime, ok: bool = False) -> tuple[str, list[dict]]:
    """A scheduler report for the ops channel (failed, missed or recovered run); `detail` is escaped here."""
    title = f"healthsync job `{escape_mrkdwn(job)}` {escape_mrkdwn(outcome)}"
    icon = ":white_check_mark:" if ok else ":x:"
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{icon} {title}*\n{escape_mrkdwn(detail)}"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"at {_when(when)}"}]},
    ]
    return _plain_fallback(f"{title}: {escape_mrkdwn(detail)}"), blocks


#: items listed in one digest; the rest are counted (Slack allows 50 blocks of 3,000 characters)
DIGEST_MAX_ITEMS = 40
_DIGEST_TITLES = {
    "alert": "{n} new playbook tasks",
    "escalation": "{n} playbook tasks past due ({level})",
    "recovery": "{n} escalated playbook tasks resolved",
}


def _digest_line(account: AccountFacts, episode: EpisodeFacts) -> str:
    name = escape_mrkdwn(account.name or account.account_id)
    if account.record_url:
        name = f"<{escape_mrkdwn(account.record_url).replace('|', '%7C')}|{name}>"
    band = f" ({escape_mrkdwn(account.band)})" if account.band else ""
    owner = f", owner {escape_mrkdwn(account.owner_email)}" if account.owner_email and episode.kind != "alert" else ""
    if episode.kind == "recovery":
        tail = {"task_completed": "task completed", "condition_cleared": "condition cleared"}.get(
            episode.close_reason or "", escape_mrkdwn(episode.close_reason or "closed")
        )
    else:
        tail = f"due {_when(episode.task_due_at)}"
    return f"• *{name}*: {_num(account.score)}{band}, {escape_mrkdwn(episode.playbook_title)}, {tail}{owner}"


def queued_note(queued: int) -> str:
    """What a CSM reads about tasks held back by `playbooks.max_new_tasks_per_owner_per_day`."""
    return f"{queued} more playbook task{'s' if queued != 1 else ''} queued: they come over the next days, highest ARR at risk first."


def digest_message(kind: str, level: str, entries: list[tuple[AccountFacts, EpisodeFacts]], fallback_note: str | None = None,
                   queued: int = 0) -> tuple[str, list[dict]]:
    """Several messages for one recipient in one run, as one message (a CSM with 40 new tasks gets 1 DM, not 40).

    `queued` (alerts only): the recipient's episodes waiting under the daily cap ("10 new playbook tasks, 14 queued").
    """
    n = len(entries)
    title = _DIGEST_TITLES[kind].format(n=n, level=escape_mrkdwn(level))
    if kind == "alert" and queued:
        title += f", {queued} queued"
    icon = {"alert": ":warning:", "escalation": ":rotating_light:", "recovery": ":white_check_mark:"}[kind]
    blocks: list[dict] = [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{icon} {title}*"}}]
    if kind == "alert" and queued:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": queued_note(queued)}]})
    if fallback_note:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": escape_mrkdwn(fallback_note)}]})
    chunk: list[str] = []
    size = 0
    for account, episode in entries[:DIGEST_MAX_ITEMS]:
        line = _digest_line(account, episode)[:1000]
        if chunk and size + len(line) + 1 > 2900:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(chunk)}})
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(chunk)}})
    if n > DIGEST_MAX_ITEMS:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"… and {n - DIGEST_MAX_ITEMS} more: see your CRM tasks"}]})
    return _plain_fallback(f"{icon} {title}"), blocks
