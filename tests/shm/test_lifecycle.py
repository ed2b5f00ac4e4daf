"""Life cycle across processes: notification, dead writers, reclaim, corrupt objects."""

from __future__ import annotations

import os
import struct
import threading
import time

import numpy as np
import posix_ipc
import pytest

from its_camera_ai import shm
from its_camera_ai.shm.layout import HEADER_SIZE, OFF_WRITER

from . import _procs as P

# --- notification ------------------------------------------------------------------------


def test_waiting_reader_sleeps_and_times_out(ring_name: str) -> None:
    """A reader with nothing to read blocks on its semaphore: no busy waiting."""
    with shm.create(ring_name, slots=2, max_frame_bytes=P.FRAME_BYTES):
        out = P.SPAWN.Queue()
        p = P.start(P.idle_waiter, ring_name, 1.0, out)
        res = out.get(timeout=30)
        p.join(10)
    assert res["frame"] is False
    assert 0.95 <= res["wall"] < 2.0
    # A spinning reader would burn ~1 s of CPU; a sleeping one wakes 4 times to check the
    # writer. Generous bound for a loaded 2-core machine.
    assert res["cpu"] < 0.1, res


def test_timeout_zero_does_not_wait(ring_name: str) -> None:
    with shm.create(ring_name, slots=2, max_frame_bytes=P.FRAME_BYTES), shm.attach(ring_name) as r:
        t0 = time.monotonic()
        assert r.read_latest(timeout=0) is None
        assert r.read_next(timeout=0) is None
        assert not r.wait(0)
        assert time.monotonic() - t0 < 0.25


def test_many_reader_processes_get_every_frame(ring_name: str) -> None:
    ready, go = P.SPAWN.Event(), P.SPAWN.Event()
    out = P.SPAWN.Queue()
    readers_ready = [P.SPAWN.Event() for _ in range(3)]
    w = P.start(P.writer_paced, ring_name, 40, 0.01, 16, ready, go)
    assert ready.wait(30)
    readers = [P.start(P.reader_collect, ring_name, 40, 20.0, ev, out) for ev in readers_ready]
    for ev in readers_ready:
        assert ev.wait(30)
    go.set()
    results = [out.get(timeout=60) for _ in readers]
    for p in (*readers, w):
        p.join(20)
    assert len({r["pid"] for r in results}) == 3
    for r in results:
        assert r["bad"] == 0
        assert r["seqs"] == sorted(r["seqs"])
        assert len(set(r["seqs"])) == len(r["seqs"])
        assert r["seqs"] == list(range(1, 41)), r
        assert r["dropped"] == 0


def test_spinning_reader_gets_every_frame_and_sleeps_when_idle(ring_name: str) -> None:
    ready, go = P.SPAWN.Event(), P.SPAWN.Event()
    w = P.start(P.writer_paced, ring_name, 30, 0.01, 8, ready, go, True, 1.5)
    assert ready.wait(30)
    r = shm.attach(ring_name, spin=300e-6, skip_existing=True)
    go.set()
    seqs = []
    while len(seqs) < 30:
        f = r.read_next(timeout=5)
        assert f is not None
        assert P.check_pattern(f.array) == (True, f.sequence)
        seqs.append(f.sequence)
        del f
    assert seqs == list(range(1, 31))
    # Polling re-reads the last frame to keep the path warm: that is not a read.
    assert (r.stats.frames_read, r.stats.frames_dropped, r.stats.overruns) == (30, 0, 0)
    assert r.stats.handoff.count == 30
    assert r._interval_ns > 5_000_000  # it learned the writer's 10 ms cadence
    # No frame is due any more: after one missed window it sleeps, not spins.
    c0, t0 = time.process_time(), time.monotonic()
    assert r.read_next(timeout=1.0) is None
    assert time.monotonic() - t0 >= 0.99
    assert time.process_time() - c0 < 0.1
    r.close()
    w.join(10)


def test_writer_close_wakes_blocked_reader(ring_name: str) -> None:
    w = shm.create(ring_name, slots=2, max_frame_bytes=P.FRAME_BYTES)
    r = shm.attach(ring_name, check_interval=10.0)
    caught: list[BaseException] = []

    def block() -> None:
        try:
            r.read_next(timeout=5)
        except shm.ShmError as exc:
            caught.append(exc)

    t = threading.Thread(target=block)
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    w.close(unlink=False)
    t.join(5)
    assert time.monotonic() - t0 < 1.0
    assert len(caught) == 1
    assert isinstance(caught[0], shm.RingClosed)
    r.close()


