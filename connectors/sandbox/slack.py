"""Slack Web API emulator: auth.test, chat.postMessage, users.lookupByEmail, conversations.open, conversations.history.

Wire facts follow shared/reference/crm-api-notes.md §3 and §4: methods answer POST or GET
with JSON, form or query arguments (form `blocks` arrive as a JSON string); errors are
HTTP 200 `{"ok": false, "error": ...}`; chat.postMessage allows one message per second
per channel and answers 429 with an integer Retry-After and `{"ok":false,"error":"ratelimited"}`.
Every accepted message is recorded (with its `metadata`) for tests and the inspection endpoint.
conversations.history is a read (never a lost response, no per-channel rate limit): the
notifier uses it to find a message whose chat.postMessage answer was lost.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from healthsync.connectors.sandbox.clock import Clock
from healthsync.connectors.sandbox.faults import FaultDecision, FaultInjector
from healthsync.connectors.sandbox.http_base import Api, Request, Response, Router

MAX_BLOCKS, MAX_SECTION_TEXT, MAX_TEXT = 50, 3000, 40_000  # crm-api-notes 3.2, 3.5
DEFAULT_CHANNELS = ("cs-escalations", "cs-leadership", "revops", "general", "healthsync", "healthsync-alerts")
TEAM_ID = "T0HSSANDBX"


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

    def __init__(self, clock: Clock, faults: FaultInjector | None, *, token: str = "sandbox-slack-bot-token",
                 channels: tuple[str, ...] | list[str] = DEFAULT_CHANNELS, per_channel_interval_s: float = 1.0) -> None:
        super().__init__(Router())
        self.clock, self.faults, self.token = clock, faults, token
        self.per_channel_interval_s = per_channel_interval_s
        self.lock = threading.RLock()
        self.users: dict[str, dict] = {}  # id -> user
        self.channels: dict[str, str] = {}  # id -> name
        self.dms: dict[str, str] = {}  # user id -> D id
        self.messages: list[dict] = []
        self._last_post: dict[str, float] = {}
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

    def is_write(self, req: Request) -> bool:
        """Every Slack call is a POST, but reading history changes nothing, so its answer is never 'lost'."""
        return super().is_write(req) and "conversations.history" not in req.path

    def add_channel(self, name: str) -> str:
        name = name.lstrip("#")
        with self.lock:
            for cid, n in self.channels.items():
                if n == name:
                    return cid
            cid = f"C0HS{len(self.channels) + 1:05d}"
            self.channels[cid] = name
            return cid

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
        denied = self._authed(req, args)
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
        denied = self._authed(req, args)
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
        denied = self._authed(req, args)
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

    def conversations_history(self, req: Request) -> Response:
        """Top-level messages of a channel, newest first, within (oldest, latest); metadata only when asked for."""
        args = self._args(req)
        if "_error" in args:
            return fail("invalid_json")
        denied = self._authed(req, args)
        if denied:
            return denied
        target = self._resolve_channel(str(args.get("channel") or ""))
        if target is None:
            return fail("channel_not_found")
        try:
            oldest = float(args.get("oldest") or 0)
            latest = float(args["latest"]) if args.get("latest") else float("inf")
            limit = int(args.get("limit") or 100)
            cursor = str(args.get("cursor") or "")
            start = int(cursor.removeprefix("next_ts:")) if cursor else 0
        except (TypeError, ValueError):
            return fail("invalid_cursor" if args.get("cursor") else "invalid_arguments")
        if start < 0:
            return fail("invalid_cursor")
        limit = max(1, min(limit, 999))
        inclusive = _truthy(args.get("inclusive"))
        with_metadata = _truthy(args.get("include_all_metadata"))
        cid = target[0]
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
        # the cursor is opaque to clients; here it is "next_ts:" plus the offset into the result
        return ok({"messages": out, "has_more": more, "pin_count": 0,
                   "response_metadata": {"next_cursor": f"next_ts:{start + limit}" if more else ""}})


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
