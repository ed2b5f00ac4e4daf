"""asyncio's socket reads, sized for a process that serves for months.

asyncio's selector transports read a socket for a plain ``Protocol`` (redis-py's streams,
asyncpg's connections) with ``recv(max_size)``, 256 KiB, and ``recv`` allocates all 256 KiB
before shrinking the block to what arrived. Once glibc's mmap threshold has risen (it rises
with the first large block freed after start-up), such a block comes from the heap, and it
fits none of the free space a serving heap has left between what it holds: each one takes
fresh heap at the top, which the heap keeps. A query service hearing analytics' commits on
Redis (~15 a second) grew its heap ~3.5 MiB an hour while what it held in use stayed flat;
with 16 KiB reads its heap stayed the same size (docs/reliability.md, the soak). The cost
is a system call per 16 KiB of a large reply: a 4.5 MB PostgreSQL result 1.11x slower to
fetch, a small one no slower.

``max_size`` is an undocumented class attribute of asyncio's (python/asyncio#90;
python/cpython#85451 would read into a reused buffer instead): a Python without it is left
as it is, with a warning.
"""

from __future__ import annotations

import logging
from asyncio import selector_events

__all__ = ["SOCKET_READ_BYTES", "bound_asyncio_socket_reads"]

_log = logging.getLogger(__name__)

SOCKET_READ_BYTES = 16 * 1024


def bound_asyncio_socket_reads() -> None:
    """Make asyncio's selector transports read at most ``SOCKET_READ_BYTES`` at a time."""
    transport = getattr(selector_events, "_SelectorTransport", None)
    size = getattr(transport, "max_size", None)
    if transport is None or not isinstance(size, int):
        _log.warning("asyncio has no _SelectorTransport.max_size: its socket reads stay as sized")
        return
    transport.max_size = min(size, SOCKET_READ_BYTES)
