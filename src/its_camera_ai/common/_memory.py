"""Handing free heap memory back to the operating system (glibc's ``malloc_trim``)."""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable

__all__ = ["release_free_heap", "trim_heap_periodically"]

_log = logging.getLogger(__name__)


def release_free_heap() -> Callable[[], None]:
    """``malloc_trim(0)`` of glibc, or a no-op elsewhere.

    glibc keeps memory freed into a thread's arena for reuse and returns it to the system
    only from the arena's top: a long-lived service whose threads (gRPC's, torch's, the
    decoder's) allocate and free buffers of many sizes grows its resident set slowly with
    memory it no longer uses. The trim releases every free page, wherever it lies.
    """
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None

    def release() -> None:
        trim(0)

    return release


async def trim_heap_periodically(interval_seconds: float) -> None:
    """Release free heap every ``interval_seconds`` (in a thread: it walks every arena)
    until cancelled."""
    release = release_free_heap()
    while True:
        await asyncio.sleep(interval_seconds)
        await asyncio.to_thread(release)
