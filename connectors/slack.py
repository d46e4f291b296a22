"""Slack notifier on slack-sdk: post Block Kit messages to a channel or a user's DM.

- DMs go users.lookupByEmail -> conversations.open -> chat.postMessage
  (crm-api-notes 3.4); an unknown email raises `SlackUserNotFoundError` so the
  caller can fall back to a channel.
- 429 is retried by the one retry policy honouring `Retry-After` (3.6); the
  SDK's own retry handlers are disabled so nothing retries twice.
- Blocks are kept within Slack's limits (3.5): at most 50 blocks and 3,000
  characters per section text; overflow is truncated with an ellipsis, never
  a failed message.
- Channel names are resolved to IDs before the first keyed post
  (`conversations.list`, paginated, every name seen kept in a `ChannelCache`;
  sync.slack_delivery keeps it in the state store). `conversations.history`
  accepts IDs only: looking a name up there answers `channel_not_found`,
  which once made a lost answer look like "nothing posted" and posted again.
- Exactly once with `idempotency_key`: the key (and the keys of the items a
  digest covers) travels as message metadata (`event_type`
  healthsync_message). After an ambiguous failure (dropped connection,
  timeout, 5xx: Slack may have applied the post) the next attempt first reads
  `conversations.history` since just before the first attempt and returns the
  ts of a message carrying the key instead of posting again. If that check is
  impossible (no history scope, bot not in the channel, history rate limit
  outlasting the retry policy) the post is NOT repeated:
  `SlackDeliveryUncertainError` (a RetryableError, so the escalation stage
  keeps its marker and resolves it at the next run) says so.
- `scan_history` reads one conversation's keyed messages back to a time
  (used after any doubt: maybe-sent markers, a lost state database). History
  is rate limited (Tier 3; 1 call a minute and 15 messages a page for
  commercially distributed non-Marketplace apps since 2025), so callers read
  each conversation at most once per run, bounded by `oldest`.
- `escape_mrkdwn` escapes `&`, `<`, `>` so CRM text such as `<!channel> Acme`
  or `<@U123>` pings nobody.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from healthsync.connectors.base import CallStats, ConfigurationError, HealthsyncError, RecordError, RetryableError
from healthsync.connectors.redact import Redactor, reveal
from healthsync.connectors.retry import RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_CONTEXT_TEXT = 2000
MAX_FIELDS = 10
MAX_TEXT = 40000  # top-level text; Slack truncates beyond it (3.2)
ELLIPSIS = "…"

#: event_type of the metadata that carries an idempotency key
METADATA_EVENT_TYPE = "healthsync_message"
#: how far before the first attempt the history lookup reads (client/server clock skew)
LOOKUP_LOOKBACK_SECONDS = 30.0
#: asked per history page: 15 is the most a non-Marketplace app may ask for (docs.slack.dev, May 2025), so the same
#: request is valid for every app type whether Slack caps a larger limit or refuses it
LOOKUP_PAGE_SIZE = 15
#: pages one history read may take (at 1 call a minute for non-Marketplace apps: the worst case in minutes)
LOOKUP_MAX_PAGES = 40
#: conversations.list page size (Slack recommends no more than 200) and a bound on pages
CHANNEL_LIST_PAGE_SIZE = 200
CHANNEL_LIST_MAX_PAGES = 200
#: a conversation ID (public/private channel, group, DM); anything else is a name
CONVERSATION_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
#: the scopes exactly-once posting needs, named in every scope error
SCOPES_HINT = (
    "chat:write, users:read.email, im:write to post and DM; channels:read, groups:read to resolve channel names; "
    "channels:history, groups:history, im:history to check what was already posted"
)

_AUTH_ERRORS = {"not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired", "missing_scope"}


class SlackDeliveryUncertainError(RetryableError):
    """A keyed post may have landed, and whether it did cannot be checked: it is not posted again."""


class SlackScopeError(ConfigurationError):
    """The bot token lacks a scope (`missing_scope`); `needed` names it when Slack said."""

    def __init__(self, message: str, needed: str | None = None):
        super().__init__(message)
        self.needed = needed


class SlackHistoryUnreadableError(HealthsyncError):
    """A conversation's history cannot be read for good (missing scope, bot not in the channel, no such channel)."""

    def __init__(self, channel: str, reason: str):
        super().__init__(f"Slack conversations.history of {channel}: {reason}")
        self.channel, self.reason = channel, reason


class SlackChannelNotFoundError(RecordError):
    """No channel of this name is visible to the app (conversations.list): nothing can be posted there."""

    def __init__(self, channel: str):
        super().__init__(
            f"Slack channel {channel}: channel_not_found (conversations.list lists no such channel; public channels "
            "and the private channels the app was added to are visible)"
        )
        self.channel = channel


