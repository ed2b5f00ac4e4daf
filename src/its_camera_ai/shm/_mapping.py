"""Opening and mapping a ring, and judging whether its writer lives.

Memory-ordering assumption (x86-64, the only platform this is built for): aligned 8-byte
loads and stores through numpy are single instructions, hence atomic; stores become
visible to other cores in program order and loads are not reordered with other loads
(TSO). The seqlock needs nothing more: the writer's odd-counter store precedes its
payload stores and the even-counter store follows them; a reader's payload loads sit
between its two counter loads. glibc's memcpy ends its non-temporal-store path with an
sfence, so bulk copies keep that order too. Python cannot emit fences, so on weakly
ordered CPUs (aarch64) this ring would need a native helper before it could be trusted.
"""

from __future__ import annotations

import contextlib
import enum
import mmap
import os
import time
from dataclasses import dataclass

import numpy as np

from its_camera_ai.shm._cuda import unpin
from its_camera_ai.shm._errors import RingCorrupt
from its_camera_ai.shm._system import ShmObject, object_name, process_alive, same_pid_namespace
from its_camera_ai.shm.layout import (
    HEADER_SIZE,
    IDX_HEARTBEAT,
    IDX_LAST_SEQ,
    IDX_WRITER_EPOCH,
    IDX_WRITER_PID,
    IDX_WRITER_PIDNS,
    IDX_WRITER_START,
    IDX_WRITER_STATE,
    OFF_SLOT_META,
    SLOT_META_SIZE,
    Header,
    WriterState,
    decode_header,
)

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


class Liveness(enum.Enum):
    """The writer as judged from outside: header state plus process identity."""

    ALIVE = "alive"
    STALLED = "stalled"  # process lives, but no frame or heartbeat for stale_after
    DEAD = "dead"  # process gone, pid reused, or zombie
    CLOSED = "closed"  # writer closed the ring
    NONE = "none"  # no writer ever claimed it


@dataclass(frozen=True, slots=True)
class WriterStatus:
    liveness: Liveness
    pid: int
    epoch: int
    heartbeat_age_s: float | None
    last_seq: int


def judge_writer(h: Header, stale_after: float, now_ns: int | None = None) -> WriterStatus:
    now_ns = time.monotonic_ns() if now_ns is None else now_ns
    age = (now_ns - h.heartbeat_ns) / 1e9 if h.heartbeat_ns else None
    if h.writer_state == WriterState.CLOSED:
        live = Liveness.CLOSED
    elif h.writer_state != WriterState.RUNNING:
        live = Liveness.NONE
    elif same_pid_namespace(h.writer_pidns):
        if not process_alive(h.writer_pid, h.writer_start):
            live = Liveness.DEAD
        elif age is not None and age > stale_after:
            live = Liveness.STALLED
        else:
            live = Liveness.ALIVE
    elif age is None or age > stale_after:
        # A pid of another namespace cannot be checked from here: the heartbeat decides.
        live = Liveness.DEAD
    else:
        live = Liveness.ALIVE
    return WriterStatus(live, h.writer_pid, h.writer_epoch, age, h.last_seq)


def read_header(obj: ShmObject) -> Header:
    """pread and validate the header of an open object (RingCorrupt if it is not a ring)."""
    size = os.fstat(obj.fd).st_size
    if size < HEADER_SIZE:
        raise RingCorrupt(f"{obj.shm_name}: truncated: {size} bytes, header needs {HEADER_SIZE}")
    try:
        return decode_header(os.pread(obj.fd, HEADER_SIZE, 0), object_size=size)
    except RingCorrupt as exc:
        raise type(exc)(f"{obj.shm_name}: {exc}") from None


def open_ring(name: str, *, read_only: bool = False) -> tuple[ShmObject, Header]:
    obj = ShmObject.open(object_name(name), read_only=read_only)
    try:
        return obj, read_header(obj)
    except BaseException:
        obj.close()
        raise


