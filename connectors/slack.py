"""Slack notifier on slack-sdk: post Block Kit messages to a channel or a user's DM.

- DMs go users.lookupByEmail -> conversations.open -> chat.postMessage
  (crm-api-notes 3.4); an unknown email raises `SlackUserNotFoundError` so the
  caller can fall back to a channel.
- 429 is retried by the one retry policy honouring `Retry-After` (3.6); the
  SDK's own retry handlers are disabled so nothing retries twice.
- Blocks are kept within Slack's limits (3.5): at most 50 blocks and 3,000
  characters per section text; overflow is truncated with an ellipsis, never
  a failed message.
- Exactly once with `idempotency_key`: the key travels as message metadata
  (`event_type` healthsync_message). After an ambiguous failure (dropped
  connection, timeout, 5xx: Slack may have applied the post) the next attempt
  first reads `conversations.history` since just before the first attempt and
  returns the ts of a message carrying the key instead of posting again. If
  that check is impossible (no history scope, bot not in the channel) the post
  is NOT repeated: `SlackDeliveryUncertainError` (a RetryableError, so the
  escalation stage keeps its marker) says so.
- `escape_mrkdwn` escapes `&`, `<`, `>` so CRM text such as `<!channel> Acme`
  or `<@U123>` pings nobody.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

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
LOOKUP_PAGE_SIZE = 100
LOOKUP_MAX_PAGES = 10

_AUTH_ERRORS = {"not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired", "missing_scope"}


class SlackDeliveryUncertainError(RetryableError):
    """A keyed post may have landed, and whether it did cannot be checked: it is not posted again."""


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

    def _once(self, method: str, **kwargs) -> dict:
        """One Web API call through the SDK's own method (each sends its documented content type).

        Failures become the `connectors.base` tree; those after which the request
        may have been applied are `_AmbiguousFailure`, a 429 is a plain `RetryableError`.
        """
        sdk_method = getattr(self._client, method.replace(".", "_"))
        self.stats.calls += 1
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
            if error in _AUTH_ERRORS:
                raise ConfigurationError(
                    f"Slack {method}: {error} (check HEALTHSYNC__SLACK__BOT_TOKEN and the app's scopes: "
                    "chat:write, users:read.email, im:write, and channels:history, groups:history, im:history "
                    "for exactly-once posts)"
                ) from None
            raise _SlackError(method, str(error)) from None
        except SlackClientError as exc:
            raise HealthsyncError(self._redact(f"Slack {method}: {exc}")) from None
        except OSError as exc:  # URLError, timeouts, dropped connections
            raise _AmbiguousFailure(self._redact(f"Slack {method}: {type(exc).__name__}")) from None

    def _call(self, method: str, **kwargs) -> dict:
        """`_once` under the shared retry policy (for idempotent calls and unkeyed posts)."""
        return self.retry.call(lambda: self._once(method, **kwargs), stats=self.stats, what=f"Slack {method}")

    def find_posted(self, channel: str, key: str, oldest: float) -> dict | None:
        """The message in `channel` posted after `oldest` (epoch seconds) whose metadata carries `key`, or None.

        Raises `_SlackError` with Slack's error (e.g. channel_not_found, not_in_channel)
        when the history cannot be read.
        """
        cursor: str | None = None
        for _ in range(LOOKUP_MAX_PAGES):
            args: dict[str, Any] = {"channel": channel, "oldest": f"{oldest:.6f}", "limit": LOOKUP_PAGE_SIZE,
                                    "include_all_metadata": True}
            if cursor:
                args["cursor"] = cursor
            page = self._call("conversations.history", **args)
            for message in page.get("messages") or []:
                metadata = message.get("metadata") or {}
                payload = metadata.get("event_payload") or {}
                if metadata.get("event_type") == METADATA_EVENT_TYPE and payload.get("key") == key:
                    return message
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not (page.get("has_more") and cursor):
                return None
        log.warning("Slack: key lookup in %s stopped after %d pages", channel, LOOKUP_MAX_PAGES)
        return None

    def _post_keyed(self, args: dict[str, Any], key: str) -> dict:
        """chat.postMessage that never posts twice: after an ambiguous failure, look before posting again."""
        args = {**args, "metadata": {"event_type": METADATA_EVENT_TYPE, "event_payload": {"key": key}}}
        oldest = time.time() - LOOKUP_LOOKBACK_SECONDS
        state = {"ambiguous": False}

        def attempt() -> dict:
            if state["ambiguous"]:
                channel = self._channel_ids.get(args["channel"], args["channel"])
                try:
                    found = self.find_posted(channel, key, oldest)
                except _SlackError as exc:
                    if exc.error != "channel_not_found":
                        raise _Unverifiable(exc.error) from None
                    found = None  # no such channel, so nothing landed; the post below says channel_not_found
                except ConfigurationError as exc:
                    raise _Unverifiable(str(exc)) from None
                if found is not None:
                    log.info("Slack: message %s was already posted (answer lost), not posting again", key)
                    return {"ok": True, "channel": channel, "ts": found["ts"], "message": found}
            try:
                return self._once("chat.postMessage", **args)
            except _AmbiguousFailure:
                state["ambiguous"] = True
                raise

        try:
            return self.retry.call(attempt, stats=self.stats, what="Slack chat.postMessage")
        except _Unverifiable as exc:
            raise SlackDeliveryUncertainError(
                f"Slack chat.postMessage to {args['channel']}: the answer was lost and conversations.history "
                f"could not confirm it ({exc}); not posted again, to never post it twice"
            ) from None
        except _AmbiguousFailure as exc:
            raise SlackDeliveryUncertainError(f"{exc} (retries exhausted; the message may have been posted)") from None

    def dm_channel(self, user_email: str) -> str:
        """The DM channel id with the Slack user holding `user_email` (cached)."""
        key = user_email.lower()
        if key not in self._dm_channels:
            try:
                user = self._call("users.lookupByEmail", email=user_email)["user"]["id"]
            except _SlackError as exc:
                if exc.error == "users_not_found":
                    raise SlackUserNotFoundError(user_email) from None
                raise
            self._dm_channels[key] = self._call("conversations.open", users=[user])["channel"]["id"]
        return self._dm_channels[key]

    def post(
        self,
        channel: str | None = None,
        user_email: str | None = None,
        text: str = "",
        blocks: list[dict] | None = None,
        thread_ts: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Post to `channel` or to `user_email`'s DM; returns the message ts.

        `text` is the notification fallback and must already be escaped by the
        caller where it contains CRM text (`escape_mrkdwn`). With an
        `idempotency_key` the message is posted at most once even when Slack's
        answer is lost (see the module docstring). The lookup runs only after
        an ambiguous failure of this call: a later call with the same key posts
        again (callers keep their own markers across runs, as escalation does).
        Keyed replies in threads are not looked up (history lists top-level
        messages only), so `thread_ts` with a key is refused.
        """
        if idempotency_key is not None and thread_ts:
            raise ConfigurationError("Slack: an idempotency_key cannot be used for a thread reply (thread_ts)")
        if not channel and not user_email:
            raise ConfigurationError("a Slack message needs a channel or a user email")
        target = channel or self.dm_channel(user_email)  # type: ignore[arg-type]
        args: dict[str, Any] = {"channel": target, "text": _truncate(text or " ", MAX_TEXT)}
        fitted = fit_blocks(blocks)
        if fitted:
            args["blocks"] = fitted
        if thread_ts:
            args["thread_ts"] = thread_ts
        if idempotency_key is not None:
            reply = self._post_keyed(args, str(idempotency_key))
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
