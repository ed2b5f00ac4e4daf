"""Wake-ups from writer to readers without busy waiting.

Scheme: a fixed table of reader registrations in the ring header (pid, start ticks,
attach time) and one POSIX semaphore per registration index, '/its-ring-<name>.r<i>'.

Why this and not the alternatives:
- one shared semaphore cannot wake an unknown number of readers exactly once each;
- a message queue per reader costs a copy and a syscall per message and its depth is
  capped by /proc/sys/fs/mqueue/msg_max (10 here), so a slow reader would make the writer
  choose between blocking and dropping notifications;
- a semaphore post never blocks, is a userspace atomic unless someone sleeps on it (then
  one futex wake), and sem_timedwait gives the reader its timeout.

The writer posts only when the semaphore's value is 0, so a reader that sleeps through
many frames wakes once instead of spinning through a backlog of stale posts, and a dead
reader's semaphore stays at 1 instead of growing. That cannot lose a wake-up: the writer
publishes the new sequence before it reads the value, and the reader re-reads the
sequence after every wake (see RingReader._wait).

The writer re-reads the table only when the header's reader generation changes, so the
per-frame cost is one aligned 8-byte load plus one sem_getvalue per reader.

Semaphores never outlive their ring: a reader creates its semaphore only under the ring's
lock and only while the ring's name still refers to the object it opened, and whoever
unlinks a ring (its writer's close, a reclaim that replaces it, the cleanup tool) unlinks
its semaphores under the same lock. A reader that re-attached while the writer closed
used to create its semaphore after the writer had removed them all, leaving it behind.
"""

from __future__ import annotations

import logging
import os
import time

import posix_ipc

from its_camera_ai.shm._errors import ReadersFull, RingNotFound, ShmError
from its_camera_ai.shm._system import (
    MODE,
    ShmObject,
    pid_namespace,
    process_alive,
    process_start_ticks,
    same_pid_namespace,
    semaphore_name,
)
from its_camera_ai.shm.layout import IDX_READER_GEN, OFF_READERS, READER_ENTRY

_log = logging.getLogger(__name__)
_ENTRY_WORDS = READER_ENTRY // 8
_FIRST = OFF_READERS // 8


def _entry(index: int) -> int:
    return _FIRST + index * _ENTRY_WORDS


def reader_entries(hdr: memoryview, max_readers: int) -> list[tuple[int, int, int]]:
    """(pid, start ticks, pid namespace) of every registration slot."""
    out = []
    for i in range(max_readers):
        e = _entry(i)
        out.append((hdr[e], hdr[e + 1], hdr[e + 3]))
    return out


def entry_is_live(pid: int, start: int, pidns: int) -> bool:
    if pid == 0:
        return False
    if not same_pid_namespace(pidns):
        # Another namespace's pid cannot be checked from here: keep it, err on the side
        # of not stealing a live reader's slot.
        return True
    return process_alive(pid, start)


class ReaderWaiter:
    """The reader's side: a registration slot in the header and its semaphore."""

    def __init__(self, obj: ShmObject, hdr: memoryview, ring: str, max_readers: int) -> None:
        self._obj = obj
        self._hdr = hdr
        with obj.locked():
            if not obj.still_named():
                # Unlinked (closed, replaced or cleaned) since it was opened: a semaphore
                # made now would have no ring left to be removed with.
                raise RingNotFound(f"ring {ring!r} was unlinked or replaced: attach again")
            index = None
            for i, (pid, start, pidns) in enumerate(reader_entries(hdr, max_readers)):
                if not entry_is_live(pid, start, pidns):
                    index = i
                    break
            if index is None:
                raise ReadersFull(f"all {max_readers} reader slots of ring {ring!r} are taken")
            # The semaphore must exist before the entry is visible: the writer opens it
            # as soon as it sees the entry.
            self.sem = posix_ipc.Semaphore(
                semaphore_name(ring, index), posix_ipc.O_CREAT, mode=MODE, initial_value=0
            )
            self.drain()
            e = _entry(index)
            hdr[e] = 0
            hdr[e + 1] = process_start_ticks(os.getpid())
            hdr[e + 2] = time.time_ns()
            hdr[e + 3] = pid_namespace()
            hdr[e] = os.getpid()
            hdr[IDX_READER_GEN] = hdr[IDX_READER_GEN] + 1
        self.index = index

    def wait(self, timeout: float) -> bool:
        """Sleep until posted or `timeout` seconds pass; True when posted."""
        try:
            self.sem.acquire(max(timeout, 0.0))
        except posix_ipc.BusyError:
            return False
        return True

    def drain(self) -> None:
        while True:
            try:
                self.sem.acquire(0)
            except posix_ipc.BusyError:
                return

    def close(self, *, unregister: bool = True) -> None:
        if unregister and self._obj.fd >= 0:
            try:
                with self._obj.locked(timeout=1.0):
                    e = _entry(self.index)
                    if self._hdr[e] == os.getpid():
                        self._hdr[e] = 0
                        self._hdr[IDX_READER_GEN] = self._hdr[IDX_READER_GEN] + 1
            except ShmError:
                # A lock held too long must not stop close(): the entry is reclaimed as
                # dead once this process exits.
                _log.warning("could not unregister reader %d of %s", self.index, self._obj)
        self.sem.close()
        del self._hdr  # an export of the mapping: it could not be unmapped while held


class WriterNotifier:
    """The writer's side: posts each registered reader's semaphore, never blocking."""

    def __init__(self, hdr: memoryview, ring: str, max_readers: int) -> None:
        self._hdr = hdr
        self._ring = ring
        self._max_readers = max_readers
        self._seen_gen = -1
        self._sems: dict[int, posix_ipc.Semaphore] = {}
        self._active: list[posix_ipc.Semaphore] = []

    def _rescan(self, gen: int) -> None:
        self._seen_gen = gen
        live = {
            i
            for i, (pid, _, _) in enumerate(reader_entries(self._hdr, self._max_readers))
            if pid != 0
        }
        for i in list(self._sems):
            if i not in live:
                self._sems.pop(i).close()
        for i in live - self._sems.keys():
            try:
                self._sems[i] = posix_ipc.Semaphore(semaphore_name(self._ring, i))
            except posix_ipc.Error:
                # Cleaned away by the tool or not created yet: the next generation
                # change retries; the reader falls back on its periodic re-check.
                continue
        self._active = list(self._sems.values())

    def refresh(self) -> None:
        """Open the semaphores of readers registered since the last look (by name: call
        it before they are unlinked)."""
        gen = self._hdr[IDX_READER_GEN]
        if gen != self._seen_gen:
            self._rescan(gen)

    def notify(self) -> None:
        self.refresh()
        for sem in self._active:
            try:
                if sem.value == 0:
                    sem.release()
            except posix_ipc.Error:
                continue

    @property
    def reader_count(self) -> int:
        return len(self._active)

    def close(self) -> None:
        for sem in self._sems.values():
            sem.close()
        self._sems.clear()
        self._active = []
        del self._hdr  # an export of the mapping: it could not be unmapped while held
