"""connectors/read_ahead.py: pages fetched on a thread of their own, ahead of the caller, in order."""

from __future__ import annotations

import threading
import time

import pytest

from healthsync.connectors.base import CallStats
from healthsync.connectors.read_ahead import read_ahead


def test_the_pages_come_in_order_and_the_next_ones_are_requested_while_the_caller_holds_one():
    requested = {n: threading.Event() for n in range(6)}

    def chain():
        for n in range(6):
            requested[n].set()  # the request for page n left
            yield n

    got = []
    for page in read_ahead(chain(), depth=2):
        if page == 0:  # while the caller is still busy with the first page, the next two are requested
            assert requested[1].wait(2) and requested[2].wait(2)
        got.append(page)
    assert got == list(range(6))


def test_a_failure_of_the_fetching_thread_is_raised_in_the_caller_after_the_pages_before_it():
    def chain():
        yield 1
        yield 2
        raise RuntimeError("HubSpot list: unreachable")

    got = []
    with pytest.raises(RuntimeError, match="unreachable"):
        for page in read_ahead(chain()):
            got.append(page)
    assert got == [1, 2]


def test_a_caller_that_stops_early_stops_the_fetching_thread():
    requested = []
    ended = threading.Event()

    def chain():
        try:
            for n in range(1000):
                requested.append(n)
                yield n
        finally:
            ended.set()

    pages = read_ahead(chain(), depth=2, name="test-read-ahead")
    assert next(pages) == 0
    pages.close()
    assert ended.wait(2)
    assert len(requested) <= 5  # at most the pages already held, never the whole chain
    deadline = time.monotonic() + 2
    while [t for t in threading.enumerate() if t.name == "test-read-ahead"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if t.name == "test-read-ahead"]


def test_calls_made_ahead_count_toward_the_callers_tally():
    stats = CallStats()

    def chain():
        for n in range(3):
            stats.count()
            yield n

    with stats.tally() as mine:
        assert list(read_ahead(chain(), on_thread=stats.share_tallies())) == [0, 1, 2]
    assert (mine.calls, stats.calls) == (3, 3)
