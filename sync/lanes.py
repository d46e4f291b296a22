"""Per-CRM lanes: one CRM's trouble never stops the other CRM's work.

A run is two kinds of work (design.md "One run, as data flows"):

    lane salesforce:  check fields -> pull  ─┐                 ┌─> write-back -> tasks
                                             ├─> score (shared) ┤
    lane hubspot:     check fields -> pull  ─┘                 └─> write-back -> tasks
                                                  then alerts (Slack, shared) -> record

Each CRM's stages run inside its `Lane`. When a stage raises `StopRunError`
(unreachable, quota spent, retries exhausted; `connectors.errors`), that lane
stops: its remaining stages are skipped, everything it stored so far is kept
(cursors, confirmed writes, the retry queue), and the next run resumes it. The
other lane goes on with its pull, score, write-back, tasks and alerts. A
`ConfigurationError` found before anything is sent (the fields check) fails the
whole run (exit 2, nothing sent); one raised later fails only its lane.

`each_lane` is the one place that walks the lanes; it runs them one after the
other today, so a later change can run them concurrently without touching the
stages (every stage only uses its own connector and commits its own transactions).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar

from healthsync.connectors.base import ConfigurationError, CrmConnector, RetryableError, StopRunError
from healthsync.connectors.errors import DISPLAY, classify

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class LaneStop:
    """Why a lane stopped: which stage, which call, what kind of failure and what to do."""

    system: str
    stage: str
    kind: str  # quota | unreachable | retries_exhausted | stopped | configuration | credentials
    reason: str
    call: str | None = None
    action: str | None = None

    @property
    def sentence(self) -> str:
        """`HubSpot stopped during write-back: <what happened; what to do>`."""
        return f"{DISPLAY.get(self.system, self.system)} stopped during {self.stage}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"system": self.system, "stage": self.stage, "kind": self.kind, "call": self.call,
                "action": self.action, "reason": self.reason}


@dataclass
class Lane:
    """One CRM's pull, write-back and tasks; `stop` is set once it cannot go on this run."""

    crm: str
    connector: CrmConnector
    stop: LaneStop | None = None
    stages_done: list[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.stop is None

    @property
    def connectors(self) -> dict[str, CrmConnector]:
        """This lane's connector in the shape the stage functions take."""
        return {self.crm: self.connector}

    def run(self, stage: str, fn: Callable[[], T], *, fail_fast_on_config: bool = False) -> T | None:
        """Run one stage of this lane; None (and the lane stopped) when the CRM cannot go on.

        `fail_fast_on_config`: a ConfigurationError propagates (the run fails, nothing sent)
        instead of stopping only this lane.
        """
        if not self.alive:
            return None
        try:
            result = fn()
        except StopRunError as exc:
            self.halt(stage, exc)
            return None
        except RetryableError as exc:  # escaped its retry loop unconverted: the CRM did not answer
            self.halt(stage, exc)
            return None
        except ConfigurationError as exc:
            if fail_fast_on_config:
                raise
            self.halt(stage, exc)
            return None
        self.stages_done.append(stage)
        return result

    def halt(self, stage: str, exc: BaseException) -> None:
        """Stop this lane because of `exc` raised during `stage`."""
        kind = classify(exc).kind
        self.stop = LaneStop(
            system=self.crm,
            stage=stage,
            kind=kind,
            reason=str(exc),
            call=getattr(exc, "call", None),
            action=getattr(exc, "action", None),
        )
        log.warning("%s", self.stop.sentence)


def make_lanes(connectors: dict[str, CrmConnector]) -> list[Lane]:
    return [Lane(crm, connector) for crm, connector in connectors.items()]


def each_lane(lanes: Iterable[Lane], fn: Callable[[Lane], None]) -> None:
    """Call `fn(lane)` for every lane still alive (one after the other; see the module docstring)."""
    for lane in lanes:
        if lane.alive:
            fn(lane)


def alive(lanes: Iterable[Lane]) -> list[Lane]:
    return [lane for lane in lanes if lane.alive]
