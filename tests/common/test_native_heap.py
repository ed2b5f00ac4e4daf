"""Native heap upkeep: fewer malloc arenas, free pages inside them given back, on a timer."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest

from its_camera_ai.common import ProcessSettings, Runtime, ServiceHost, ServiceUnit
from its_camera_ai.testing import host_settings

# Threads allocating at once, each in the arena glibc gives it, then keeping one block in
# eight: the free ones are holes no heap top can return. malloc_stats() prints a section per
# arena to stderr.
FRAGMENTING_THREADS = r"""
import ctypes, sys, threading
from its_camera_ai.common import limit_malloc_arenas, trim_native_heap

def anonymous_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

if int(sys.argv[1]):
    assert limit_malloc_arenas(int(sys.argv[1]))
kept, all_allocated = [], threading.Barrier(4)
def allocate():
    blocks = [bytearray(64 * 1024) for _ in range(400)]  # 25 MiB, below mmap's threshold
    kept.extend(blocks[::8])
    all_allocated.wait()  # all four alive at once: each keeps its arena
threads = [threading.Thread(target=allocate) for _ in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join()
before = anonymous_kib()
trimmed = trim_native_heap()
print(before, anonymous_kib(), int(trimmed))
ctypes.CDLL("libc.so.6").malloc_stats()
"""


def _fragment(arena_max: int) -> tuple[int, int, bool, int]:
    done = subprocess.run(
        [sys.executable, "-c", FRAGMENTING_THREADS, str(arena_max)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    before, after, trimmed = (int(v) for v in done.stdout.split())
    arenas = sum(line.startswith("Arena ") for line in done.stderr.splitlines())
    return before, after, bool(trimmed), arenas


def test_a_trim_gives_back_the_free_pages_inside_the_arenas() -> None:
    before_kib, after_kib, trimmed, arenas = _fragment(arena_max=0)
    assert arenas >= 4  # glibc's default: a thread allocating alongside others gets its own
    assert trimmed
    # ~88 of the 100 MiB touched is free; the trim returns most of it.
    assert before_kib - after_kib > 60 * 1024, (before_kib, after_kib)


def test_the_arena_limit_holds_threads_to_that_many_arenas() -> None:
    _, _, _, arenas = _fragment(arena_max=2)
    assert arenas == 2


async def _trims_counted(process: ProcessSettings) -> float | None:
    async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        return None

    settings = host_settings().model_copy(update={"process": process})
    host = ServiceHost(settings, [ServiceUnit(name="idle", grpc_services=(), register=register)])
    await host.start()
    try:
        await asyncio.sleep(0.5)
        return host.runtime.metrics.get_sample_value("process_malloc_trim_seconds_count")
    finally:
        await host.stop()


@pytest.mark.parametrize(("interval_s", "trims"), [(0.05, 3.0), (0.0, None)])
async def test_a_serving_host_trims_on_its_interval_and_not_when_it_is_off(
    interval_s: float, trims: float | None
) -> None:
    counted = await _trims_counted(ProcessSettings(malloc_trim_interval_s=interval_s))
    if trims is None:
        assert counted is None
    else:
        assert counted is not None
        assert counted >= trims