class ChannelCache(Protocol):
    """Channel name (lower case, no '#') -> conversation ID; sync.slack_delivery keeps one in the state store."""

    def get(self, name: str) -> str | None: ...

    def put_many(self, ids: dict[str, str]) -> None: ...

    def forget(self, name: str) -> None: ...


class MemoryChannelCache:
    """The cache of one notifier's lifetime (the default)."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        return self.ids.get(name)

    def put_many(self, ids: dict[str, str]) -> None:
        self.ids.update(ids)

    def forget(self, name: str) -> None:
        self.ids.pop(name, None)


@dataclass
class HistoryScan:
    """The keyed healthsync messages of one conversation after `oldest` (epoch seconds).

    `keys`: message key -> ts; `items`: item key -> ts of the message that covered it.
    `complete`: the read reached `oldest` (False when it stopped at its page bound).
    """

    channel: str
    oldest: float
    keys: dict[str, str] = field(default_factory=dict)
    items: dict[str, str] = field(default_factory=dict)
    complete: bool = True
    pages: int = 0


#: the channel cache's key prefix of a user's DM channel (channel names never hold '@')
DM_CACHE_PREFIX = "@"


def channel_name(channel: str) -> str:
    """The cache key of a channel name: without '#', lower case (Slack channel names are lower case)."""
    return channel.strip().lstrip("#").lower()


def is_conversation_id(channel: str) -> bool:
    return bool(CONVERSATION_ID.match(channel.strip()))


def message_metadata(key: str, items: list[str] | None = None) -> dict:
    """The metadata of a keyed message: its key and, for a digest, the keys of the items it covers.

    `items` travels as one space-separated string: event_payload values are documented as
    strings, numbers, booleans, objects and arrays of objects (not arrays of strings).
    """
    payload: dict[str, Any] = {"key": key}
    if items:
        payload["items"] = " ".join(items)
    return {"event_type": METADATA_EVENT_TYPE, "event_payload": payload}


class _AmbiguousFailure(RetryableError):
    """The request may have been applied (connection lost after sending, timeout, 5xx)."""


class SlackUserNotFoundError(RecordError):
    """No Slack user has this email (users_not_found): fall back to a channel."""

    def __init__(self, email: str):
        super().__init__(f"no Slack user with email {email}")
        self.email = email


def escape_mrkdwn(text: Any) -> str:
    """Escape the three control characters of Slack mrkdwn so CRM text is shown, never interpreted."""
    if text is None:
        return ""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def fit_blocks(blocks: list[dict] | None) -> list[dict] | None:
    """Blocks trimmed to Slack's limits: <= 50 blocks (the last says how many were cut), texts truncated."""
    if not blocks:
        return blocks
    out = [copy.deepcopy(b) for b in blocks]
    if len(out) > MAX_BLOCKS:
        dropped = len(out) - (MAX_BLOCKS - 1)
        out = out[: MAX_BLOCKS - 1] + [
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"{ELLIPSIS} {dropped} more not shown"}]}
        ]
    for block in out:
        kind = block.get("type")
        text = block.get("text")
        if isinstance(text, dict) and isinstance(text.get("text"), str):
            limit = MAX_HEADER_TEXT if kind == "header" else MAX_SECTION_TEXT
            text["text"] = _truncate(text["text"], limit)
        if kind == "section" and isinstance(block.get("fields"), list):
            block["fields"] = block["fields"][:MAX_FIELDS]
            for f in block["fields"]:
                if isinstance(f, dict) and isinstance(f.get("text"), str):
                    f["text"] = _truncate(f["text"], 2000)
        if kind == "context" and isinstance(block.get("elements"), list):
            block["elements"] = block["elements"][:10]
            for e in block["elements"]:
                if isinstance(e, dict) and isinstance(e.get("text"), str):
                    e["text"] = _truncate(e["text"], MAX_CONTEXT_TEXT)
    return out


