"""Slack Web API emulator: auth.test, chat.postMessage, users.lookupByEmail, conversations.open,
conversations.history, conversations.list.

Wire facts follow shared/reference/crm-api-notes.md §3 and §4: methods answer POST or GET
with JSON, form or query arguments (form `blocks` arrive as a JSON string); errors are
HTTP 200 `{"ok": false, "error": ...}`; chat.postMessage allows one message per second
per channel and answers 429 with an integer Retry-After and `{"ok":false,"error":"ratelimited"}`.
Every accepted message is recorded (with its `metadata`) for tests and the inspection endpoint.

As strict as the real API where healthsync depends on it (sources in connectors/sandbox/BEHAVIOR.md):
- conversations.history takes a conversation ID only; a channel *name* is `channel_not_found`.
- the app's type decides the history budget: a commercially distributed non-Marketplace app
  (the default) gets 1 conversations.history call per minute and at most 15 messages a page;
  internal and Marketplace apps get Tier 3 (50 a minute). conversations.list is Tier 2 (20 a
  minute). Windows run on the emulator clock, so a test advancing it also lets a minute pass.
- every method checks the bot token's scopes (`missing_scope` with `needed`/`provided`).
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from collections import deque
from typing import Any

from healthsync.connectors.sandbox.clock import Clock
from healthsync.connectors.sandbox.faults import FaultDecision, FaultInjector
from healthsync.connectors.sandbox.http_base import Api, Request, Response, Router

MAX_BLOCKS, MAX_SECTION_TEXT, MAX_TEXT = 50, 3000, 40_000  # crm-api-notes 3.2, 3.5
DEFAULT_CHANNELS = ("cs-escalations", "cs-leadership", "revops", "general", "healthsync", "healthsync-alerts")
TEAM_ID = "T0HSSANDBX"

#: how the app is distributed decides its conversations.history budget (docs.slack.dev rate limits, May 2025)
APP_TYPES = ("non_marketplace", "internal", "marketplace")
#: non-Marketplace apps: "the maximum and default values for the limit parameter have both been reduced to 15"
NON_MARKETPLACE_HISTORY_LIMIT = 15
HISTORY_MAX_LIMIT = 999
#: conversations.list "may return fewer than the requested number of items": this emulator returns at most
#: this many per page, so a client that ignores `next_cursor` misses channels
LIST_PAGE_CAP = 10
#: every scope a method of this emulator checks; the default bot token holds them all
ALL_SCOPES = frozenset({"chat:write", "users:read", "users:read.email", "im:write", "im:read", "channels:read",
                        "groups:read", "mpim:read", "channels:history", "groups:history", "im:history"})
LIST_TYPE_SCOPES = {"public_channel": "channels:read", "private_channel": "groups:read", "im": "im:read", "mpim": "mpim:read"}


def ok(payload: dict | None = None, headers: dict | None = None) -> Response:
    body = {"ok": True}
    body.update(payload or {})
    return Response.json(200, body, headers)


def fail(error: str, status: int = 200, headers: dict | None = None, **extra) -> Response:
    body: dict[str, Any] = {"ok": False, "error": error}
    body.update(extra)
    return Response.json(status, body, headers)


class SlackApi(Api):
    name = "slack"
    write_methods = ("POST",)

    #: per-channel pacing runs on monotonic time: the process's, not the workspace's
    PROCESS_ATTRS = Api.PROCESS_ATTRS | {"_last_post"}

    def __init__(self, clock: Clock, faults: FaultInjector | None, *, token: str = "sandbox-slack-bot-token",
                 channels: tuple[str, ...] | list[str] = DEFAULT_CHANNELS, per_channel_interval_s: float = 1.0,
                 app_type: str = "non_marketplace", scopes: set[str] | frozenset[str] | None = None) -> None:
        super().__init__(Router())
        if app_type not in APP_TYPES:
            raise ValueError(f"slack app_type must be one of {', '.join(APP_TYPES)}, got {app_type!r}")
        self.clock, self.faults, self.token = clock, faults, token
        self.per_channel_interval_s = per_channel_interval_s
        self.app_type = app_type
        self.scopes = set(ALL_SCOPES if scopes is None else scopes)
        self.lock = threading.RLock()
        self.users: dict[str, dict] = {}  # id -> user
        self.channels: dict[str, str] = {}  # id -> name
        self.private: set[str] = set()  # ids of private channels (the bot is a member of every channel)
        self.archived: set[str] = set()
        self.dms: dict[str, str] = {}  # user id -> D id
        self.messages: list[dict] = []
        self._last_post: dict[str, float] = {}
        self._calls: dict[str, deque] = {}  # method -> emulator-clock times of its recent accepted calls
        self._ts_seq = 0
        for name in channels:
            self.add_channel(name)
        self.bot_user = "U0HSBOT001"
        r = self.router.add
        for method in ("POST", "GET"):
            r(method, r"/api/auth\.test/?", self.auth_test, "auth.test")
            r(method, r"/api/chat\.postMessage/?", self.post_message, "chat.postMessage")
            r(method, r"/api/users\.lookupByEmail/?", self.lookup_by_email, "users.lookupByEmail")
            r(method, r"/api/conversations\.open/?", self.conversations_open, "conversations.open")
            r(method, r"/api/conversations\.history/?", self.conversations_history, "conversations.history")
            r(method, r"/api/conversations\.list/?", self.conversations_list, "conversations.list")

    #: methods that only read: every Slack call is a POST, but these change nothing, so their answer is never "lost"
    READ_METHODS = ("conversations.history", "conversations.list", "users.lookupByEmail", "auth.test")

    def is_write(self, req: Request) -> bool:
        return super().is_write(req) and not any(m in req.path for m in self.READ_METHODS)

    def add_channel(self, name: str, private: bool = False) -> str:
        name = name.lstrip("#")
        with self.lock:
            for cid, n in self.channels.items():
                if n == name:
                    return cid
            cid = f"C0HS{len(self.channels) + 1:05d}"
            self.channels[cid] = name
            if private:
                self.private.add(cid)
            return cid

    def archive_channel(self, channel: str) -> None:
        """Archive a channel (by id or name) as a workspace admin would: posts answer `is_archived`."""
        with self.lock:
            cid = channel if channel in self.channels else next(
                (i for i, n in self.channels.items() if n == channel.lstrip("#")), None)
            if cid is None:
                raise KeyError(f"no Slack channel {channel!r}")
            self.archived.add(cid)

    # --- budgets and scopes ---------------------------------------------------------------------
    def _per_minute(self, method: str) -> int | None:
        """Calls per minute the app may make to `method` (rate tiers are per method, per workspace, per app)."""
        if method == "conversations.history":
            return 1 if self.app_type == "non_marketplace" else 50  # Tier 3 for internal/Marketplace apps
        if method == "conversations.list":
            return 20  # Tier 2
        return None

    def _rate_limited(self, method: str) -> Response | None:
        """429 with an integer Retry-After when `method`'s per-minute budget is spent (emulator clock)."""
        allowed = self._per_minute(method)
        if allowed is None:
            return None
        now = self.clock.now().timestamp()
        with self.lock:
            calls = self._calls.setdefault(method, deque())
            while calls and now - calls[0] >= 60.0:
                calls.popleft()
            if len(calls) >= allowed:
                wait = max(1, math.ceil(60.0 - (now - calls[0])))
                return fail("ratelimited", 429, {"Retry-After": str(wait)})
            calls.append(now)
        return None

    def _scope(self, *needed: str) -> Response | None:
        """`missing_scope` naming the first scope the token lacks (as Slack answers, with needed/provided)."""
        for scope in needed:
            if scope not in self.scopes:
                return fail("missing_scope", needed=scope, provided=",".join(sorted(self.scopes)))
        return None

    def _history_scope(self, cid: str) -> str:
        if cid.startswith("D"):
            return "im:history"
        return "groups:history" if cid in self.private else "channels:history"

    def add_user(self, email: str, real_name: str) -> dict:
        with self.lock:
            uid = f"U0HS{len(self.users) + 1:05d}"
            handle = email.split("@")[0].replace(".", "")
            user = {"id": uid, "team_id": TEAM_ID, "name": handle, "deleted": False, "real_name": real_name,
                    "tz": "America/New_York", "is_bot": False,
                    "profile": {"email": email, "display_name": handle, "real_name": real_name}}
            self.users[uid] = user
            return user

    def fault_response(self, decision: FaultDecision) -> Response:
        if decision.status == 429:
            return fail("ratelimited", 429, {"Retry-After": str(decision.retry_after)})
        return fail("internal_error" if decision.status == 500 else "service_unavailable", decision.status)

    def not_found(self, req: Request, method_mismatch: bool) -> Response:
        return fail("unknown_method", 200)

    def _args(self, req: Request) -> dict:
        args: dict[str, Any] = {k: v[0] for k, v in req.query.items()}
        ctype = (req.header("content-type") or "").lower()
        if req.body:
            if "json" in ctype:
                try:
                    body = req.json()
                except ValueError:
                    return {"_error": "invalid_json"}
                if isinstance(body, dict):
                    args.update(body)
            else:
                args.update(req.form())
        return args

    def _authed(self, req: Request, args: dict) -> Response | None:
        auth = req.header("authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else args.get("token")
        if not token:
            return fail("not_authed")
        if token != self.token:
            return fail("invalid_auth")
        return None

    def auth_test(self, req: Request) -> Response:
        args = self._args(req)
        return self._authed(req, args) or ok({"url": "https://healthsync-sandbox.slack.com/", "team": "Sandbox",
                                             "user": "healthsync", "team_id": TEAM_ID, "user_id": self.bot_user,
                                             "bot_id": "B0HSBOT001", "is_enterprise_install": False})

    def _resolve_channel(self, channel: str) -> tuple[str, str] | None:
        """-> (channel id, display name) or None."""
        with self.lock:
            if channel in self.channels:
                return channel, "#" + self.channels[channel]
            name = channel.lstrip("#")
            for cid, n in self.channels.items():
                if n == name:
                    return cid, "#" + n
            for uid, did in self.dms.items():
                if did == channel:
                    return did, "@" + self.users[uid]["name"]
            if channel in self.users:  # a user id posts to the app's DM with that user
                did = self._dm_for(channel)
                return did, "@" + self.users[channel]["name"]
        return None

    def _dm_for(self, uid: str) -> str:
        if uid not in self.dms:
            self.dms[uid] = f"D0HS{len(self.dms) + 1:05d}"
        return self.dms[uid]

    @staticmethod
    def _blocks_problem(blocks: Any) -> str | None:
        if not isinstance(blocks, list):
            return "blocks must be a JSON array"
        if len(blocks) > MAX_BLOCKS:
            return f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]"
        for i, b in enumerate(blocks):
            if not isinstance(b, dict) or not b.get("type"):
                return f"missing required field: type [json-pointer:/blocks/{i}]"
            if b["type"] == "section":
                text = (b.get("text") or {}).get("text", "") if isinstance(b.get("text"), dict) else ""
                if len(text) > MAX_SECTION_TEXT:
                    return f"must be less than {MAX_SECTION_TEXT + 1} characters [json-pointer:/blocks/{i}/text/text]"
                if not text and not b.get("fields"):
                    return f"must provide text or fields [json-pointer:/blocks/{i}]"
                if len(b.get("fields") or []) > 10:
                    return f"no more than 10 items allowed [json-pointer:/blocks/{i}/fields]"
            if b["type"] == "header" and len(((b.get("text") or {}).get("text") or "")) > 150:
                return f"must be less than 151 characters [json-pointer:/blocks/{i}/text/text]"
        return None

    def post_message(self, req: Request) -> Response:
        args = self._args(req)
        if "_error" in args:
            return fail("invalid_json")
        denied = self._authed(req, args) or self._scope("chat:write")
        if denied:
            return denied
        channel = str(args.get("channel") or "")
        if not channel:
            return fail("channel_not_found")
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks) if blocks else None
            except ValueError:
                return fail("invalid_blocks_format")
        attachments = args.get("attachments")
        text = args.get("text")
        if not text and not blocks and not attachments:
            return fail("no_text")
        if blocks is not None:
            problem = self._blocks_problem(blocks)
            if problem:
                return fail("invalid_blocks", errors=[problem],
                            response_metadata={"messages": [f"[ERROR] {problem}"]})
        target = self._resolve_channel(channel)
        if target is None:
            return fail("channel_not_found")
        cid, label = target
        if cid in self.archived:
            return fail("is_archived")
        now = time.monotonic()
        with self.lock:
            last = self._last_post.get(cid)
            if last is not None and now - last < self.per_channel_interval_s:
                wait = max(1, int(self.per_channel_interval_s - (now - last) + 0.999))
                return fail("ratelimited", 429, {"Retry-After": str(wait)})
            self._last_post[cid] = now
            self._ts_seq += 1
            ts = f"{int(self.clock.now().timestamp())}.{self._ts_seq:06d}"
            text = (text or "")[:MAX_TEXT]
            message = {"type": "message", "subtype": "bot_message", "text": text, "bot_id": "B0HSBOT001", "ts": ts,
                       "user": self.bot_user}
            if blocks:
                message["blocks"] = blocks
            if args.get("thread_ts"):
                message["thread_ts"] = str(args["thread_ts"])
            self.messages.append({"channel": cid, "channel_name": label, "ts": ts, "text": text, "blocks": blocks,
                                  "thread_ts": message.get("thread_ts"), "attachments": attachments,
                                  "at": self.clock.now().isoformat(),
                                  "metadata": _metadata(args.get("metadata"))})
        return ok({"channel": cid, "ts": ts, "message": message})

    def lookup_by_email(self, req: Request) -> Response:
        args = self._args(req)
        denied = self._authed(req, args) or self._scope("users:read.email")
        if denied:
            return denied
        email = str(args.get("email") or "").lower()
        with self.lock:
            for u in self.users.values():
                if u["profile"]["email"].lower() == email and not u["deleted"]:
                    return ok({"user": u})
        return fail("users_not_found")

    def conversations_open(self, req: Request) -> Response:
        args = self._args(req)
        denied = self._authed(req, args) or self._scope("im:write")
        if denied:
            return denied
        users = [u for u in str(args.get("users") or "").split(",") if u]
        if args.get("channel") and not users:
            if args["channel"] in self.dms.values():
                return ok({"no_op": True, "already_open": True, "channel": {"id": args["channel"]}})
            return fail("channel_not_found")
        if not users:
            return fail("users_list_not_supplied")
        if len(users) > 8:
            return fail("too_many_users")
        if len(users) > 1:
            return fail("method_not_supported_for_channel_type")  # group DMs are not emulated
        with self.lock:
            if users[0] not in self.users:
                return fail("user_not_found")
            existed = users[0] in self.dms
            did = self._dm_for(users[0])
        payload: dict[str, Any] = {"channel": {"id": did}}
        if existed:
            payload.update(no_op=True, already_open=True)
        return ok(payload)

    def _conversation_id(self, channel: str) -> str | None:
        """The conversation behind an ID (channel or DM); names are not accepted (docs: "Conversation ID")."""
        with self.lock:
            if channel in self.channels or channel in self.dms.values():
                return channel
        return None

    def conversations_history(self, req: Request) -> Response:
        """Top-level messages of a conversation (by ID), newest first, within (oldest, latest); metadata on request."""
        args = self._args(req)
        if "_error" in args:
            return fail("invalid_json")
        denied = self._authed(req, args)
        if denied:
            return denied
        cid = self._conversation_id(str(args.get("channel") or ""))
        if cid is None:
            return fail("channel_not_found")
        denied = self._scope(self._history_scope(cid)) or self._rate_limited("conversations.history")
        if denied:
            return denied
        try:
            oldest = float(args.get("oldest") or 0)
        except (TypeError, ValueError):
            return fail("invalid_ts_oldest")
        try:
            latest = float(args["latest"]) if args.get("latest") else float("inf")
        except (TypeError, ValueError):
            return fail("invalid_ts_latest")
        cap = NON_MARKETPLACE_HISTORY_LIMIT if self.app_type == "non_marketplace" else HISTORY_MAX_LIMIT
        try:
            limit = int(args.get("limit") or (cap if cap < 100 else 100))
        except (TypeError, ValueError):
            limit = cap if cap < 100 else 100
        limit = max(1, min(limit, cap))
        start = _decode_cursor(args.get("cursor"), "next_ts")
        if start is None:
            return fail("invalid_cursor")
        inclusive = _truthy(args.get("inclusive"))
        with_metadata = _truthy(args.get("include_all_metadata"))
        with self.lock:
            found = []
            for m in reversed(self.messages):
                if m["channel"] != cid or (m.get("thread_ts") and m["thread_ts"] != m["ts"]):
                    continue
                t = float(m["ts"])
                inside = (oldest <= t <= latest) if inclusive else (oldest < t < latest)
                if inside:
                    found.append(m)
        page = found[start:start + limit]
        more = start + limit < len(found)
        out = []
        for m in page:
            item = {"type": "message", "subtype": "bot_message", "user": self.bot_user, "bot_id": "B0HSBOT001",
                    "ts": m["ts"], "text": m["text"]}
            if m.get("blocks"):
                item["blocks"] = m["blocks"]
            if with_metadata and m.get("metadata"):
                item["metadata"] = m["metadata"]
            out.append(item)
        return ok({"messages": out, "has_more": more, "pin_count": 0,
                   "response_metadata": {"next_cursor": _encode_cursor("next_ts", start + limit) if more else ""}})

    def conversations_list(self, req: Request) -> Response:
        """Channels the app can see, by type (default public_channel), paged by an opaque cursor."""
        args = self._args(req)
        if "_error" in args:
            return fail("invalid_json")
        denied = self._authed(req, args)
        if denied:
            return denied
        types = [t.strip() for t in str(args.get("types") or "public_channel").split(",") if t.strip()]
        if not types or any(t not in LIST_TYPE_SCOPES for t in types):
            return fail("invalid_types")
        denied = self._scope(*(LIST_TYPE_SCOPES[t] for t in types)) or self._rate_limited("conversations.list")
        if denied:
            return denied
        try:
            limit = int(args.get("limit") or 100)
        except (TypeError, ValueError):
            return fail("invalid_limit")
        if not 1 <= limit < 1000:
            return fail("invalid_limit")
        start = _decode_cursor(args.get("cursor"), "team")
        if start is None:
            return fail("invalid_cursor")
        exclude_archived = _truthy(args.get("exclude_archived"))
        created = int(self.clock.now().timestamp()) - 86_400
        with self.lock:
            listed: list[dict] = []
            for cid, name in sorted(self.channels.items()):
                private = cid in self.private
                if ("private_channel" if private else "public_channel") not in types:
                    continue
                if exclude_archived and cid in self.archived:
                    continue
                listed.append({"id": cid, "name": name, "name_normalized": name, "is_channel": True, "is_group": False,
                               "is_im": False, "is_mpim": False, "is_private": private, "is_archived": cid in self.archived,
                               "is_general": name == "general", "is_member": True, "created": created,
                               "creator": self.bot_user, "previous_names": []})
            if "im" in types:
                for uid, did in sorted(self.dms.items(), key=lambda kv: kv[1]):
                    listed.append({"id": did, "is_im": True, "user": uid, "created": created, "is_user_deleted": False})
        size = min(limit, LIST_PAGE_CAP)
        page = listed[start:start + size]
        more = start + size < len(listed)
        return ok({"channels": page,
                   "response_metadata": {"next_cursor": _encode_cursor("team", start + size) if more else ""}})


def _encode_cursor(kind: str, offset: int) -> str:
    """An opaque cursor (base64, like Slack's `dGVhbTpDMDYxRkE1UEI=`) holding an offset into the result."""
    return base64.b64encode(f"{kind}:{offset}".encode()).decode()


def _decode_cursor(cursor: Any, kind: str) -> int | None:
    """The offset a cursor of ours holds; 0 without a cursor; None for anything this method did not issue."""
    if not cursor:
        return 0
    try:
        prefix, _, offset = base64.b64decode(str(cursor), validate=True).decode().partition(":")
        value = int(offset)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if prefix == kind and value >= 0 else None


def _truthy(value: Any) -> bool:
    """Slack booleans arrive as true/1 (slack_sdk sends 1/0), JSON true, or absent."""
    return value is True or str(value).strip().lower() in ("1", "true")


def _metadata(value: Any) -> dict | None:
    """Message metadata as sent: a JSON object, or (form bodies) its JSON string."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value else None
        except ValueError:
            return None
    return value if isinstance(value, dict) else None
