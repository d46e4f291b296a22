"""Slack messages land exactly once, even when the state database is lost or moved or a run is killed.

A Slack message lands in a conversation's history, so that is where every doubt is settled.
Each message carries, in its metadata (connectors/slack.py `message_metadata`):

- its **message key**: sha256 of (destination conversation, UTC day, kind, level, the item keys);
  the same digest to the same person on the same day has the same key, whoever computes it;
- its **item keys**: one per (episode_id, level, kind) it covers. Episode ids are deterministic
  (`<playbook>:<account>:<YYYYMMDD>`, sync.playbooks_job), so a state database rebuilt from
  scratch derives the same item keys as the lost one.

Doubts, and how each is settled with at most one `conversations.history` read per conversation
per run (the method is rate limited: Tier 3, and 1 call a minute with 15 messages a page for
commercially distributed non-Marketplace apps, docs.slack.dev rate limits, May 2025):

1. **Maybe-sent markers** (`resolve_maybe_sent`, at the start of the escalation stage): a marker
   row without `sent_at` was left by a run killed mid-send or by a post whose answer was lost.
   Its conversation is read back from just before the send started: the item is there -> marked
   sent; absent -> the marker is deleted and the item is sent again this run. Where the history
   cannot be read (missing scope, bot not in the channel) the marker stays and an error line says
   why, so the run never exits 0 with an alert silently undelivered.
2. **Items someone else may have sent** (`DestinationChecks`): an item not recorded here whose
   episode's CRM task this state did not create itself (`episodes.task_origin` is not "created":
   the task was found in the CRM after a lost or moved state database, or by another worker).
   Its conversation is read back to the start of the episode's first day (or only since the last
   read, `slack_destinations`): items found are recorded as sent, never posted again.
   An item of an episode whose task this state created cannot have been sent by anyone else (an
   alert needs the task), so fresh installs and normal runs read no history at all.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable

from sqlalchemy import and_, delete, insert, select, update

from healthsync.connectors.base import ConfigurationError, HealthsyncError, RetryableError
from healthsync.connectors.slack import (
    DM_CACHE_PREFIX,
    SlackChannelNotFoundError,
    SlackHistoryUnreadableError,
    SlackScopeError,
    SlackUserNotFoundError,
    channel_name,
)
from healthsync.sync.state import StateStore, utc_aware, utc_naive

log = logging.getLogger(__name__)

#: how long a resolved channel name is trusted before conversations.list is asked again
CHANNEL_CACHE_TTL = timedelta(days=1)
#: a user's DM channel (`@email` in slack_channels): the DM between an app and a user keeps its id, so it is
#: kept for weeks; a post Slack refuses with channel_not_found resolves it again (connectors/slack.py)
DM_CACHE_TTL = timedelta(days=30)
#: read history from this long before a recorded time (clock skew between Slack and this host)
CLOCK_MARGIN = timedelta(minutes=5)
#: a maybe-sent marker without a start time (written before this revision) is looked up this far back
LEGACY_MARKER_LOOKBACK = timedelta(days=14)
#: the longest an episode's messages are looked up (an older episode is read back this far only)
MAX_LOOKBACK = timedelta(days=31)


# ----------------------------------------------------------------------------- keys


def item_key(episode_id: str, level: str, kind: str) -> str:
    """The key of one ladder message (episode, level, kind): what a digest lists in its metadata."""
    return hashlib.sha256(f"{episode_id}|{level}|{kind}".encode()).hexdigest()[:16]


def message_key(destination: str, day: str, kind: str, level: str, items: Iterable[str]) -> str:
    """The idempotency key of one message: recipient (conversation), UTC day and content (the items)."""
    content = ",".join(sorted(items))
    return "hs-" + hashlib.sha256(f"{destination}|{day}|{kind}|{level}|{content}".encode()).hexdigest()[:32]


def legacy_message_key(kind: str, level: str, episode_ids: Iterable[str]) -> str:
    """The key messages carried before item keys existed (markers written by older versions)."""
    ids = ",".join(sorted(episode_ids))
    return "hs-" + hashlib.sha256(f"{kind}|{level}|{ids}".encode()).hexdigest()[:32]


def episode_first_day(episode_id: str, opened_at: datetime | None) -> datetime:
    """Midnight UTC of the day the episode opened: its id's YYYYMMDD part, or `opened_at`, whichever is earlier.

    A state database rebuilt after a loss re-opens (or adopts) an episode today, but its id still
    carries the day it first opened, which is when its first message may have gone out.
    """
    days: list[datetime] = []
    tail = episode_id.rsplit(":", 1)[-1].split(".", 1)[0]
    if len(tail) == 8 and tail.isdigit():
        try:
            days.append(datetime.strptime(tail, "%Y%m%d").replace(tzinfo=timezone.utc))
        except ValueError:
            pass
    opened = utc_aware(opened_at)
    if opened is not None:
        days.append(opened.replace(hour=0, minute=0, second=0, microsecond=0))
    return min(days) if days else datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


# ----------------------------------------------------------------------------- channel names


class StateChannelCache:
    """Channel name -> conversation ID in the `slack_channels` table (connectors.slack.ChannelCache)."""

    def __init__(self, store: StateStore, now: datetime, ttl: timedelta = CHANNEL_CACHE_TTL, dm_ttl: timedelta = DM_CACHE_TTL):
        self.store, self.now, self.ttl, self.dm_ttl = store, utc_naive(now), ttl, dm_ttl
        self.table = store.tables["slack_channels"]

    def get(self, name: str) -> str | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(self.table).where(self.table.c.name == name)).first()
        ttl = self.dm_ttl if name.startswith(DM_CACHE_PREFIX) else self.ttl
        if row is None or row.resolved_at < self.now - ttl:
            return None
        return row.channel_id

    def put_many(self, ids: dict[str, str]) -> None:
        if not ids:
            return
        with self.store.begin() as conn:
            names = list(ids)
            for start in range(0, len(names), 400):
                conn.execute(delete(self.table).where(self.table.c.name.in_(names[start:start + 400])))
            conn.execute(insert(self.table), [{"name": n, "channel_id": i, "resolved_at": self.now} for n, i in ids.items()])

    def forget(self, name: str) -> None:
        with self.store.begin() as conn:
            conn.execute(delete(self.table).where(self.table.c.name == channel_name(name)))


# ----------------------------------------------------------------------------- maybe-sent markers


@dataclass
class Resolution:
    """What resolving the maybe-sent markers found."""

    confirmed: int = 0  # in the history: marked sent
    resend: int = 0  # not in the history: marker removed, sent again this run
    unresolved: int = 0  # history unreadable: kept, reported
    errors: list[str] = field(default_factory=list)
    stop: str | None = None  # Slack refused the token: nothing more to send this run


def resolve_maybe_sent(store: StateStore, slack, now: datetime) -> Resolution:
    """Look every maybe-sent marker up in its conversation's history (one read per conversation)."""
    esc = store.tables["escalations"]
    out = Resolution()
    with store.engine.connect() as conn:
        markers = [dict(r) for r in conn.execute(select(esc).where(esc.c.sent_at.is_(None))).mappings()]
    if not markers:
        return out
    by_dest: dict[str, list[dict]] = defaultdict(list)
    for m in markers:
        try:
            dest = m["destination"] or _destination_of(slack, m)
        except SlackScopeError as exc:
            out.unresolved += 1
            out.errors.append(f"Slack message {_label(m)} may not have been delivered and cannot be checked: {exc}")
            continue
        except ConfigurationError as exc:
            out.unresolved += 1
            out.stop = str(exc)
            out.errors.append(f"Slack message {_label(m)} may not have been delivered and was not checked: {exc}")
            continue
        except (SlackUserNotFoundError, SlackChannelNotFoundError) as exc:
            out.unresolved += 1
            out.errors.append(f"Slack message {_label(m)} may not have been delivered and cannot be checked: {exc}")
            continue
        except RetryableError as exc:
            out.unresolved += 1
            out.errors.append(f"Slack message {_label(m)} may not have been delivered; not checked this run ({exc}); "
                              "the next run checks again")
            continue
        by_dest[dest].append(m)

    for dest, rows in by_dest.items():
        starts = [utc_aware(r["started_at"]) or (now - LEGACY_MARKER_LOOKBACK) for r in rows]
        oldest = min(starts) - CLOCK_MARGIN
        try:
            scan = slack.scan_history(dest, oldest.timestamp())
        except (SlackHistoryUnreadableError, SlackScopeError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            out.unresolved += len(rows)
            out.errors.append(
                f"{len(rows)} Slack message(s) to {dest} may not have been delivered and cannot be checked: {reason}. "
                "They are not sent again, to never send one twice; once the history can be read, the next run "
                "checks and delivers them"
            )
            continue
        except ConfigurationError as exc:
            out.unresolved += len(rows)
            out.stop = str(exc)
            out.errors.append(f"{len(rows)} Slack message(s) to {dest} may not have been delivered and were not checked: {exc}")
            continue
        except HealthsyncError as exc:  # rate limited beyond the retry policy, Slack unavailable
            out.unresolved += len(rows)
            out.errors.append(f"{len(rows)} Slack message(s) to {dest} may not have been delivered; not checked this run "
                              f"({exc}); the next run checks again")
            continue
        legacy = _legacy_keys(rows)
        sent_at = utc_naive(now)
        with store.begin() as conn:
            for r in rows:
                where = and_(esc.c.episode_id == r["episode_id"], esc.c.level == r["level"], esc.c.kind == r["kind"],
                             esc.c.sent_at.is_(None))
                ts = scan.items.get(item_key(r["episode_id"], r["level"], r["kind"]))
                ts = ts or scan.keys.get(r["message_key"] or "") or scan.keys.get(legacy.get(_marker_id(r), ""))
                if ts:
                    conn.execute(update(esc).where(where).values(ts=ts, sent_at=sent_at, destination=dest))
                    out.confirmed += 1
                elif scan.complete:
                    conn.execute(delete(esc).where(where))
                    out.resend += 1
                else:
                    out.unresolved += 1
        if not scan.complete:
            out.errors.append(f"Slack messages to {dest} may not have been delivered: its history since "
                              f"{oldest:%Y-%m-%d %H:%M} UTC is longer than one read; the next run reads on")
    if out.confirmed or out.resend:
        log.info("Slack maybe-sent markers: %d found delivered, %d not delivered (sent again)", out.confirmed, out.resend)
    return out


def _destination_of(slack, marker: dict) -> str:
    """The conversation a marker written before `destination` existed was meant for."""
    if marker.get("channel"):
        return slack.channel_id(marker["channel"])
    return slack.dm_channel(marker["recipient"])


def _label(marker: dict) -> str:
    return f"{marker['kind']} ({marker['level']}) of episode {marker['episode_id']}"


def _marker_id(marker: dict) -> tuple[str, str, str]:
    return (marker["episode_id"], marker["level"], marker["kind"])


def _legacy_keys(rows: list[dict]) -> dict[tuple[str, str, str], str]:
    """Old-style message keys of markers without one: their group was every marker to one recipient, kind, level."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if not r["message_key"]:
            groups[(r["recipient"], r["channel"], r["kind"], r["level"])].append(r)
    out = {}
    for (_, _, kind, level), members in groups.items():
        key = legacy_message_key(kind, level, [m["episode_id"] for m in members])
        for m in members:
            out[_marker_id(m)] = key
    return out


# ----------------------------------------------------------------------------- items someone else may have sent


@dataclass
class Settled:
    """The outcome of checking one conversation: item ids already delivered (with ts), and ids held back."""

    found: dict[tuple[str, str, str], str] = field(default_factory=dict)
    held: set[tuple[str, str, str]] = field(default_factory=set)
    error: str | None = None
    stop: str | None = None


class DestinationChecks:
    """Per run, at most one history read per conversation, for the items this state cannot vouch for.

    `slack_destinations` remembers, per conversation, the window already read back and
    `slack_seen_items` the item keys found in it, so a later doubt reads only what came after.
    """

    def __init__(self, store: StateStore, slack, now: datetime):
        self.store, self.slack, self.now = store, slack, now
        self.windows = store.tables["slack_destinations"]
        self.seen = store.tables["slack_seen_items"]
        self.reads = 0

    @staticmethod
    def doubted(episode: dict) -> bool:
        """Could someone else (a lost or moved state, another worker) have sent this episode's messages?"""
        return episode.get("task_origin") != "created"

    def settle(self, dest: str, items: list[tuple[tuple[str, str, str], dict]]) -> Settled:
        """Settle these (item id, episode) pairs for `dest`: found ones were delivered already, held ones wait."""
        out = Settled()
        if not items:
            return out
        keys = {ident: item_key(*ident) for ident, _ in items}
        with self.store.engine.connect() as conn:
            window = conn.execute(select(self.windows).where(self.windows.c.channel_id == dest)).first()
            known = dict(conn.execute(select(self.seen.c.item_key, self.seen.c.ts).where(
                self.seen.c.channel_id == dest, self.seen.c.item_key.in_(sorted(set(keys.values()))))).all())
        floor = self.now - MAX_LOOKBACK
        starts = []
        for ident, ep in items:
            if keys[ident] in known:
                out.found[ident] = known[keys[ident]]
                continue
            first = max(episode_first_day(ep["episode_id"], ep.get("opened_at")), floor)
            if window is not None and first >= utc_aware(window.verified_from):
                first = utc_aware(window.verified_to) - CLOCK_MARGIN  # read back already up to verified_to
            starts.append(first)
        if not starts:
            return out
        pending = [ident for ident, _ in items if ident not in out.found]
        oldest = min(starts)
        try:
            scan = self.slack.scan_history(dest, oldest.timestamp())
            self.reads += 1
        except (SlackHistoryUnreadableError, SlackScopeError) as exc:
            out.held = set(pending)
            out.error = (f"{len(pending)} Slack message(s) to {dest} held back: they may have been sent before (the state "
                         f"database was lost, moved or shared) and its history cannot be read: "
                         f"{getattr(exc, 'reason', None) or exc}")
            return out
        except ConfigurationError as exc:
            out.held, out.stop = set(pending), str(exc)
            out.error = f"{len(pending)} Slack message(s) to {dest} held back: {exc}"
            return out
        except HealthsyncError as exc:  # rate limited beyond the retry policy, Slack unavailable
            out.held = set(pending)
            out.error = (f"{len(pending)} Slack message(s) to {dest} held back until its history can be read "
                         f"(they may have been sent before): {exc}; the next run tries again")
            return out
        self._remember(dest, scan.items)
        for ident in pending:
            ts = scan.items.get(keys[ident])
            if ts:
                out.found[ident] = ts
            elif not scan.complete:
                out.held.add(ident)
        if out.held:
            out.error = (f"{len(out.held)} Slack message(s) to {dest} held back: its history since {oldest:%Y-%m-%d} is "
                         "longer than one read checks; the next run reads on")
            return out
        verified_from = oldest if window is None else min(oldest, utc_aware(window.verified_from))
        with self.store.begin() as conn:
            conn.execute(delete(self.windows).where(self.windows.c.channel_id == dest))
            conn.execute(insert(self.windows).values(channel_id=dest, verified_from=utc_naive(verified_from),
                                                     verified_to=utc_naive(self.now)))
        return out

    def _remember(self, dest: str, items: dict[str, str]) -> None:
        """Keep every item key a read found (not only the ones asked about): a later doubt finds them here."""
        if not items:
            return
        with self.store.begin() as conn:
            keys = list(items)
            for start in range(0, len(keys), 400):
                conn.execute(delete(self.seen).where(self.seen.c.channel_id == dest,
                                                     self.seen.c.item_key.in_(keys[start:start + 400])))
            conn.execute(insert(self.seen), [{"channel_id": dest, "item_key": k, "ts": ts} for k, ts in items.items()])