class SlackNotifier:
    """Posts messages with a bot token; every call has a timeout and the shared retry policy."""

    def __init__(self, token: Any, *, base_url: str | None = None, timeout: float = 30, retry: RetryPolicy | None = None):
        plain = reveal(token)
        if not plain:
            raise ConfigurationError("Slack needs a bot token (HEALTHSYNC__SLACK__BOT_TOKEN)")
        self.retry = retry or RetryPolicy(timeout=timeout)
        self.stats = CallStats()
        self._redact = Redactor([plain])
        kwargs = {"token": plain, "timeout": int(max(1, self.retry.timeout if retry else timeout))}
        if base_url:
            kwargs["base_url"] = base_url.rstrip("/") + "/"
        self._client = WebClient(**kwargs)
        self._client.retry_handlers = []  # the one retry policy (connectors/retry.py) does it
        self._dm_channels: dict[str, str] = {}
        self._channel_ids: dict[str, str] = {}  # channel name as given -> id Slack answered with
        self._channel_cache: ChannelCache = MemoryChannelCache()

    def _once(self, method: str, **kwargs) -> dict:
        """One Web API call through the SDK's own method (each sends its documented content type).

        Failures become the `connectors.base` tree; those after which the request
        may have been applied are `_AmbiguousFailure`, a 429 is a plain `RetryableError`.
        """
        sdk_method = getattr(self._client, method.replace(".", "_"))
        self.stats.count()
        try:
            return sdk_method(**kwargs).data
        except SlackApiError as exc:
            response = exc.response
            error = response.get("error") if hasattr(response, "get") else None
            if response.status_code == 429 or error in ("ratelimited", "rate_limited"):
                retry_after = parse_retry_after(response.headers.get("Retry-After") or response.headers.get("retry-after"))
                raise RetryableError(f"Slack {method}: rate limited", retry_after=retry_after) from None
            if response.status_code >= 500 or error in ("internal_error", "fatal_error", "request_timeout", "service_unavailable"):
                raise _AmbiguousFailure(f"Slack {method}: {error or response.status_code}") from None
            if error == "missing_scope":
                needed = response.get("needed") if hasattr(response, "get") else None
                raise SlackScopeError(
                    f"Slack {method}: missing_scope{f' (needs {needed})' if needed else ''}: add it to the app "
                    f"and reinstall it (scopes healthsync uses: {SCOPES_HINT})",
                    needed=needed,
                ) from None
            if error in _AUTH_ERRORS:
                raise ConfigurationError(
                    f"Slack {method}: {error} (check HEALTHSYNC__SLACK__BOT_TOKEN and the app's scopes: {SCOPES_HINT})"
                ) from None
            raise _SlackError(method, str(error)) from None
        except SlackClientError as exc:
            raise HealthsyncError(self._redact(f"Slack {method}: {exc}")) from None
        except OSError as exc:  # URLError, timeouts, dropped connections
            raise _AmbiguousFailure(self._redact(f"Slack {method}: {type(exc).__name__}")) from None

    def _call(self, method: str, **kwargs) -> dict:
        """`_once` under the shared retry policy (for idempotent calls and unkeyed posts)."""
        return self.retry.call(lambda: self._once(method, **kwargs), stats=self.stats, what=f"Slack {method}")

    # ------------------------------------------------------------------ channels

    def use_channel_cache(self, cache: ChannelCache) -> None:
        """Keep resolved channel IDs in `cache` (e.g. the state store) instead of this notifier's memory."""
        self._channel_cache = cache

    def channel_id(self, channel: str) -> str:
        """The conversation ID of `channel`: an ID as given, a name (with or without '#') via conversations.list.

        One listing (paginated) caches every channel name it sees. Raises
        `SlackChannelNotFoundError` when no visible channel has the name.
        """
        if is_conversation_id(channel):
            return channel.strip()
        name = channel_name(channel)
        cached = self._channel_cache.get(name)
        if cached:
            return cached
        listed = self._list_channels()
        self._channel_cache.put_many(listed)
        if name not in listed:
            raise SlackChannelNotFoundError(channel)
        return listed[name]

    def forget_channel(self, channel: str) -> None:
        """Drop a cached name (its channel was archived, renamed or deleted): the next post resolves it again."""
        if not is_conversation_id(channel):
            self._channel_cache.forget(channel_name(channel))

    def _list_channels(self) -> dict[str, str]:
        """name -> id of every unarchived public and private channel the app sees (conversations.list, all pages)."""
        types = "public_channel,private_channel"
        out: dict[str, str] = {}
        cursor: str | None = None
        for _ in range(CHANNEL_LIST_MAX_PAGES):
            args: dict[str, Any] = {"types": types, "exclude_archived": True, "limit": CHANNEL_LIST_PAGE_SIZE}
            if cursor:
                args["cursor"] = cursor
            try:
                page = self._call("conversations.list", **args)
            except SlackScopeError as exc:
                if exc.needed != "groups:read" or types == "public_channel":
                    raise
                log.warning("Slack: no groups:read scope, so private channels cannot be resolved by name")
                types, cursor, out = "public_channel", None, {}
                continue
            for ch in page.get("channels") or []:
                if ch.get("id") and ch.get("name") and not ch.get("is_archived"):
                    out[channel_name(ch["name"])] = ch["id"]
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return out
        log.warning("Slack: conversations.list stopped after %d pages", CHANNEL_LIST_MAX_PAGES)
        return out

    # ------------------------------------------------------------------ history

    def scan_history(self, channel: str, oldest: float, *, stop_at_key: str | None = None,
                     max_pages: int = LOOKUP_MAX_PAGES) -> HistoryScan:
        """The keyed healthsync messages posted to `channel` (ID or name) after `oldest` (epoch seconds).

        Reads newest first and stops at `oldest`, at `max_pages`, or as soon as a
        message carrying `stop_at_key` is seen. Raises `SlackHistoryUnreadableError`
        when the history cannot be read for good (missing scope, not_in_channel,
        channel_not_found); a rate limit outlasting the retry policy is a `RetryableError`.
        """
        try:
            cid = self.channel_id(channel)
        except SlackChannelNotFoundError:
            raise SlackHistoryUnreadableError(channel, "channel_not_found") from None
        scan = HistoryScan(cid, oldest)
        cursor: str | None = None
        while scan.pages < max_pages:
            args: dict[str, Any] = {"channel": cid, "oldest": f"{oldest:.6f}", "limit": LOOKUP_PAGE_SIZE,
                                    "include_all_metadata": True}
            if cursor:
                args["cursor"] = cursor
            try:
                page = self._call("conversations.history", **args)
            except SlackScopeError as exc:
                raise SlackHistoryUnreadableError(cid, f"missing_scope ({exc.needed or 'history scope'}): add the "
                                                  "channels:history, groups:history and im:history scopes") from None
            except _SlackError as exc:
                raise SlackHistoryUnreadableError(cid, exc.error) from None
            scan.pages += 1
            for message in page.get("messages") or []:
                metadata = message.get("metadata") or {}
                if metadata.get("event_type") != METADATA_EVENT_TYPE:
                    continue
                payload = metadata.get("event_payload") or {}
                ts = message.get("ts")
                if payload.get("key"):
                    scan.keys.setdefault(str(payload["key"]), ts)
                for item in str(payload.get("items") or "").split():
                    scan.items.setdefault(item, ts)
                if stop_at_key is not None and payload.get("key") == stop_at_key:
                    return scan
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not (page.get("has_more") and cursor):
                return scan
        scan.complete = False
        log.warning("Slack: history of %s read for %d pages without reaching its start", cid, max_pages)
        return scan

    def find_posted(self, channel: str, key: str, oldest: float) -> dict | None:
        """The message in `channel` posted after `oldest` (epoch seconds) whose metadata carries `key`, or None."""
        scan = self.scan_history(channel, oldest, stop_at_key=key)
        ts = scan.keys.get(key)
        return None if ts is None else {"ts": ts, "channel": scan.channel}

    # ------------------------------------------------------------------ posting

    def _post_keyed(self, args: dict[str, Any], key: str, items: list[str] | None) -> dict:
        """chat.postMessage that never posts twice: after an ambiguous failure, look before posting again."""
        given = args["channel"]
        channel = self.channel_id(given)  # history needs the ID: resolve before the first keyed post
        args = {**args, "channel": channel, "metadata": message_metadata(key, items)}
        oldest = time.time() - LOOKUP_LOOKBACK_SECONDS
        state = {"ambiguous": False}

        def attempt() -> dict:
            if state["ambiguous"]:
                try:
                    scan = self.scan_history(channel, oldest, stop_at_key=key)
                except SlackHistoryUnreadableError as exc:
                    if exc.reason != "channel_not_found":
                        raise _Unverifiable(exc.reason) from None
                    scan = HistoryScan(channel, oldest)  # the channel is gone, so nothing landed; the post says so
                except ConfigurationError as exc:
                    raise _Unverifiable(str(exc)) from None
                if key in scan.keys:
                    log.info("Slack: message %s was already posted (answer lost), not posting again", key)
                    return {"ok": True, "channel": channel, "ts": scan.keys[key]}
                if not scan.complete:
                    raise _Unverifiable("the history since the first attempt is longer than one lookup reads")
            try:
                return self._once("chat.postMessage", **args)
            except _AmbiguousFailure:
                state["ambiguous"] = True
                raise

        try:
            return self.retry.call(attempt, stats=self.stats, what="Slack chat.postMessage")
        except _Unverifiable as exc:
            raise SlackDeliveryUncertainError(
                f"Slack chat.postMessage to {given}: the answer was lost and conversations.history "
                f"could not confirm it ({exc}); not posted again, to never post it twice"
            ) from None
        except _SlackError as exc:
            if exc.error in ("channel_not_found", "is_archived"):
                self.forget_channel(given)
            raise
        except RetryableError as exc:
            if state["ambiguous"]:
                raise SlackDeliveryUncertainError(f"{exc} (retries exhausted; the message may have been posted)") from None
            raise

    def dm_channel(self, user_email: str) -> str:
        """The DM channel id with the Slack user holding `user_email`.

        Cached in this notifier and in the channel cache under `@email` (the state store keeps it for
        weeks: the DM between an app and a user keeps its id), so a daily digest to each of 2,500 owners
        is one call each, not three (issue 14). A cached id Slack no longer knows is dropped by `post`.
        """
        key = user_email.lower()
        if key not in self._dm_channels:
            cached = self._channel_cache.get(DM_CACHE_PREFIX + key)
            if cached:
                self._dm_channels[key] = cached
                return cached
            try:
                user = self._call("users.lookupByEmail", email=user_email)["user"]["id"]
            except _SlackError as exc:
                if exc.error == "users_not_found":
                    raise SlackUserNotFoundError(user_email) from None
                raise
            self._dm_channels[key] = self._call("conversations.open", users=[user])["channel"]["id"]
            self._channel_cache.put_many({DM_CACHE_PREFIX + key: self._dm_channels[key]})
        return self._dm_channels[key]

    def forget_dm(self, user_email: str) -> None:
        key = user_email.lower()
        self._dm_channels.pop(key, None)
        self._channel_cache.forget(DM_CACHE_PREFIX + key)

    def post(
        self,
        channel: str | None = None,
        user_email: str | None = None,
        text: str = "",
        blocks: list[dict] | None = None,
        thread_ts: str | None = None,
        idempotency_key: str | None = None,
        items: list[str] | None = None,
    ) -> str:
        """Post to `channel` or to `user_email`'s DM; returns the message ts.

        `text` is the notification fallback and must already be escaped by the
        caller where it contains CRM text (`escape_mrkdwn`). With an
        `idempotency_key` the message is posted at most once even when Slack's
        answer is lost (see the module docstring). The lookup runs only after
        an ambiguous failure of this call: a later call with the same key posts
        again (callers keep their own markers across runs, as escalation does).
        Keyed replies in threads are not looked up (history lists top-level
        messages only), so `thread_ts` with a key is refused. `items` (keyed
        posts only) are the keys of what a digest covers, so a later history
        read can tell which items were delivered (`scan_history`).
        """
        if idempotency_key is not None and thread_ts:
            raise ConfigurationError("Slack: an idempotency_key cannot be used for a thread reply (thread_ts)")
        if not channel and not user_email:
            raise ConfigurationError("a Slack message needs a channel or a user email")
        if channel:
            return self._post_to(channel, text, blocks, thread_ts, idempotency_key, items)
        try:
            return self._post_to(self.dm_channel(user_email), text, blocks, thread_ts, idempotency_key, items)  # type: ignore[arg-type]
        except _SlackError as exc:
            if exc.error not in ("channel_not_found", "is_archived"):
                raise
            # a cached DM id Slack no longer knows: resolve the user again, once (nothing was posted)
            self.forget_dm(user_email)  # type: ignore[arg-type]
            return self._post_to(self.dm_channel(user_email), text, blocks, thread_ts, idempotency_key, items)  # type: ignore[arg-type]

    def _post_to(self, target: str, text: str, blocks: list[dict] | None, thread_ts: str | None,
                 idempotency_key: str | None, items: list[str] | None) -> str:
        args: dict[str, Any] = {"channel": target, "text": _truncate(text or " ", MAX_TEXT)}
        fitted = fit_blocks(blocks)
        if fitted:
            args["blocks"] = fitted
        if thread_ts:
            args["thread_ts"] = thread_ts
        if idempotency_key is not None:
            reply = self._post_keyed(args, str(idempotency_key), items)
        else:
            reply = self._call("chat.postMessage", **args)
        if reply.get("channel"):
            self._channel_ids[target] = reply["channel"]
        return reply["ts"]


class _Unverifiable(HealthsyncError):
    """The history lookup after an ambiguous post failed for good (not retried)."""


class _SlackError(HealthsyncError):
    def __init__(self, method: str, error: str):
        super().__init__(f"Slack {method}: {error}")
        self.error = error


def slack_from_ready(ready: dict, **kwargs) -> SlackNotifier:
    """A notifier for a running sandbox, from its ready-file dict."""
    s = ready["slack"]
    return SlackNotifier(s["token"], base_url=s.get("base_url"), **kwargs)