# --- dead writer, reclaim ---------------------------------------------------------------


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_writer_killed_mid_write(ring_name: str, reap: bool) -> None:
    ready = P.SPAWN.Event()
    p = P.start(P.writer_killed_mid_write, ring_name, 3, 4, ready)
    assert ready.wait(30)
    r = shm.attach(ring_name, check_interval=0.05)
    f = r.read_latest(timeout=1)
    assert f is not None
    assert f.sequence == 3
    assert f.is_valid()
    assert P.check_pattern(f.array) == (True, 3)
    assert r.writer_status().liveness is shm.Liveness.ALIVE
    os.kill(p.pid, 9)
    if reap:
        p.join(10)
    else:
        time.sleep(0.2)  # killed but not waited for: a zombie with its pid still listed
    t0 = time.monotonic()
    with pytest.raises(shm.WriterDead, match=str(p.pid)):
        r.read_next(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert r.writer_status().liveness is shm.Liveness.DEAD
    assert r.stats.writer_dead == 1
    # The half-written frame 4 was never handed out (its slot is still odd: mid-write);
    # frame 3 is still intact.
    assert r._words[r._ci[4 % 4]] % 2 == 1
    assert f.is_valid()
    assert P.check_pattern(f.copy()) == (True, 3)
    with pytest.raises(shm.WriterDead):
        r.read_latest(timeout=0.2)
    assert [i.state for i in shm.list_rings(match=ring_name)] == ["dead"]

    # A restarted writer reclaims the ring; the same reader carries on where it was.
    w = shm.create(ring_name, slots=4, max_frame_bytes=P.FRAME_BYTES)
    assert w.reclaimed
    assert w.last_sequence == 3
    assert w.write(P.pattern(4), P.WIDTH, P.HEIGHT) == 4
    g = r.read_next(timeout=2)
    assert g is not None
    assert g.sequence == 4
    assert P.check_pattern(g.array) == (True, 4)
    assert r.stats.writer_restarts == 1
    assert f.is_valid()  # slot 3 untouched by the reclaim
    del f, g
    r.close()
    w.close()
    if not reap:
        p.join(10)


def test_live_writer_cannot_be_displaced(ring_name: str) -> None:
    ready = P.SPAWN.Event()
    p = P.start(P.writer_forever, ring_name, 4, ready, 0.01)
    try:
        assert ready.wait(30)
        with shm.attach(ring_name) as r:
            assert r.read_latest(timeout=10) is not None  # it has written
        with pytest.raises(shm.RingExists, match="live writer"):
            shm.create(ring_name, slots=4, max_frame_bytes=P.FRAME_BYTES)
    finally:
        P.kill(p)
    with pytest.raises(shm.RingExists, match="dead"):
        shm.create(ring_name, slots=4, max_frame_bytes=P.FRAME_BYTES, reclaim=False)
    with shm.create(ring_name, slots=4, max_frame_bytes=P.FRAME_BYTES) as w:
        assert w.reclaimed
        assert w.last_sequence > 0


def test_same_process_cannot_create_twice(ring_name: str) -> None:
    with shm.create(ring_name, slots=2, max_frame_bytes=100), pytest.raises(shm.RingExists):
        shm.create(ring_name, slots=2, max_frame_bytes=100)


def test_stale_ring_of_other_geometry_is_replaced(ring_name: str) -> None:
    w = shm.create(ring_name, slots=4, max_frame_bytes=P.FRAME_BYTES)
    w.write(P.pattern(1), P.WIDTH, P.HEIGHT)
    w.close(unlink=False)
    r = shm.attach(ring_name, check_interval=0.01)
    assert r.read_next(timeout=0) is not None
    with pytest.raises(shm.RingClosed) as closed:
        r.read_next(timeout=0.1)
    assert not closed.value.unlinked
    w2 = shm.create(ring_name, slots=8, max_frame_bytes=P.FRAME_BYTES)
    assert not w2.reclaimed
    assert w2.slot_count == 8
    assert w2.last_sequence == 0
    with pytest.raises(shm.RingClosed, match="attach again") as closed:
        r.read_next(timeout=0.5)
    assert closed.value.unlinked
    r.close()
    with shm.attach(ring_name) as r2:
        assert r2.slot_count == 8
    w2.close()


def test_only_the_creator_unlinks(ring_name: str) -> None:
    w = shm.create(ring_name, slots=2, max_frame_bytes=100)
    r = shm.attach(ring_name)
    r.close()
    assert os.path.exists(f"{shm.SHM_DIR}/its-ring-{ring_name}")
    w.close()
    assert not os.path.exists(f"{shm.SHM_DIR}/its-ring-{ring_name}")
    assert not any(e.startswith(f"sem.its-ring-{ring_name}.") for e in os.listdir(shm.SHM_DIR))


def test_ring_unlinked_under_a_reader(ring_name: str) -> None:
    w = shm.create(ring_name, slots=4, max_frame_bytes=P.FRAME_BYTES)
    w.write(P.pattern(1), P.WIDTH, P.HEIGHT)
    r = shm.attach(ring_name, check_interval=0.01)
    f = r.read_latest(timeout=1)
    assert f is not None
    # Someone unlinks the name while the writer lives: both keep working on the object.
    os.unlink(f"{shm.SHM_DIR}/its-ring-{ring_name}")
    w.write(P.pattern(2), P.WIDTH, P.HEIGHT)
    g = r.read_latest(timeout=1)
    assert g is not None
    assert g.sequence == 2
    w.close()  # the name is gone already: nothing else is unlinked
    with pytest.raises(shm.RingClosed, match="attach again"):
        r.read_latest(timeout=1)
    # Frames held through all this are still readable memory, never a crash.
    assert P.check_pattern(f.array) == (True, 1)
    assert P.check_pattern(g.array) == (True, 2)
    del f, g
    r.close()
    with pytest.raises(shm.RingNotFound):
        shm.attach(ring_name)


def test_dead_writers_ring_cleaned_under_a_reader(ring_name: str) -> None:
    p = P.SPAWN.Process(target=P.create_and_exit, args=(ring_name,))
    p.start()
    p.join(30)
    r = shm.attach(ring_name, check_interval=0.01)
    with pytest.raises(shm.WriterDead):
        r.read_latest(timeout=0.2)
    removed = shm.clean_rings(match=ring_name)
    assert removed == [f"its-ring-{ring_name}", f"sem.its-ring-{ring_name}.r0"]
    with pytest.raises(shm.RingNotFound, match="attach again"):
        r.read_latest(timeout=0.2)
    r.close()


def test_attach_waits_for_the_ring(ring_name: str) -> None:
    with pytest.raises(shm.RingNotFound):
        shm.attach(ring_name)
    t = threading.Timer(0.2, lambda: shm.create(ring_name, slots=2, max_frame_bytes=100))
    t.start()
    r = shm.attach(ring_name, timeout=5)
    t.join()
    r.close()


# --- corrupt, foreign, truncated objects -------------------------------------------------


def _foreign(ring_name: str, data: bytes) -> None:
    mem = posix_ipc.SharedMemory(
        f"/its-ring-{ring_name}", posix_ipc.O_CREX, mode=0o600, size=max(len(data), 1)
    )
    os.pwrite(mem.fd, data, 0)
    os.close(mem.fd)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 10, b"\x00" * HEADER_SIZE, os.urandom(2 * HEADER_SIZE), b"ITSRING\x00" * 600],
    ids=["empty", "short", "zeros", "random", "magic-only"],
)
def test_foreign_object_is_rejected_clearly(ring_name: str, data: bytes) -> None:
    _foreign(ring_name, data)
    with pytest.raises(shm.RingCorrupt):
        shm.attach(ring_name)
    with pytest.raises(shm.RingCorrupt):
        shm.create(ring_name, slots=2, max_frame_bytes=100)
    # A foreign object is never overwritten by create().
    assert os.path.getsize(f"{shm.SHM_DIR}/its-ring-{ring_name}") == max(len(data), 1)


