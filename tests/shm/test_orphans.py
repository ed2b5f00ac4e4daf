"""Reader semaphores never outlive their ring: not when readers re-attach while the writer
closes, not when a reclaim replaces a dead writer's ring; and the tool lists and removes
any that another hand left behind."""

from __future__ import annotations

import io
import json
import os
import threading

import pytest

from its_camera_ai import shm

from . import _procs as P
from .conftest import leftovers


def semaphores(name: str) -> list[str]:
    return sorted(e for e in os.listdir(shm.SHM_DIR) if e.startswith(f"sem.its-ring-{name}."))


def follow(name: str, stop: threading.Event, attached: threading.Event) -> None:
    """What inference's camera feed does: read the ring, and when it closes or goes,
    attach again at once (then with a short backoff) until told to stop."""
    while not stop.is_set():
        try:
            reader = shm.attach(name)
        except shm.RingNotFound:
            stop.wait(0.001)
            continue
        attached.set()
        try:
            while not stop.is_set():
                reader.read_next(timeout=0.05)
        except (shm.RingClosed, shm.RingNotFound):
            pass
        finally:
            reader.close()


def test_readers_reattaching_while_the_writer_closes_leave_no_semaphore(ring_name: str) -> None:
    for _ in range(40):
        writer = shm.create(ring_name, slots=2, max_frame_bytes=P.FRAME_BYTES)
        writer.write(P.pattern(1), P.WIDTH, P.HEIGHT)
        stop = threading.Event()
        followers = [threading.Event() for _ in range(3)]
        threads = [
            threading.Thread(target=follow, args=(ring_name, stop, attached))
            for attached in followers
        ]
        for thread in threads:
            thread.start()
        for attached in followers:
            assert attached.wait(10)
        # Woken by the close, each follower looks for the ring again straight away.
        writer.close()
        stop.wait(0.05)
        stop.set()
        for thread in threads:
            thread.join(10)
        assert leftovers(ring_name) == [], "a reader semaphore outlived its ring"


def test_replacing_a_dead_writers_ring_leaves_none_of_its_semaphores(ring_name: str) -> None:
    ready, go = P.SPAWN.Event(), P.SPAWN.Event()
    writer = P.start(P.writer_paced, ring_name, 1, 0.0, 4, ready, go, False, 0.0)
    assert ready.wait(30)
    # Two reader processes register (slots 0 and 1), then everything is killed.
    out = P.SPAWN.Queue()
    readers = [P.start(P.idle_waiter, ring_name, 60.0, out) for _ in range(2)]
    while len(semaphores(ring_name)) < 2:
        assert all(p.is_alive() for p in readers)
        threading.Event().wait(0.02)
    go.set()
    writer.join(30)
    for reader in readers:
        P.kill(reader)
    assert semaphores(ring_name) == [f"sem.its-ring-{ring_name}.r0", f"sem.its-ring-{ring_name}.r1"]
    # The restarted writer wants another geometry, with a single reader slot.
    with shm.create(ring_name, slots=8, max_frame_bytes=P.FRAME_BYTES, max_readers=1) as new:
        assert not new.reclaimed
    assert leftovers(ring_name) == []


def test_list_shows_orphaned_semaphores_and_clean_removes_them(ring_name: str) -> None:
    writer = shm.create(ring_name, slots=2, max_frame_bytes=P.FRAME_BYTES)
    out = P.SPAWN.Queue()
    reader = P.start(P.idle_waiter, ring_name, 60.0, out)
    while not semaphores(ring_name):
        assert reader.is_alive()
        threading.Event().wait(0.02)
    P.kill(reader)
    # Someone removes the ring by hand; its writer then closes without a name to unlink
    # (the semaphores might be a new ring's by now, so they are not its to remove).
    os.unlink(f"{shm.SHM_DIR}/its-ring-{ring_name}")
    writer.close()
    assert semaphores(ring_name) == [f"sem.its-ring-{ring_name}.r0"]

    [row] = shm.list_rings(match=ring_name)
    assert (row.name, row.state, row.readers, row.stale) == (ring_name, "orphaned", 1, True)
    text = io.StringIO()
    assert shm.main(["list", "--match", ring_name], out=text) == 0
    assert text.getvalue().splitlines()[1].split()[0] == ring_name
    assert "orphaned" in text.getvalue()
    text = io.StringIO()
    shm.main(["list", "--json", "--match", ring_name], out=text)
    assert json.loads(text.getvalue())["state"] == "orphaned"

    assert shm.clean_rings(dry_run=True, match=ring_name) == [f"sem.its-ring-{ring_name}.r0"]
    assert semaphores(ring_name) == [f"sem.its-ring-{ring_name}.r0"]
    assert shm.clean_rings(match=ring_name) == [f"sem.its-ring-{ring_name}.r0"]
    assert leftovers(ring_name) == []
    assert shm.list_rings(match=ring_name) == []


@pytest.mark.parametrize("closed_by", ["writer", "clean"])
def test_a_reader_attaching_to_a_ring_being_removed_makes_no_semaphore(
    ring_name: str, closed_by: str
) -> None:
    writer = shm.create(ring_name, slots=2, max_frame_bytes=P.FRAME_BYTES)
    if closed_by == "writer":
        writer.close()
    else:
        writer.close(unlink=False)
        assert shm.clean_rings(match=ring_name) == [f"its-ring-{ring_name}"]
    with pytest.raises(shm.RingNotFound):
        shm.attach(ring_name)
    assert leftovers(ring_name) == []
