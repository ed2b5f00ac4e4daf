"""Keeping a long-running process's native heap close to what it uses.

glibc's malloc gives threads that allocate at the same time arenas of their own (up to
eight per core) and returns memory to the system only from the top of a heap. A service
moving frames through decoder, gRPC and torch threads frees as much as it allocates, yet
the free pages inside its arenas stay resident and drift with the work: the soak saw RSS
creep up by 2-6 MiB an hour with nothing leaked (docs/reliability.md). Fewer arenas, and
a periodic ``malloc_trim`` (which since glibc 2.8 also gives back whole free pages inside
every arena, not only the top), keep what is resident near what is live.

Elsewhere than glibc (musl, macOS) both are no-ops, said once in the log.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from functools import cache

from prometheus_client import CollectorRegistry, Histogram

_log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # <malloc.h>


@cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
    except (OSError, AttributeError):
        _log.info("not glibc: native heap upkeep (arena limit, trimming) is off")
        return None
    return libc


def limit_malloc_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at ``count`` (0 keeps glibc's default). Arenas already
    made stay, so call it before the process starts its threads. True if applied."""
    libc = _glibc()
    if libc is None or count <= 0:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, count))


def trim_native_heap() -> bool:
    """Give free pages of every arena back to the system; True if any were."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


async def keep_native_heap_trimmed(interval_s: float, registry: CollectorRegistry) -> None:
    """Trim every ``interval_s`` until cancelled, off the event loop (a trim walks every
    arena under its lock: milliseconds on a large heap), timing each trim."""
    if _glibc() is None:
        return
    seconds = Histogram(
        "process_malloc_trim_seconds",
        "Time each periodic malloc_trim took (arena locks are held meanwhile).",
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
        registry=registry,
    )
    while True:
        await asyncio.sleep(interval_s)
        started = time.perf_counter()
        await asyncio.to_thread(trim_native_heap)
        seconds.observe(time.perf_counter() - started)
