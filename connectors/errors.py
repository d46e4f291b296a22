"""Errors as data: what each failure means for the user, in one table instead of if-ladders.

Two tables (after the Airbyte CDK's error mapping, shared/reference/style.md):

- `ERROR_KINDS`: exception class -> (kind, exit code, run status). The command
  line, the run summary and the scheduler all classify failures through
  `classify()`, so one failure has one exit code everywhere:
  0 ok, 1 record errors or an internal error, 2 configuration or credentials
  (nothing sent), 3 stopped (unreachable, quota, retries exhausted; state kept).
- `EXHAUSTED`: what a transient failure becomes once the bounded retries of
  `connectors.retry` ran out (kind of the last failure -> the StopRunError class,
  a sentence saying what happened, and what to do). Network failures are never
  reported as permission problems: they are `unreachable`.
"""

from __future__ import annotations

from dataclasses import dataclass

from healthsync.connectors.base import (
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    HealthsyncError,
    QuotaExhaustedError,
    RecordError,
    RetriesExhaustedError,
    RetryableError,
    StopRunError,
    UnreachableError,
)

EXIT_OK, EXIT_RECORD_ERRORS, EXIT_CONFIG, EXIT_STOPPED = 0, 1, 2, 3
#: exit code of an unexpected exception (a bug): like record errors, "the work is not complete"
EXIT_INTERNAL = 1


@dataclass(frozen=True)
class ErrorKind:
    kind: str  # configuration | credentials | quota | unreachable | retries_exhausted | stopped | record | internal
    exit_code: int
    status: str  # the run status it leads to: failed | stopped | record_errors


#: Most specific class first: `classify` takes the first match.
ERROR_KINDS: tuple[tuple[type[BaseException], ErrorKind], ...] = (
    (AuthenticationError, ErrorKind("credentials", EXIT_CONFIG, "failed")),
    (CredentialsError, ErrorKind("credentials", EXIT_CONFIG, "failed")),
    (ConfigurationError, ErrorKind("configuration", EXIT_CONFIG, "failed")),
    (QuotaExhaustedError, ErrorKind("quota", EXIT_STOPPED, "stopped")),
    (UnreachableError, ErrorKind("unreachable", EXIT_STOPPED, "stopped")),
    (RetriesExhaustedError, ErrorKind("retries_exhausted", EXIT_STOPPED, "stopped")),
    (StopRunError, ErrorKind("stopped", EXIT_STOPPED, "stopped")),
    # a RetryableError that escaped its retry loop un-converted: the API did not answer in time
    (RetryableError, ErrorKind("unreachable", EXIT_STOPPED, "stopped")),
    (RecordError, ErrorKind("record", EXIT_RECORD_ERRORS, "record_errors")),
    (HealthsyncError, ErrorKind("internal", EXIT_INTERNAL, "failed")),
)
INTERNAL = ErrorKind("internal", EXIT_INTERNAL, "failed")


def classify(exc: BaseException) -> ErrorKind:
    """The kind, exit code and run status of a failure (anything unknown is internal: exit 1)."""
    for cls, kind in ERROR_KINDS:
        if isinstance(exc, cls):
            return kind
    try:  # the settings loader's error lives in config/, which connectors/ may import
        from healthsync.config.settings import ConfigError
    except ImportError:  # pragma: no cover
        ConfigError = ()  # type: ignore[assignment]
    if ConfigError and isinstance(exc, ConfigError):
        return ERROR_KINDS[1][1]
    return INTERNAL


@dataclass(frozen=True)
class Exhausted:
    error: type[StopRunError]
    what: str  # what happened, with {detail}, {attempts}, {seconds}
    action: str  # what to do, with {system}


#: kind of the last transient failure -> what it becomes when the retries ran out
EXHAUSTED: dict[str, Exhausted] = {
    "network": Exhausted(
        UnreachableError,
        "unreachable: no answer ({detail}) after {attempts} attempts in {seconds:.0f}s",
        "check the network and {system}'s status page; the next run resumes where this one stopped",
    ),
    "rate_limited": Exhausted(
        RetriesExhaustedError,
        "still rate limited (429) after {attempts} attempts in {seconds:.0f}s ({detail})",
        "retries exhausted; the next run resumes where this one stopped (if it persists, another integration "
        "may be using the same {system} API limit)",
    ),
    "server_error": Exhausted(
        RetriesExhaustedError,
        "server errors after {attempts} attempts in {seconds:.0f}s ({detail})",
        "retries exhausted; {system} may be having an incident; the next run resumes where this one stopped",
    ),
}

#: the API name as it starts a connector's `what` ("HubSpot batch update companies")
SYSTEMS = {"hubspot": "hubspot", "salesforce": "salesforce", "slack": "slack"}
#: how a system is named in a sentence
DISPLAY = {"hubspot": "HubSpot", "salesforce": "Salesforce", "slack": "Slack"}


def split_call(what: str) -> tuple[str | None, str]:
    """("hubspot", "batch update companies") from "HubSpot batch update companies"."""
    head, _, rest = what.partition(" ")
    system = SYSTEMS.get(head.lower())
    return (system, rest) if system else (None, what)
