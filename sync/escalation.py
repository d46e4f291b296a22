"""SLA escalation in Slack: the CRM task is the clock, the ladder says who hears about it, once.

For every open episode (sync.playbooks_job) with a CRM task:

1. The task is read back from the CRM by change (sync.task_mirror, once per run): a task
   completed there closes the episode (`task_completed`); a due date moved there
   moves the SLA clock.
2. Ladder step 0 (`escalation.ladder[0]`, default: the owner) is notified when the
   episode opens. Step k >= 1 fires once `now >= task due + sum(after_hours of
   steps 1..k)` while the task is still open, up to the playbook's `escalate_to`
   level (or its `band_overrides` entry for the account's current band).
   Default (seed 003_cec208348d92c0f6.txt, "Intervention playbook structure"):
   owner on open, CS manager at the due time, VP of CS 48 h later; a Yellow
   at-risk account has a week and stops at the manager unless it turns Red.
3. When an episode closes, everyone it was escalated to gets a recovery note.

Exactly once per (episode_id, level, kind): that key is the primary key of the
`escalations` table. A marker row (destination conversation, message key,
start time) is committed BEFORE the message is sent and completed (ts,
sent_at) after. A definite failure (Slack said no) deletes the marker so the
next run tries again. A crash or an ambiguous failure leaves it "maybe sent":
the next run looks it up in that conversation's history before anything else
and either marks it sent or sends it (sync.slack_delivery). Messages carry
deterministic keys (recipient, day, content; one key per item), so a state
database that was lost or moved checks the history before re-sending what
another state may have sent. Nothing is sent twice, nothing is dropped: where
history cannot be read (missing scopes) the run says so and exits 1.

Who is the manager / VP: the `owners` frame (email, name, role, manager_email;
the sandbox seeds it from its CRM users) walked upwards; failing that the
settings `escalation.contacts` (owner email -> manager email, key `"*"` for
everyone else) and `escalation.vp`. A recipient with no Slack user (or no
known recipient at all) gets the fallback channel of the account's segment
(`escalation.fallback_channels`, then its `default`).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pandas as pd
from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from healthsync.connectors.base import ConfigurationError, CrmConnector, HealthsyncError, RetryableError
from healthsync.connectors.slack import SlackScopeError, SlackUserNotFoundError
from healthsync.playbooks.definitions import PlaybookSet, load_playbooks
from healthsync.playbooks.render import plain, split_drivers
from healthsync.sync.playbooks_job import CLOSED_TASK_DONE
from healthsync.sync.slack_delivery import DestinationChecks, StateChannelCache, item_key, message_key, resolve_maybe_sent
from healthsync.sync.slack_messages import AccountFacts, EpisodeFacts, digest_message, episode_message, queued_note
from healthsync.sync.task_mirror import apply_changes, effective_due, episode_changes, read_tasks  # noqa: F401 (effective_due re-exported)
from healthsync.sync.state import StateStore, chunks, utc_aware, utc_naive

log = logging.getLogger(__name__)


@dataclass
class EscalationResult:
    alerts_sent: int = 0  # alert messages posted (a digest is one message)
    alert_episodes: int = 0  # episodes those alert messages carry
    escalations: int = 0
    recoveries: int = 0
    episodes_closed: int = 0
    errors: list[str] = field(default_factory=list)
    planned: list[dict] = field(default_factory=list)  # dry run: the messages that would be sent
    notes: list[str] = field(default_factory=list)  # done, worth a line in the summary
    maybe_sent_confirmed: int = 0  # maybe-sent markers found in Slack's history (marked sent)
    maybe_sent_resent: int = 0  # maybe-sent markers not found there (sent again in this run)
    found_delivered: int = 0  # messages another state (lost, moved) had already delivered: not sent again
    history_reads: int = 0

    def to_json(self) -> dict:
        return {
            "alerts_sent": self.alerts_sent,
            "alert_episodes": self.alert_episodes,
            "escalations": self.escalations,
            "recoveries": self.recoveries,
            "episodes_closed": self.episodes_closed,
            "errors": list(self.errors),
        }


# ----------------------------------------------------------------------------- who to notify


class Directory:
    """Owner -> manager -> VP, from the owners frame first and the settings second."""

    def __init__(self, owners: pd.DataFrame | None, contacts: dict[str, str], vp: str | None):
        self.people: dict[str, dict] = {}
        if owners is not None and len(owners) and "email" in owners.columns:
            cols = [c for c in ("email", "name", "role", "manager_email") if c in owners.columns]
            frame = owners[cols].dropna(subset=["email"]).astype({"email": "string"})
            # one person may appear once per CRM (HubSpot owners carry no manager): first known value per column
            merged = frame.assign(_key=frame["email"].str.lower()).groupby("_key", sort=False).first()
            for key, rec in zip(merged.index, merged.to_dict("records")):
                self.people[str(key)] = {k: plain(v) for k, v in rec.items()}
        self.contacts = {k.lower(): v for k, v in contacts.items()}
        self.vp_email = vp

    def manager_of(self, email: str | None) -> str | None:
        if not email:
            return self.contacts.get("*")
        person = self.people.get(email.lower()) or {}
        return person.get("manager_email") or self.contacts.get(email.lower()) or self.contacts.get("*")

    def vp_for(self, email: str | None) -> str | None:
        current, seen = email, set()
        while current and current.lower() not in seen:
            seen.add(current.lower())
            if _is_vp((self.people.get(current.lower()) or {}).get("role")):
                return current
            current = self.manager_of(current)
        if self.vp_email:
            return self.vp_email
        vps = [p["email"] for p in self.people.values() if _is_vp(p.get("role"))]
        return vps[0] if len(vps) == 1 else None

    def name_of(self, email: str | None) -> str | None:
        return (self.people.get((email or "").lower()) or {}).get("name")


def _is_vp(role: Any) -> bool:
    """The sandbox says `vp`; a real Salesforce User.Title says e.g. "VP Customer Success" or "Vice President, CS"."""
    return isinstance(role, str) and re.search(r"\b(vp|svp|evp|vice president)\b", role, re.IGNORECASE) is not None


def recipient_for(step, owner_email: str | None, directory: Directory) -> tuple[str | None, str | None]:
    """(email, channel) of one ladder step; (None, None) when nobody is known."""
    if step.notify == "channel":
        return None, step.channel
    if step.notify == "owner":
        return owner_email, None
    if step.notify == "manager":
        return directory.manager_of(owner_email), None
    return directory.vp_for(owner_email), None


# ----------------------------------------------------------------------------- reading tasks back


def refresh_tasks(store: StateStore, connectors: dict[str, CrmConnector], now: datetime, result: EscalationResult, dry_run: bool) -> dict[str, dict]:
    """Read the tasks of open episodes back from their CRM, by change; returns episode_id -> changes (applied unless dry run).

    The read is the one of sync.task_mirror (tasks modified since the last read, once per run:
    when the playbooks stage already read them in this run, nothing is read again). A CRM that
    cannot be read leaves its episodes as they are, and they are not escalated this time
    (escalating on stale state could chase a task already done).
    """
    read = read_tasks(store, connectors, now)
    table = store.tables["episodes"]
    with store.engine.connect() as conn:
        crms = {r.crm for r in conn.execute(select(table.c.crm).where(and_(table.c.status == "open", table.c.task_id.is_not(None))).distinct())}
    for crm in sorted(crms):
        if crm not in connectors:
            read.unreadable.setdefault(crm, f"no {crm} connector in this run")
    changes = episode_changes(store, read, now, CLOSED_TASK_DONE)
    for crm in sorted(crms & set(read.unreadable)):
        result.errors.append(f"{crm}: could not read tasks back ({read.unreadable[crm]}); its open episodes are not escalated this run")
    result.episodes_closed += sum(1 for c in changes.values() if c.get("status") == "closed")
    if not dry_run:
        apply_changes(store, changes)
    return changes


# ----------------------------------------------------------------------------- message content


def _latest_facts_from_store(store: StateStore, crms: set[str]) -> pd.DataFrame:
    """Account facts when the escalate job runs alone: latest score history joined with the replica."""
    history = store.score_history_frame()
    if len(history):
        history = history.sort_values("scored_at").drop_duplicates("account_id", keep="last")
    t = store.tables["score_history"]
    drivers: dict[str, Any] = {}
    trend: dict[str, Any] = {}
    if len(history):
        with store.engine.connect() as conn:
            for account_id, run_id, d, tr in conn.execute(select(t.c.account_id, t.c.run_id, t.c.drivers, t.c.trend)):
                drivers[(account_id, run_id)] = d
                trend[(account_id, run_id)] = tr
        history["drivers"] = [drivers.get(k) for k in zip(history["account_id"], history["run_id"])]
        history["momentum"] = [trend.get(k) for k in zip(history["account_id"], history["run_id"])]
    accounts = pd.DataFrame([r for crm in crms for r in store.load_replica(crm, "accounts")])
    if not len(accounts):
        return history
    keep = [c for c in ("account_id", "name", "arr", "renewal_date", "segment", "owner_email") if c in accounts.columns]
    return accounts[keep].merge(history, on="account_id", how="left") if len(history) else accounts[keep]


def record_url(settings, connectors: dict[str, CrmConnector], crm: str, account_id: str) -> str | None:
    """Link to the CRM record: `escalation.crm_record_url` (one template or one per CRM), else the Salesforce instance."""
    raw_id = account_id.split(":", 1)[-1]
    template = settings.escalation.crm_record_url
    if isinstance(template, dict):
        template = template.get(crm)
    if template:
        try:
            return template.format(id=raw_id, account_id=account_id, crm=crm)
        except (KeyError, IndexError, ValueError):
            return None
    instance = getattr(connectors.get(crm), "instance_url", None) if crm == "salesforce" else None
    return f"{instance}/lightning/r/Account/{raw_id}/view" if instance else None


def account_facts(row: dict | None, ep: dict, url: str | None) -> AccountFacts:
    row = row or {}
    get = lambda k: plain(row.get(k))  # noqa: E731
    renewal = get("renewal_date")
    if renewal is not None and not isinstance(renewal, str):
        renewal = pd.Timestamp(renewal).strftime("%Y-%m-%d")
    elif isinstance(renewal, str):
        renewal = renewal[:10]
    return AccountFacts(
        account_id=ep["account_id"],
        crm=ep["crm"],
        name=get("name"),
        score=get("score"),
        band=get("band"),
        delta_30d=get("delta_30d"),
        momentum=get("momentum"),
        drivers=split_drivers(row.get("drivers")),
        arr=get("arr"),
        renewal_date=renewal,
        segment=get("segment") or ep.get("segment"),
        owner_email=ep.get("owner_email") or get("owner_email"),
        record_url=url,
    )


# ----------------------------------------------------------------------------- sending, once


@dataclass
class Message:
    """One message of the ladder for one episode, before grouping into digests."""

    ep: dict
    level: str
    kind: str  # alert | escalation | recovery
    email: str | None
    channel: str | None
    account: AccountFacts
    facts: EpisodeFacts

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.ep["episode_id"], self.level, self.kind)


class _Sender:
    """Sends ladder messages once per (episode_id, level, kind), guarded by the escalations table.

    Messages for the same recipient, kind and level in one run go as one digest
    (`escalation.digest_from`): the first run on a book of 40 accounts is one DM
    per CSM, not 40, and Slack's one-message-per-second-per-channel limit is not
    what decides how long a run takes. Before anything is posted, every message
    is routed to its conversation ID, and items this state cannot vouch for
    (sync.slack_delivery) are looked up there, one history read per conversation.
    """

    def __init__(self, store: StateStore, settings, slack, result: EscalationResult, dry_run: bool, hook, now: datetime):
        self.store, self.settings, self.slack, self.result, self.dry_run, self.hook = store, settings, slack, result, dry_run, hook
        self.now = now
        self.day = now.astimezone(timezone.utc).strftime("%Y-%m-%d")
        self.table = store.tables["escalations"]
        episodes = store.tables["episodes"]
        with store.engine.connect() as conn:
            self.existing = {(r.episode_id, r.level, r.kind) for r in conn.execute(select(self.table))}
            # episodes waiting under the per-owner daily cap, for "10 new playbook tasks, 14 queued"
            self.queued: dict[str, int] = defaultdict(int)
            for (owner,) in conn.execute(select(episodes.c.owner_email).where(episodes.c.status == "queued")):
                self.queued[(owner or "").lower()] += 1
        self.stopped: str | None = None
        self.outbox: list[Message] = []
        self.checks = DestinationChecks(store, slack, now)

    def sent(self, episode_id: str, level: str, kind: str) -> bool:
        return (episode_id, level, kind) in self.existing

    def fallback_channel(self, segment: str | None) -> str | None:
        channels = self.settings.escalation.fallback_channels
        return channels.get(segment or "") or channels.get("default")

    def queue(self, msg: Message) -> None:
        if msg.key in self.existing:
            return
        if msg.email is None and msg.channel is None:
            msg.channel = self.fallback_channel(msg.account.segment)
            msg.facts.fallback_note = (
                f"Posted here because no {msg.level} is known for {msg.ep.get('owner_email') or 'this account'} "
                "(set escalation.contacts / escalation.vp)."
            )
            if msg.channel is None:
                self.result.errors.append(f"episode {msg.ep['episode_id']}: nobody to notify at level {msg.level} and no fallback channel")
                return
        self.existing.add(msg.key)
        self.outbox.append(msg)

    def flush(self) -> None:
        groups: dict[tuple, list[Message]] = defaultdict(list)
        for msg in self.outbox:
            groups[((msg.email or "").lower(), msg.channel, msg.kind, msg.level)].append(msg)
        self.outbox = []
        ordered = sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1] or ""))
        if self.dry_run:
            for (_, _, kind, level), msgs in ordered:
                for m in msgs:
                    self.result.planned.append({"episode_id": m.ep["episode_id"], "level": level, "kind": kind, "recipient": m.email, "channel": m.channel})
                self._count(kind, len(msgs), messages=1 if len(msgs) >= self.settings.escalation.digest_from else len(msgs))
            return
        routed: list[_Route] = []
        for (_, _, kind, level), msgs in ordered:
            if self.stopped:
                self._drop(msgs)
                continue
            routed += self._route(msgs, kind, level)
        self._settle(routed)
        for route in _spread(routed):
            if self.stopped:
                self._drop(route.msgs)
                continue
            if route.msgs:
                self._send(route)

    def _drop(self, msgs: list[Message]) -> None:
        """Not sent this run (Slack stopped): forget them, so the next run queues them again."""
        for m in msgs:
            self.existing.discard(m.key)

    def _count(self, kind: str, n: int, messages: int = 1) -> None:
        if kind == "alert":
            self.result.alerts_sent += messages
            self.result.alert_episodes += n
        elif kind == "escalation":
            self.result.escalations += n
        else:
            self.result.recoveries += n

    def _fail(self, msgs: list[Message], kind: str, level: str, exc: HealthsyncError) -> None:
        """Slack said no before anything was posted: nothing sent, the next run tries again."""
        self._drop(msgs)
        self.result.errors.append(f"Slack {kind} ({level}) for {len(msgs)} episode(s) not sent: {exc}")
        if isinstance(exc, ConfigurationError) and not isinstance(exc, SlackScopeError):
            self.stopped = str(exc)  # the token itself: nothing else can be sent (a missing scope stops only its method)

    def _route(self, msgs: list[Message], kind: str, level: str) -> list["_Route"]:
        """The conversation ID(s) for a group: the recipient's DM, or the segments' fallback channels."""
        email, channel = msgs[0].email, msgs[0].channel
        try:
            if not email:
                return [_Route(self.slack.channel_id(channel), channel, msgs, kind, level)]
            try:
                return [_Route(self.slack.dm_channel(email), None, msgs, kind, level)]
            except SlackUserNotFoundError:
                by_channel: dict[str, list[Message]] = defaultdict(list)
                for m in msgs:
                    fallback = self.fallback_channel(m.account.segment)
                    if fallback is None:
                        raise
                    by_channel[fallback].append(m)
                note = f"Posted here because no Slack user has the email {email}."
                return [_Route(self.slack.channel_id(fb), fb, group, kind, level, note) for fb, group in by_channel.items()]
        except RetryableError as exc:
            self._drop(msgs)
            self.result.errors.append(f"Slack {kind} ({level}) for {len(msgs)} episode(s) not sent this run: {exc}")
            return []
        except HealthsyncError as exc:
            self._fail(msgs, kind, level, exc)
            return []

    def _settle(self, routes: list["_Route"]) -> None:
        """Items someone else may have sent: one history read per conversation; found ones are recorded, not posted."""
        doubted: dict[str, list[tuple[tuple[str, str, str], dict]]] = defaultdict(list)
        for route in routes:
            for m in route.msgs:
                if self.checks.doubted(m.ep):
                    doubted[route.dest].append((m.key, m.ep))
        found: dict[tuple[str, str, str], tuple[str, str]] = {}
        held: set[tuple[str, str, str]] = set()
        for dest, items in doubted.items():
            if self.stopped:
                held |= {i for i, _ in items}
                continue
            settled = self.checks.settle(dest, items)
            found.update({ident: (dest, ts) for ident, ts in settled.found.items()})
            held |= settled.held
            if settled.error:
                self.result.errors.append(settled.error)
            if settled.stop:
                self.stopped = settled.stop
        self.result.history_reads += self.checks.reads
        if found:
            sent_at = utc_naive(self.now)
            by_key = {m.key: (m, route) for route in routes for m in route.msgs}
            for ident, (dest, ts) in found.items():
                m, route = by_key[ident]
                try:
                    with self.store.begin() as conn:
                        conn.execute(insert(self.table).values(
                            episode_id=ident[0], level=ident[1], kind=ident[2], recipient=m.email or m.channel,
                            channel=route.channel, ts=ts, sent_at=sent_at, destination=dest))
                except IntegrityError:
                    continue  # another worker recorded it meanwhile
            self.result.found_delivered += len(found)
            self.result.notes.append(
                f"Slack: {len(found)} message(s) were already delivered (found in the conversation history, e.g. "
                "sent before the state database was lost or moved): not sent again"
            )
        for route in routes:
            keep = [m for m in route.msgs if m.key not in found and m.key not in held]
            self._drop([m for m in route.msgs if m.key in held])
            route.msgs = keep

    def _send(self, route: "_Route") -> None:
        kind, level = route.kind, route.level
        mine = self._claim(route)
        if not mine:
            return
        items = [item_key(*m.key) for m in mine]
        key = message_key(route.dest, self.day, kind, level, items)
        with self.store.begin() as conn:
            for chunk in chunks(mine):
                conn.execute(update(self.table).where(self._where_all(chunk, level, kind)).values(message_key=key))
        text, blocks = self._render(mine, kind, level, route.note)
        try:
            ts = self.slack.post(channel=route.dest, text=text, blocks=blocks, idempotency_key=key, items=items)
        except RetryableError as exc:
            self.result.errors.append(
                f"Slack {kind} ({level}) for {len(mine)} episode(s) may not have been delivered: {exc}; "
                "the next run looks it up in the conversation's history and sends it if it is not there"
            )
            return
        except HealthsyncError as exc:  # Slack said no: nothing was sent, try again next run
            self._forget(mine, level, kind)
            self._fail(mine, kind, level, exc)
            return
        self.hook("after_slack_send")
        sent_at = utc_naive(datetime.now(timezone.utc))
        with self.store.begin() as conn:
            for chunk in chunks(mine):
                conn.execute(update(self.table).where(self._where_all(chunk, level, kind)).values(ts=ts, sent_at=sent_at))
        self._count(kind, len(mine))

    def _claim(self, route: "_Route") -> list[Message]:
        """Write the markers of a route's messages before the post: the ones this run claimed.

        One transaction for the whole route (a digest carries tens of episodes: a transaction each
        cost ~1 ms per episode, ~40 s for a 100,000-account day); when another worker already wrote
        one of the rows, each row again in its own transaction, so only that row is skipped.
        """
        started = utc_naive(self.now)
        rows = [dict(episode_id=m.key[0], level=route.level, kind=route.kind, recipient=m.email or m.channel,
                     channel=route.channel, destination=route.dest, started_at=started) for m in route.msgs]
        try:
            with self.store.begin() as conn:
                conn.execute(insert(self.table), rows)
            return list(route.msgs)
        except IntegrityError:
            pass
        mine: list[Message] = []
        for m, row in zip(route.msgs, rows):
            try:
                with self.store.begin() as conn:
                    conn.execute(insert(self.table).values(**row))
                mine.append(m)
            except IntegrityError:
                continue  # another worker got there first
        return mine

    def _where_all(self, msgs: list[Message], level: str, kind: str):
        return and_(self.table.c.episode_id.in_([m.key[0] for m in msgs]), self.table.c.level == level, self.table.c.kind == kind)

    def _forget(self, msgs: list[Message], level: str, kind: str) -> None:
        with self.store.begin() as conn:
            for chunk in chunks(msgs):
                conn.execute(delete(self.table).where(self._where_all(chunk, level, kind)))
        for m in msgs:
            self.existing.discard(m.key)

    def _render(self, msgs: list[Message], kind: str, level: str, note: str | None) -> tuple[str, list[dict]]:
        queued = self.queued.get((msgs[0].email or "").lower(), 0) if kind == "alert" and msgs[0].email else 0
        if len(msgs) < self.settings.escalation.digest_from:
            m = msgs[0]
            if note:
                m.facts.fallback_note = note
            text, blocks = episode_message(m.account, m.facts)
            if queued:
                blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": queued_note(queued)}]})
            return text, blocks
        ordered = sorted(msgs, key=lambda m: (m.account.score if m.account.score is not None else 101, m.ep["episode_id"]))
        notes = {m.facts.fallback_note for m in msgs if m.facts.fallback_note}
        return digest_message(kind, level, [(m.account, m.facts) for m in ordered], note or (notes.pop() if len(notes) == 1 else None),
                              queued=queued)


@dataclass
class _Route:
    """A group of messages bound for one conversation (`dest`: its ID; `channel`: the channel name, None for a DM)."""

    dest: str
    channel: str | None
    msgs: list[Message]
    kind: str
    level: str
    note: str | None = None


def _spread(routes: list[_Route]) -> list[_Route]:
    """The routes in an order that puts other conversations between two posts to the same one.

    Slack accepts about one message per second per conversation ("chat.postMessage generally allows
    posting one message per second per channel", crm-api-notes.md 3.6): one person's alert, escalation
    and recovery digests sent back to back wait out a 429's Retry-After each. Round robin over the
    conversations, each keeping its own order (its alert before its escalation).
    """
    by_dest: dict[str, deque[_Route]] = {}
    for route in routes:
        by_dest.setdefault(route.dest, deque()).append(route)
    ordered: list[_Route] = []
    waiting = list(by_dest.values())
    while waiting:
        for queue in waiting:
            ordered.append(queue.popleft())
        waiting = [queue for queue in waiting if queue]
    return ordered


# ----------------------------------------------------------------------------- the stage


def run_escalation(
    store: StateStore,
    settings,
    slack,
    connectors: dict[str, CrmConnector],
    now: datetime,
    run_id: str,
    scores: pd.DataFrame | None = None,
    owners: pd.DataFrame | None = None,
    dry_run: bool = False,
    hooks: Callable[[str], None] | None = None,
    playbooks: PlaybookSet | None = None,
) -> EscalationResult:
    """Read tasks back, then alert / escalate / send recovery notes; see the module docstring."""
    result = EscalationResult()
    hook = hooks or (lambda point: None)
    pset = playbooks or load_playbooks(settings)
    changes = refresh_tasks(store, connectors, now, result, dry_run)
    if slack is not None and not dry_run:
        if hasattr(slack, "use_channel_cache"):
            slack.use_channel_cache(StateChannelCache(store, now))
        stop = _resolve_maybe_sent(store, slack, now, result)
        if stop:
            return result

    table = store.tables["episodes"]
    esc = store.tables["escalations"]
    with store.engine.connect() as conn:
        # the open episodes, and the closed ones that were escalated (they may owe a recovery note): closed episodes
        # pile up day after day (thousands a day at 100,000 accounts per CRM) and nothing else of them is needed here
        escalated_ids = select(esc.c.episode_id).where(esc.c.kind == "escalation")
        episodes = [dict(r) for r in conn.execute(select(table).where(
            table.c.task_id.is_not(None), or_(table.c.status == "open", table.c.episode_id.in_(escalated_ids)))).mappings()]
        escalated = [dict(r) for r in conn.execute(select(esc).where(esc.c.kind == "escalation")).mappings()]
    for ep in episodes:  # in a dry run the read-back changes were not stored
        ep.update({k: v for k, v in changes.get(ep["episode_id"], {}).items()})
    escalated_by_episode: dict[str, list[dict]] = defaultdict(list)
    for row in escalated:
        escalated_by_episode[row["episode_id"]].append(row)
    open_eps = [ep for ep in episodes if ep["status"] == "open" and not ep.get("_unreadable")]
    recover = [ep for ep in episodes if ep["status"] == "closed" and escalated_by_episode.get(ep["episode_id"])]
    if not open_eps and not recover:
        return result
    if slack is None:
        result.errors.append(f"Slack is not configured: {len(open_eps)} open episode(s) not notified")
        return result

    sender = _Sender(store, settings, slack, result, dry_run, hook, now)
    ladder = settings.escalation.ladder
    levels = [s.level for s in ladder]
    todo_open = [ep for ep in open_eps if not _ladder_done(sender, ep, ladder, pset, levels, now)]
    todo_recover = [ep for ep in recover if any(r["sent_at"] is not None and not sender.sent(ep["episode_id"], r["level"], "recovery") for r in escalated_by_episode[ep["episode_id"]])]
    if not todo_open and not todo_recover:
        return result

    facts_frame = scores if scores is not None else _latest_facts_from_store(store, {ep["crm"] for ep in todo_open + todo_recover})
    rows = {}
    if facts_frame is not None and len(facts_frame) and "account_id" in facts_frame.columns:
        # only the accounts with something to send (a 100,000-account day turned 200,000 score rows into dicts: ~5 s)
        wanted = {ep["account_id"] for ep in todo_open + todo_recover}
        needed = facts_frame[facts_frame["account_id"].isin(wanted)].drop_duplicates("account_id")
        rows = {r["account_id"]: r for r in needed.to_dict("records")}
    directory = Directory(owners, settings.escalation.contacts, settings.escalation.vp)

    for ep in sorted(todo_open, key=lambda e: e["episode_id"]):
        pb = pset.by_name(ep["playbook"])
        title = pb.title if pb else ep["playbook"]
        due = utc_aware(ep["task_due_at"])
        account = account_facts(rows.get(ep["account_id"]), ep, record_url(settings, connectors, ep["crm"], ep["account_id"]))
        first = ladder[0]
        if not sender.sent(ep["episode_id"], first.level, "alert"):
            email, channel = recipient_for(first, ep["owner_email"], directory)
            sender.queue(Message(ep, first.level, "alert", email, channel, account, EpisodeFacts(ep["episode_id"], title, due, first.level, "alert")))
        band = plain((rows.get(ep["account_id"]) or {}).get("band"))
        for step in _due_steps(ep, ladder, pset, levels, now, band=band):
            if sender.sent(ep["episode_id"], step.level, "escalation"):
                continue
            email, channel = recipient_for(step, ep["owner_email"], directory)
            facts = EpisodeFacts(ep["episode_id"], title, due, step.level, "escalation", hours_overdue=(now - due).total_seconds() / 3600)
            sender.queue(Message(ep, step.level, "escalation", email, channel, account, facts))

    for ep in sorted(todo_recover, key=lambda e: e["episode_id"]):
        pb = pset.by_name(ep["playbook"])
        title = pb.title if pb else ep["playbook"]
        account = account_facts(rows.get(ep["account_id"]), ep, record_url(settings, connectors, ep["crm"], ep["account_id"]))
        for row in escalated_by_episode[ep["episode_id"]]:
            if row["sent_at"] is None or sender.sent(ep["episode_id"], row["level"], "recovery"):
                continue
            reason = (ep.get("close_reason") or "").split(",")[0]
            facts = EpisodeFacts(ep["episode_id"], title, utc_aware(ep["task_due_at"]), row["level"], "recovery", close_reason=reason)
            channel = row["channel"] if row["channel"] and row["recipient"] == row["channel"] else None
            email = None if channel else row["recipient"]
            sender.queue(Message(ep, row["level"], "recovery", email, channel, account, facts))
    sender.flush()
    return result


def _due_steps(ep: dict, ladder, pset: PlaybookSet, levels: list[str], now: datetime, band: str | None = None, any_band: bool = False) -> list:
    """Ladder steps (after the first) whose time has come: due + cumulative after_hours, up to the top level.

    The top is the playbook's `escalate_to`, or its band override for the account's
    current `band`; with `any_band` the highest any band could reach (a cheap pre-check).
    """
    pb = pset.by_name(ep["playbook"])
    if pb is None:
        return []
    tops = pb.possible_tops() if any_band else {pb.top_for(band)}
    top = max((levels.index(t) for t in tops if t in levels), default=0)
    due = utc_aware(ep["task_due_at"])
    if due is None:
        return []
    out, trigger = [], due
    for step in ladder[1 : top + 1]:
        trigger = trigger + timedelta(hours=step.after_hours)
        if now < trigger:
            break
        out.append(step)
    return out


def _ladder_done(sender: _Sender, ep: dict, ladder, pset, levels, now) -> bool:
    """Nothing to send for this open episode now, whatever its band (so its facts need not be loaded)."""
    if not sender.sent(ep["episode_id"], ladder[0].level, "alert"):
        return False
    return all(sender.sent(ep["episode_id"], s.level, "escalation") for s in _due_steps(ep, ladder, pset, levels, now, any_band=True))


def _resolve_maybe_sent(store: StateStore, slack, now: datetime, result: EscalationResult) -> bool:
    """Settle last runs' maybe-sent markers before anything new is sent; True when Slack refused the token."""
    resolution = resolve_maybe_sent(store, slack, now)
    result.maybe_sent_confirmed += resolution.confirmed
    result.maybe_sent_resent += resolution.resend
    result.errors.extend(resolution.errors)
    if resolution.confirmed or resolution.resend:
        result.notes.append(
            f"Slack: {resolution.confirmed + resolution.resend} message(s) left maybe-sent by an earlier run checked in "
            f"the conversation history: {resolution.confirmed} had been delivered, {resolution.resend} had not "
            "(sent in this run)"
        )
    return resolution.stop is not None


def pending_markers(store: StateStore) -> list[dict]:
    """Messages whose send was started but never confirmed (maybe sent): shown by `healthsync status`."""
    esc = store.tables["escalations"]
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(esc).where(esc.c.sent_at.is_(None))).mappings()]
