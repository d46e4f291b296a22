"""`each_lane` runs the lanes in threads (issue 14 item 4): a lane stop stays the lane's own; a crash of one lane
stops the other at its next checkpoint, as a killed process would, and is raised to the caller."""

from __future__ import annotations

import threading

import pytest

from healthsync.connectors.base import StopRunError
from healthsync.sync.lanes import LanesInterrupted, checkpoint, each_lane, make_lanes

ROUNDS = 2000  # bounded: the other lane gives up long before


def _lanes():
    return make_lanes({"salesforce": object(), "hubspot": object()})


def test_given_two_lanes_when_each_lane_then_both_run_at_once_in_their_own_threads():
    lanes, both_in = _lanes(), threading.Barrier(2, timeout=10)
    seen = {}

    def stage(lane):
        both_in.wait()  # returns only when the two lanes are inside their stage at the same time
        seen[lane.crm] = threading.current_thread().name

    each_lane(lanes, lambda lane: lane.run("pull", lambda: stage(lane)))
    assert seen == {"salesforce": "lane-salesforce", "hubspot": "lane-hubspot"}
    assert [lane.stages_done for lane in lanes] == [["pull"], ["pull"]]


def test_given_one_lane_stopped_when_each_lane_then_the_other_finishes_its_stage():
    lanes, other_done = _lanes(), threading.Event()

    def stage(lane):
        if lane.crm == "hubspot":
            raise StopRunError("quota spent", system="hubspot")
        for _ in range(5):
            checkpoint()  # no interruption: a lane stop is not one
        other_done.set()

    each_lane(lanes, lambda lane: lane.run("write-back", lambda: stage(lane)))
    assert other_done.is_set() and lanes[0].alive and lanes[0].stages_done == ["write-back"]
    assert not lanes[1].alive and lanes[1].stop.stage == "write-back"


def test_given_one_lane_crashing_when_each_lane_then_the_other_stops_at_its_next_checkpoint_and_the_crash_is_raised():
    lanes, started, reached = _lanes(), threading.Event(), []

    def stage(lane):
        if lane.crm == "hubspot":
            started.wait(10)
            raise RuntimeError("boom")
        started.set()
        for n in range(ROUNDS):
            reached.append(n)
            checkpoint()
            threading.Event().wait(0.005)

    with pytest.raises(RuntimeError, match="boom"):
        each_lane(lanes, lambda lane: lane.run("pull", lambda: stage(lane)))
    assert 0 < len(reached) < ROUNDS  # interrupted, not run to its end
    assert lanes[0].stages_done == [] and lanes[0].alive  # an interruption is no lane stop


def test_given_no_lane_thread_when_checkpoint_then_nothing_happens():
    checkpoint()  # the main thread (and a single lane run inline) is never interrupted by it
    assert issubclass(LanesInterrupted, BaseException) and not issubclass(LanesInterrupted, Exception)
