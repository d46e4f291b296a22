"""The emulators' shared clock: strictly increasing stamps, and an advance that really moves them."""

from __future__ import annotations

from datetime import timedelta

from healthsync.connectors.sandbox.clock import Clock


def test_given_stamps_issued_faster_than_one_per_millisecond_then_advancing_puts_them_all_that_far_behind():
    # thousands of calls within a few ms push the strictly increasing clock ahead of real time;
    # the search-lag contract ("searchable 2 s after the write") was flaky until advance moved that lead too
    clock = Clock()
    stamps = [clock.now() for _ in range(5000)]
    assert all(a < b for a, b in zip(stamps, stamps[1:]))
    after = clock.advance(2)
    assert after - stamps[-1] >= timedelta(seconds=2)
