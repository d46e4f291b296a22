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

`each_lane` is the one place that walks the lanes. It runs them concurrently, a
thread per live lane (issue 14 "both allowances busy"): HubSpot's pull does not
wait for Salesforce's, and one CRM's write-back and tasks go on while the other's
are still sending. Every stage uses only its own connector and commits its own
transactions (a connection per thread from the state store's pool; SQLite waits
for the other writer, `timeout` 30 s, WAL). Where lanes share a decision (the
per-owner daily task cap), it is made once for both on a thread of its own
(`SharedStep`: the playbook plan), and the lane stages that need it wait for
it. The other shared steps (fields check, score, alerts, record) run on the
main thread between the concurrent stages.

Interruption: an exception other than a lane stop (a crash, Ctrl-C in the main
thread) asks the other lanes to stop at their next checkpoint (`checkpoint()`,
called on every page, batch and hook), as a killed process would; the exception
is raised once every lane thread has ended (or after LANE_JOIN_S).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, TypeVar

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
        """Stop this lane because of `exc` raised during `stage` (the first stop is the one kept: the
        lane's write-back and tasks run side by side, and both may meet the same outage)."""
        if self.stop is not None:
            log.info("%s also stopped during %s: %s", self.crm, stage, exc)
            return
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


#: after an interruption, how long the main thread waits for the lane threads to reach a checkpoint
LANE_JOIN_S = 30.0

#: per lane thread: the Event of its `each_lane` call, set when its lanes are asked to stop
_lane_thread = threading.local()


class LanesInterrupted(BaseException):
    """Raised in a lane thread at a checkpoint when the run is being interrupted (not a lane stop:
    `Lane.run` lets it through, like KeyboardInterrupt)."""


def checkpoint() -> None:
    """Raise LanesInterrupted in a lane thread when the run is being interrupted; a no-op otherwise."""
    stopping = getattr(_lane_thread, "stopping", None)
    if stopping is not None and stopping.is_set():
        raise LanesInterrupted("the run was interrupted")


def each_lane(lanes: Iterable[Lane], fn: Callable[[Lane], None], *, together: bool = True) -> None:
    """Call `fn(lane)` for every lane still alive: concurrently, a thread per lane (see the module docstring).

    `together=False` calls them one after the other on this thread. A lane stop is the lane's own
    business (`Lane.run`); any other exception of a lane stops the other lanes at their next
    checkpoint and is raised here once they have ended.
    """
    live = [lane for lane in lanes if lane.alive]
    if not together or len(live) < 2:
        for lane in live:
            fn(lane)
        return
    _in_threads([(f"lane-{lane.crm}", lambda lane=lane: fn(lane)) for lane in live], threading.Event())


def side_by_side(*stages: Callable[[], None] | None) -> None:
    """Run independent stages of one lane at once, a thread each (None: skipped), and return when all ended.

    A CRM's write-back and its task creation need nothing from each other (the tasks come from the
    scores, the fields too), and Salesforce spends most of both waiting for Bulk API 2.0 jobs whose
    status polls back off: one after the other, a 100,000-account day waited ~16 s per job, three jobs in
    a row. Each stage handles its own lane stop (`Lane.run`; the first stop is kept). Any other exception
    interrupts the run as in `each_lane`: the other stages (and lanes) stop at their next checkpoint,
    and the exception is raised here once they have ended.
    """
    todo = [stage for stage in stages if stage is not None]
    if len(todo) < 2:
        for stage in todo:
            stage()
        return
    name = threading.current_thread().name
    stopping = getattr(_lane_thread, "stopping", None) or threading.Event()
    _in_threads([(f"{name}-{i}", stage) for i, stage in enumerate(todo)], stopping)


def _in_threads(work: list[tuple[str, Callable[[], None]]], stopping: threading.Event) -> None:
    """Run each (thread name, function) in a thread of its own and wait for all of them.

    The first exception of a thread sets `stopping` (the others end at their next checkpoint) and is
    raised here once every thread has ended, a real failure before an interruption it caused.
    """
    failures: list[BaseException] = []

    def body(fn: Callable[[], None]) -> None:
        _lane_thread.stopping = stopping
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, raised there
            failures.append(exc)
            stopping.set()
        finally:
            _lane_thread.stopping = None

    # each thread runs in a copy of the caller's context (context variables set by the run stay visible)
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(body, fn), name=name, daemon=True)
               for name, fn in work]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # short joins: Ctrl-C reaches the main thread while the threads run
    except BaseException:  # Ctrl-C / SystemExit in the calling thread: the others stop at their next checkpoint
        stopping.set()
        deadline = time.monotonic() + LANE_JOIN_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        raise
    if failures:
        interrupted = [exc for exc in failures if not isinstance(exc, LanesInterrupted)]
        raise (interrupted or failures)[0]


class SharedStep(Generic[T]):
    """A step the lanes share, computed once on a thread of its own while they go on; their stages that
    need it wait for it (`result`).

    The run's playbook plan is one: both CRMs' episodes are planned in one pass (the per-owner cap spans
    them) while the write-backs send, and each lane's task creation waits for it. A failure of the step
    is raised on the thread that started it (`join`); a lane waiting for it is interrupted
    (`LanesInterrupted`), as by any failure of another thread of the run.
    """

    def __init__(self, name: str, fn: Callable[[], T]):
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._body, fn), name=name, daemon=True)
        self._thread.start()

    def _body(self, fn: Callable[[], T]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # noqa: BLE001 - raised by `join` on the starting thread
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> T:
        """The step's value, once computed (a lane thread waits here, checking for an interruption)."""
        while not self._done.wait(0.2):
            checkpoint()
        if self._error is not None:
            raise LanesInterrupted(f"{self._thread.name} failed: {type(self._error).__name__}")
        return self._value  # type: ignore[return-value]

    def join(self) -> T:
        """Wait for the step (short joins: Ctrl-C still reaches the calling thread) and return or raise its outcome."""
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def wait(self) -> None:
        while self._thread.is_alive():
            self._thread.join(0.2)


def alive(lanes: Iterable[Lane]) -> list[Lane]:
    return [lane for lane in lanes if lane.alive]
