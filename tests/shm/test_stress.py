"""Writer SIGKILLed and restarted, at random points, while reader processes run.

Every frame a reader still finds valid after checking its bytes must be untorn, and so
must every copy-out that did not raise: the seqlock's whole promise. A short version runs
by default; the long one is marked `stress`.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from its_camera_ai import shm

from . import _procs as P


def _run(ring_name: str, *, kills: int, seconds: float, slots: int) -> list[dict[str, int]]:
    out = P.SPAWN.Queue()
    ready = P.SPAWN.Event()
    writer = P.start(P.writer_forever, ring_name, slots, ready)
    assert ready.wait(30)
    modes = ("next", "latest")
    evs = [P.SPAWN.Event() for _ in modes]
    readers = [
        P.start(P.stress_reader, ring_name, seconds, mode, ev, out)
        for mode, ev in zip(modes, evs, strict=True)
    ]
    for ev in evs:
        assert ev.wait(30)
    rng = random.Random(ring_name)
    pause = seconds / (kills + 1)
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 1.0) * pause)
            os.kill(writer.pid, signal.SIGKILL)
            writer.join(10)
            time.sleep(rng.uniform(0.0, 0.1))  # readers meet a dead writer for a moment
            ready = P.SPAWN.Event()
            writer = P.start(P.writer_forever, ring_name, slots, ready)
            assert ready.wait(30)
        results = [out.get(timeout=seconds + 60) for _ in readers]
    finally:
        P.kill(writer)
        for p in readers:
            P.kill(p)
    return results


def _check(results: list[dict[str, int]], kills: int) -> None:
    for res in results:
        assert res["torn_valid"] == 0, res  # never a torn frame passed as valid
        assert res["bad_copy"] == 0, res  # never a torn copy-out
        assert res["nonmono"] == 0, res  # sequences only grow, across restarts too
        assert res["frames"] > 0, res
        assert res["restarts"] == kills, res
    # Tiny frames and 3 slots: the writer laps the readers constantly, and they notice.
    assert sum(r["dropped"] for r in results) > 0
    assert sum(r["torn_detected"] + r["copy_torn"] for r in results) > 0


def test_writer_killed_and_restarted_under_readers(ring_name: str) -> None:
    results = _run(ring_name, kills=2, seconds=3.0, slots=3)
    _check(results, kills=2)
    # The last writer was killed too: the ring is stale, and the next one reclaims it.
    with shm.create(ring_name, slots=3, max_frame_bytes=P.FRAME_BYTES) as w:
        assert w.reclaimed


@pytest.mark.stress
def test_writer_killed_and_restarted_under_readers_long(ring_name: str) -> None:
    results = _run(ring_name, kills=20, seconds=30.0, slots=3)
    _check(results, kills=20)
