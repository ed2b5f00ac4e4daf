"""Operating-system plumbing: names, shared-memory objects, locks, process identity.

Linux only. POSIX shared-memory objects live in /dev/shm (glibc's shm_open is an open()
there), which lets us publish a fully initialised ring atomically with link(2), compare
inodes to notice a ring replaced under a reader, and list rings for the cleanup tool.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import posix_ipc

from its_camera_ai.shm._errors import InvalidRingName, RingNotFound, ShmError

SHM_DIR = "/dev/shm"  # noqa: S108 - where Linux keeps POSIX shm objects, not a temp dir
PREFIX = "its-ring-"
MODE = 0o600
NAME_MAX_LEN = 64
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")


def validate_name(name: str) -> str:
    """Return `name` if it is a valid ring name, else raise InvalidRingName.

    Names are stream ids: lower-case letters, digits, '-' and '_', at most 64 characters.
    '.' and '/' are excluded so that derived names (semaphores, temporaries) can never
    collide with another ring's and no path tricks reach the filesystem.
    """
    if not isinstance(name, str) or not 0 < len(name) <= NAME_MAX_LEN:
        raise InvalidRingName(f"ring name must be 1..{NAME_MAX_LEN} characters: {name!r}")
    if _NAME_RE.fullmatch(name) is None:
        raise InvalidRingName(f"ring name must match [a-z0-9][a-z0-9_-]*: {name!r}")
    return name


def object_name(name: str) -> str:
    """The POSIX shm name of a ring ('/its-ring-<name>')."""
    return "/" + PREFIX + validate_name(name)


def object_path(name: str) -> str:
    return os.path.join(SHM_DIR, PREFIX + validate_name(name))


def semaphore_name(name: str, index: int) -> str:
    """The POSIX semaphore of reader registration `index` ('/its-ring-<name>.r<index>')."""
    return f"/{PREFIX}{validate_name(name)}.r{index}"


def temp_object_name(name: str) -> str:
    return f"/{PREFIX}{validate_name(name)}.new-{os.getpid()}-{secrets.token_hex(4)}"


class ShmObject:
    """An open POSIX shared-memory object: its fd, size and identity (device, inode)."""

    def __init__(self, shm_name: str, fd: int) -> None:
        self.shm_name = shm_name
        self.fd = fd
        st = os.fstat(fd)
        self.size = st.st_size
        self.ident = (st.st_dev, st.st_ino)

    @classmethod
    def open(cls, shm_name: str, *, read_only: bool = False) -> ShmObject:
        try:
            mem = posix_ipc.SharedMemory(shm_name, 0, read_only=read_only)
        except posix_ipc.ExistentialError:
            raise RingNotFound(f"no ring {shm_name!r}") from None
        except posix_ipc.PermissionsError as exc:
            raise ShmError(f"no permission to open {shm_name!r}: {exc}") from None
        return cls(shm_name, mem.fd)

    @classmethod
    def create_exclusive(cls, shm_name: str, size: int) -> ShmObject:
        mem = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=MODE, size=size)
        # umask can only narrow the mode; set it exactly in case the caller's is odd.
        os.fchmod(mem.fd, MODE)
        return cls(shm_name, mem.fd)

    def path(self) -> str:
        return os.path.join(SHM_DIR, self.shm_name.lstrip("/"))

    def still_named(self) -> bool:
        """Whether the name still refers to this very object (not unlinked or replaced)."""
        try:
            st = os.stat(self.path())
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self.ident

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @contextlib.contextmanager
    def locked(self, timeout: float = 5.0) -> Iterator[None]:
        """Exclusive flock on the object. The kernel drops it if the holder dies, so a
        process killed inside a critical section cannot wedge everyone else."""
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ShmError(f"timed out after {timeout}s locking {self.shm_name}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        try:
            yield
        finally:
            if self.fd >= 0:  # closing the fd inside the block already dropped the lock
                fcntl.flock(self.fd, fcntl.LOCK_UN)


def publish(tmp: ShmObject, final_name: str) -> bool:
    """Give the initialised temporary object its final name, atomically and only if the
    name is free: readers can then never observe a half-initialised ring."""
    try:
        os.link(tmp.path(), os.path.join(SHM_DIR, final_name.lstrip("/")))
    except FileExistsError:
        return False
    return True


def unlink_object(shm_name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(shm_name)
    except posix_ipc.ExistentialError:
        return False
    return True


def unlink_semaphore(sem_name: str) -> bool:
    try:
        posix_ipc.unlink_semaphore(sem_name)
    except posix_ipc.ExistentialError:
        return False
    return True


def unlink_ring(name: str, max_readers: int) -> list[str]:
    """Unlink ring ``name`` and its reader semaphores; returns the /dev/shm entries that
    went. Call it holding the ring's lock: readers register (and create their semaphore)
    only under that lock and only while the ring is named, so none can appear after."""
    removed = []
    if unlink_object(object_name(name)):
        removed.append(PREFIX + name)
    for index in range(max_readers):
        sem_name = semaphore_name(name, index)
        if unlink_semaphore(sem_name):
            removed.append("sem." + sem_name.lstrip("/"))
    return removed


# --- process identity -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    start_ticks: int
    zombie: bool


def process_info(pid: int) -> ProcessInfo | None:
    """Start time (clock ticks since boot, /proc/<pid>/stat field 22) and zombie state of
    `pid`, or None if there is no such process here."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return ProcessInfo(int(rest[19]), rest[0] in (b"Z", b"X"))
    except (IndexError, ValueError):
        return None


def process_start_ticks(pid: int) -> int:
    info = process_info(pid)
    return 0 if info is None else info.start_ticks


def pid_namespace() -> int:
    """Inode of this process's pid namespace (0 if unknown): a pid is only meaningful
    inside the namespace that issued it."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def same_pid_namespace(other: int) -> bool:
    mine = pid_namespace()
    return other == 0 or mine in (0, other)


def process_alive(pid: int, start_ticks: int) -> bool:
    """True when `pid` runs and is the same process that recorded `start_ticks`: a pid
    reused by an unrelated process, or a killed one not yet reaped (zombie), is dead."""
    info = process_info(pid)
    if info is None or info.zombie:
        return False
    return start_ticks in (0, info.start_ticks)


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True
