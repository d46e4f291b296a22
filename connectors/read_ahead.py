"""Read ahead: the next API pages are fetched while the caller is still busy with the last one.

HubSpot's list paging is a chain (each page's `after` token comes from the page before), paced at the
tier's allowance (19 requests/s on professional). Fetched and processed on one thread, every pause of
the consumer is a pause of the chain: the day after a first sync lists ~6,000 pages of our own writes,
and each 2,000 rows are mapped and compared with the replica before the next request left, so the
allowance went partly unused (~18.6 requests/s measured at 100,000 accounts per CRM, where 19 were
allowed). With `read_ahead` a thread keeps requesting, up to `depth` pages ahead, while the caller maps
and stores; the order of the pages is unchanged.

Failures keep their meaning: an exception of the fetching thread is raised in the caller, at the page
where it happened, after the pages fetched before it. When the caller stops early (an exception, a
`close()`), the thread ends after its current request, and nothing it fetched later is used.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

#: pages fetched ahead of the caller at most (memory: a few API pages)
DEFAULT_DEPTH = 4
_PUT_WAIT_S = 0.2


def read_ahead(pages: Iterator[T], *, depth: int = DEFAULT_DEPTH, name: str = "read-ahead",
               on_thread: Callable[[], None] | None = None) -> Iterator[T]:
    """Yield what `pages` yields, fetched on a thread of its own up to `depth` items ahead.

    `on_thread` runs first on the fetching thread (e.g. so its calls count toward the caller's tallies).
    The thread runs in a copy of the caller's context (context variables stay visible).
    """
    box: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: tuple) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=_PUT_WAIT_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            if on_thread is not None:
                on_thread()
            for page in pages:
                if not put(("page", page)):
                    return
            put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - raised in the caller, where the page would have been
            put(("error", exc))
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=contextvars.copy_context().run, args=(produce,), name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = box.get()
            if kind == "page":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()  # the fetching thread ends after its current request; what it holds is dropped