def test_wrong_version_is_incompatible(ring_name: str) -> None:
    w = shm.create(ring_name, slots=2, max_frame_bytes=100)
    w.close(unlink=False)
    with open(f"{shm.SHM_DIR}/its-ring-{ring_name}", "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 99))
    with pytest.raises(shm.IncompatibleVersion, match="version 99"):
        shm.attach(ring_name)


def test_truncated_object_is_corrupt(ring_name: str) -> None:
    w = shm.create(ring_name, slots=4, max_frame_bytes=P.FRAME_BYTES)
    w.close(unlink=False)
    os.truncate(f"{shm.SHM_DIR}/its-ring-{ring_name}", HEADER_SIZE + 100)
    with pytest.raises(shm.RingCorrupt, match="truncated"):
        shm.attach(ring_name)


def test_corrupt_slot_metadata_is_reported(ring_name: str) -> None:
    with shm.create(ring_name, slots=2, max_frame_bytes=P.FRAME_BYTES) as w:
        w.write(P.pattern(1), P.WIDTH, P.HEIGHT)
        r = shm.attach(ring_name)
        # Scribble an impossible pixel format into the committed slot's metadata.
        slot_meta = HEADER_SIZE + 1 * w._map.slot_size + 64
        with open(f"{shm.SHM_DIR}/its-ring-{ring_name}", "r+b") as f:
            f.seek(slot_meta + 8 * 5 + 12)
            f.write(struct.pack("<I", 77))
        with pytest.raises(shm.RingCorrupt, match="pixel format"):
            r.read_latest(timeout=0)
        r.close()


def test_writer_identity_is_in_the_header(ring_name: str) -> None:
    with shm.create(ring_name, slots=2, max_frame_bytes=100):
        with open(f"{shm.SHM_DIR}/its-ring-{ring_name}", "rb") as f:
            f.seek(OFF_WRITER)
            pid, start, _, epoch, state = struct.unpack("<5Q", f.read(40))
        assert (pid, epoch, state) == (os.getpid(), 1, 1)
        assert start > 0
        assert np.uint64(start) == start