class RingMapping:
    """The mapped ring: a uint64 view of the header, the slot counters, slot offsets.

    Writers map everything read-write. Readers map the header page read-write (they
    register in it) and the slots read-only, so a reader bug cannot corrupt frames other
    readers see.
    """

    def __init__(self, obj: ShmObject, header: Header, *, writable: bool) -> None:
        self.obj = obj
        self.slot_count = header.slot_count
        self.slot_size = header.slot_size
        self.capacity = header.max_frame_bytes
        self.max_readers = header.max_readers
        self.writable = writable
        total = header.total_size
        # MAP_POPULATE: fault every page in now, not on the first lap of the ring, where
        # a 4K slot's 6,000 faults would cost the writer (and each reader) milliseconds.
        flags = mmap.MAP_SHARED | _POPULATE
        if writable:
            self._hmap = mmap.mmap(obj.fd, total, flags=flags)
            self.slots = self._hmap
            base = HEADER_SIZE
        else:
            self._hmap = mmap.mmap(obj.fd, HEADER_SIZE)
            self.slots = mmap.mmap(
                obj.fd,
                total - HEADER_SIZE,
                flags=flags,
                prot=mmap.PROT_READ,
                offset=HEADER_SIZE,
            )
            base = 0
        # Every view is cut from np.frombuffer arrays: those hold a buffer export on the
        # mmap, so mmap.close() refuses (BufferError) while any view lives. Views made
        # with np.ndarray(buffer=<mmap>) hold none, and closing under them would leave
        # dangling pointers (a segfault on the next access).
        self.mem: np.ndarray = np.frombuffer(self.slots, np.uint8)
        # The 8-byte fields are read and written through memoryviews cast to uint64:
        # indexing one is a single aligned load or store and yields a plain int, several
        # times cheaper than a numpy scalar on the hot path.
        self.hdr: memoryview = memoryview(self._hmap).cast("Q")
        self.words: memoryview = self.hdr if writable else memoryview(self.slots).cast("Q")
        starts = [base + i * self.slot_size for i in range(self.slot_count)]
        self.counter_idx = [s // 8 for s in starts]
        self.commit_idx = [(s + OFF_SLOT_META) // 8 + 1 for s in starts]
        self.meta_offsets = [s + OFF_SLOT_META for s in starts]
        self.payload_offsets = [s + SLOT_META_SIZE for s in starts]
        self.pinned: object | None = None

    def snapshot(self) -> Header:
        """Current header, re-validated (the static part is checked against its CRC)."""
        return decode_header(bytes(self._hmap[:HEADER_SIZE]))

    @property
    def last_seq(self) -> int:
        return self.hdr[IDX_LAST_SEQ]

    def writer_fields(self) -> tuple[int, int, int, int, int, int]:
        h = self.hdr
        return (
            h[IDX_WRITER_PID],
            h[IDX_WRITER_START],
            h[IDX_WRITER_PIDNS],
            h[IDX_WRITER_EPOCH],
            h[IDX_WRITER_STATE],
            h[IDX_HEARTBEAT],
        )

    def status(self, stale_after: float) -> WriterStatus:
        pid, start, pidns, epoch, state, beat = self.writer_fields()
        h = Header(
            slot_count=self.slot_count,
            max_frame_bytes=self.capacity,
            max_readers=self.max_readers,
            writer_pid=pid,
            writer_start=start,
            writer_pidns=pidns,
            writer_epoch=epoch,
            writer_state=state,
            heartbeat_ns=beat,
            last_seq=self.last_seq,
        )
        return judge_writer(h, stale_after)

    def close(self) -> None:
        """Unmap, unless frames handed out still hold views: mmap.close() then raises
        BufferError, and the mapping is released when the last view is collected."""
        if self.pinned is not None:
            unpin(self.pinned)
            self.pinned = None
        # Drop our views first: mmap.close() refuses while any export lives.
        del self.hdr, self.words, self.mem
        for m in {id(self._hmap): self._hmap, id(self.slots): self.slots}.values():
            with contextlib.suppress(BufferError):
                m.close()
        self.obj.close()
