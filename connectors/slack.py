"""Slack notifier on slack-sdk: post Block Kit messages to a channel or a user's DM.

- DMs go users.lookupByEmail -> conversations.open -> chat.postMessage
  (crm-api-notes 3.4); an unknown email raises `SlackUserNotFoundError` so the
  caller can fall back to a channel.
- 429 is retried by the one retry policy honouring `Retry-After` (3.6); the
  SDK's own retry handlers are disabled so nothing retries twice.
- Blocks are kept within Slack's limits (3.5): at most 50 blocks and 3,000
  characters per section text; overflow is truncated with an ellipsis, never
  a failed message.
- `escape_mrkdwn` escapes `&`, `<`, `>` so CRM text such as `<!channel> Acme`
  or `<@U123>` pings nobody.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from connectors.base import CallStats, ConfigurationError, HealthsyncError, RecordError, RetryableError
from connectors.redact import Redactor, reveal
from connectors.retry import RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_CONTEXT_TEXT = 2000
MAX_FIELDS = 10
MAX_TEXT = 40000  # top-level text; Slack truncates beyond it (3.2)
ELLIPSIS = "…"

_AUTH_ERRORS = {"not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired", "missing_scope"}


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

    def _call(self, method: str, **kwargs) -> dict:
        """One Web API call through the SDK's own method (each sends its documented content type)."""
        sdk_method = getattr(self._client, method.replace(".", "_"))

        def attempt():
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
                    raise RetryableError(f"Slack {method}: {error or response.status_code}") from None
                if error in _AUTH_ERRORS:
                    raise ConfigurationError(
                        f"Slack {method}: {error} (check HEALTHSYNC__SLACK__BOT_TOKEN and the app's scopes: "
                        "chat:write, users:read.email, im:write)"
                    ) from None
                raise _SlackError(method, str(error)) from None
            except SlackClientError as exc:
                raise HealthsyncError(self._redact(f"Slack {method}: {exc}")) from None
            except OSError as exc:  # URLError, timeouts, dropped connections
                raise RetryableError(self._redact(f"Slack {method}: {type(exc).__name__}")) from None

        return self.retry.call(attempt, stats=self.stats, what=f"Slack {method}")

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
    ) -> str:
        """Post to `channel` or to `user_email`'s DM; returns the message ts.

        `text` is the notification fallback and must already be escaped by the
        caller where it contains CRM text (`escape_mrkdwn`).
        """
        if not channel and not user_email:
            raise ConfigurationError("a Slack message needs a channel or a user email")
        target = channel or self.dm_channel(user_email)  # type: ignore[arg-type]
        args: dict[str, Any] = {"channel": target, "text": _truncate(text or " ", MAX_TEXT)}
        fitted = fit_blocks(blocks)
        if fitted:
            args["blocks"] = fitted
        if thread_ts:
            args["thread_ts"] = thread_ts
        reply = self._call("chat.postMessage", **args)
        return reply["ts"]


class _SlackError(HealthsyncError):
    def __init__(self, method: str, error: str):
        super().__init__(f"Slack {method}: {error}")
        self.error = error


def slack_from_ready(ready: dict, **kwargs) -> SlackNotifier:
    """A notifier for a running sandbox, from its ready-file dict."""
    s = ready["slack"]
    return SlackNotifier(s["token"], base_url=s.get("base_url"), **kwargs)
