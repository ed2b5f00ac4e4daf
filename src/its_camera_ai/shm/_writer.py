"""The writer: creates or reclaims a ring and commits frames into it without blocking."""

from __future__ import annotations

import logging
import os
import time
from types import TracebackType
from typing import Any

import numpy as np

from its_camera_ai.shm import _metrics
from its_camera_ai.shm._cuda import load_torch, pin
from its_camera_ai.shm._errors import (
    FrameTooLarge,
    InvalidFrame,
    RingClosed,
    RingExists,
    RingNotFound,
    ShmError,
)
from its_camera_ai.shm._mapping import Liveness, RingMapping, judge_writer, read_header
from its_camera_ai.shm._notify import WriterNotifier
from its_camera_ai.shm._slot import WriteSlot
from its_camera_ai.shm._system import (
    ShmObject,
    object_name,
    pid_namespace,
    process_start_ticks,
    publish,
    semaphore_name,
    temp_object_name,
    unlink_object,
    unlink_ring,
    unlink_semaphore,
    validate_name,
)
from its_camera_ai.shm.layout import (
    IDX_HEARTBEAT,
    IDX_LAST_SEQ,
    IDX_WRITER_EPOCH,
    IDX_WRITER_PID,
    IDX_WRITER_PIDNS,
    IDX_WRITER_START,
    IDX_WRITER_STATE,
    SLOT_META,
    Geometry,
    Header,
    PixelFormat,
    TraceContext,
    WriterState,
    array_view,
    check_ring_geometry,
    encode_header,
)

_log = logging.getLogger(__name__)
_U8 = np.dtype(np.uint8)


class RingWriter:
    """The single producer of a ring. Not thread-safe; use it from one thread.

    `write()` copies one frame into the oldest slot and publishes it; `reserve()` hands
    out the slot itself so a decoder can write into it directly (no copy at all).
    """

    def __init__(self, name: str, mapping: RingMapping, *, reclaimed: bool) -> None:
        self.ring = name
        self.reclaimed = reclaimed
        self._map = mapping
        self._n = mapping.slot_count
        self._seq = mapping.last_seq
        self._hdr = mapping.hdr
        self._words = mapping.words
        self._ci = mapping.counter_idx
        self._cmi = mapping.commit_idx
        self._buf = mapping.slots
        self._flat = [
            np.ndarray((mapping.capacity,), np.uint8, mapping.mem, off)
            for off in mapping.payload_offsets
        ]
        self._notifier = WriterNotifier(mapping.hdr, name, mapping.max_readers)
        self._geoms: dict[tuple[int, int, int, int | None], Geometry] = {}
        self._reserved: WriteSlot | None = None
        self.closed = False
        self.stats = _metrics.WriterStats()
        _metrics.track(self)

    # --- properties -------------------------------------------------------------------

    @property
    def slot_count(self) -> int:
        return self._n

    @property
    def max_frame_bytes(self) -> int:
        return self._map.capacity

    @property
    def last_sequence(self) -> int:
        return self._seq

    @property
    def reader_count(self) -> int:
        """Readers registered for notification, as of the last commit."""
        return 0 if self.closed else self._notifier.reader_count

    @property
    def pinned(self) -> bool:
        return self._map.pinned is not None

    # --- writing ----------------------------------------------------------------------

    def geometry(
        self,
        width: int,
        height: int,
        format: PixelFormat | int = PixelFormat.RGB24,
        stride: int | None = None,
    ) -> Geometry:
        key = (int(format), width, height, stride)
        g = self._geoms.get(key)
        if g is None:
            g = Geometry.of(format, width, height, stride)
            if g.nbytes > self._map.capacity:
                raise FrameTooLarge(
                    f"{g.format.name} {width}x{height} stride {g.stride} needs {g.nbytes} "
                    f"bytes; slots of ring {self.ring!r} hold {self._map.capacity}"
                )
            if len(self._geoms) > 64:
                self._geoms.clear()
            self._geoms[key] = g
        return g

    def reserve(
        self,
        width: int,
        height: int,
        format: PixelFormat | int = PixelFormat.RGB24,
        *,
        stride: int | None = None,
        pts: int = 0,
        capture_ns: int | None = None,
        trace: TraceContext | None = None,
    ) -> WriteSlot:
        """Claim the oldest slot for a frame of this geometry and return it for filling.
        Readers see the slot as being written (odd counter) until commit() or abort()."""
        self._check_open()
        if self._reserved is not None:
            raise ShmError("a reserved slot is still open: commit() or abort() it first")
        g = self.geometry(width, height, format, stride)
        seq = self._seq + 1
        i = seq % self._n
        ci = self._ci[i]
        self._words[ci] += 1  # odd: being written
        view = array_view(self._map.mem, self._map.payload_offsets[i], g)
        slot = WriteSlot(
            self,
            index=i,
            sequence=seq,
            geometry=g,
            array=view,
            pts=pts,
            capture_ns=capture_ns,
            trace=trace,
        )
        self._reserved = slot
        return slot

    def write(
        self,
        data: Any,
        width: int,
        height: int,
        format: PixelFormat | int = PixelFormat.RGB24,
        *,
        stride: int | None = None,
        pts: int = 0,
        capture_ns: int | None = None,
        trace: TraceContext | None = None,
    ) -> int:
        """Copy one frame in and publish it; returns its sequence number. Never blocks.

        `data` is a uint8 numpy array shaped like the slot view (see Frame.array), a CPU
        or CUDA torch tensor of that shape, or any buffer of exactly the payload size.
        """
        slot = self.reserve(
            width, height, format, stride=stride, pts=pts, capture_ns=capture_ns, trace=trace
        )
        try:
            self._fill(slot, data)
        except BaseException:
            slot.abort()
            raise
        return slot.commit()

    def _fill(self, slot: WriteSlot, data: Any) -> None:
        dest = slot.array
        if isinstance(data, np.ndarray):
            src = data
        elif type(data).__module__.startswith("torch"):
            if data.device.type != "cpu":
                load_torch().from_numpy(dest).copy_(data.reshape(dest.shape))
                return
            src = data.numpy()
        else:
            src = np.frombuffer(data, dtype=np.uint8)
        if src.dtype != _U8:
            raise InvalidFrame(f"frames are uint8, got {src.dtype}")
        if src.shape == dest.shape:
            np.copyto(dest, src)
        elif src.size == slot.geometry.nbytes and src.flags.c_contiguous:
            self._flat[slot.index][: src.size] = src.reshape(-1)
        else:
            raise InvalidFrame(
                f"data of shape {src.shape} fits neither the slot view {dest.shape} nor "
                f"the payload size {slot.geometry.nbytes}"
            )

    def _commit(self, slot: WriteSlot) -> int:
        i, seq, g = slot.index, slot.sequence, slot.geometry
        trace = slot.trace
        tid, sid, flags = (
            (trace.trace_id, trace.span_id, trace.flags) if trace else (bytes(16), bytes(8), 0)
        )
        capture = time.time_ns() if slot.capture_ns is None else slot.capture_ns
        nbytes = g.nbytes
        SLOT_META.pack_into(
            self._buf,
            self._map.meta_offsets[i],
            seq,
            0,  # commit time: stored last, below
            capture,
            slot.pts,
            nbytes,
            g.width,
            g.height,
            g.stride,
            g.format,
            tid,
            sid,
            flags,
        )
        # The commit: timestamp, counter even again (the frame is complete), publish the
        # sequence, wake readers. Handoff latency is measured from this timestamp, so
        # nothing else happens in between.
        words = self._words
        now = time.monotonic_ns()
        words[self._cmi[i]] = now
        words[self._ci[i]] += 1
        self._hdr[IDX_LAST_SEQ] = seq
        self._notifier.notify()
        self._hdr[IDX_HEARTBEAT] = now
        self._seq = seq
        self._reserved = None
        self.stats.frames_written += 1
        self.stats.bytes_written += nbytes
        return seq

    def _abort(self, slot: WriteSlot) -> None:
        # The slot's previous frame is partly overwritten: mark it empty (sequence 0, which
        # no reader asks for) before making the counter even again.
        SLOT_META.pack_into(self._buf, self._map.meta_offsets[slot.index], *_EMPTY_META)
        self._words[self._ci[slot.index]] += 1
        self._reserved = None
        self.stats.frames_aborted += 1

    def heartbeat(self) -> None:
        """Tell readers and the cleanup tool this writer lives while no frames flow."""
        self._check_open()
        self._hdr[IDX_HEARTBEAT] = time.monotonic_ns()

    # --- life cycle -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise RingClosed(f"writer of ring {self.ring!r} is closed")

    def close(self, *, unlink: bool = True) -> None:
        """Mark the ring closed (readers get RingClosed) and, by default, unlink it and
        its reader semaphores. With unlink=False a restarted writer can reclaim it."""
        if self.closed:
            return
        if self._reserved is not None:
            self._reserved.abort()
        self.closed = True
        try:
            with self._map.obj.locked(timeout=1.0):
                self._mark_closed(unlink=unlink)
        except ShmError:
            # Held this long, the lock belongs to a stuck process: closing must not wait
            # for it (a semaphore it still creates is an orphan for the tool to remove).
            _log.warning("closing ring %s without its lock", self.ring)
            self._mark_closed(unlink=unlink)
        self._notifier.notify()  # wake waiting readers so they see CLOSED at once
        self._notifier.close()
        del self._hdr, self._words, self._flat
        self._map.close()
        _metrics.retire(self)

    def _mark_closed(self, *, unlink: bool) -> None:
        """Under the ring's lock: CLOSED, and unlinked with its reader semaphores."""
        self._hdr[IDX_WRITER_STATE] = WriterState.CLOSED
        # The wake-up after the unlink goes through handles opened now, while the
        # semaphores still have names (no reader registers while the lock is held).
        self._notifier.refresh()
        # A name that no longer refers to this ring is not ours to unlink: it was removed
        # by hand, or a new ring took it (the semaphores may be that ring's by now).
        if unlink and self._map.obj.still_named():
            unlink_ring(self.ring, self._map.max_readers)

    def __enter__(self) -> RingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"seq={self._seq}"
        return f"RingWriter({self.ring!r}, slots={self._n}, {state})"


# Sequence 0 and a zero geometry: what an aborted or repaired slot holds.
_EMPTY_META = (0, 0, 0, 0, 0, 0, 0, 0, 0, bytes(16), bytes(8), 0)


# --- creation and reclaim -------------------------------------------------------------


def create(
    name: str,
    *,
    slots: int = 8,
    max_frame_bytes: int,
    max_readers: int = 16,
    reclaim: bool = True,
    stale_after: float = 5.0,
    pin_memory: bool = False,
) -> RingWriter:
    """Create the ring `name`, or reclaim it from a writer that died or closed.

    Raises RingExists if a live writer owns it (or if it is stale and reclaim=False) and
    RingCorrupt if the name holds something that is not a ring (clean it with the tool).
    A stale ring of another geometry is replaced by a new object.
    """
    validate_name(name)
    check_ring_geometry(slots, max_frame_bytes, max_readers)
    want = Header(slot_count=slots, max_frame_bytes=max_frame_bytes, max_readers=max_readers)
    for _ in range(8):
        try:
            obj = ShmObject.open(object_name(name))
        except RingNotFound:
            writer = _create_fresh(name, want)
        else:
            writer = _reclaim(name, obj, want, reclaim=reclaim, stale_after=stale_after)
        if writer is not None:
            if pin_memory:
                writer._map.pinned = pin(writer._map.slots, read_only=False)
            return writer
    raise ShmError(f"could not create ring {name!r}: it keeps changing under us")


def _claim(hdr: memoryview, epoch: int) -> None:
    hdr[IDX_WRITER_STATE] = WriterState.NONE
    hdr[IDX_WRITER_PID] = os.getpid()
    hdr[IDX_WRITER_START] = process_start_ticks(os.getpid())
    hdr[IDX_WRITER_PIDNS] = pid_namespace()
    hdr[IDX_WRITER_EPOCH] = epoch
    hdr[IDX_HEARTBEAT] = time.monotonic_ns()
    hdr[IDX_WRITER_STATE] = WriterState.RUNNING


def _create_fresh(name: str, want: Header) -> RingWriter | None:
    tmp = ShmObject.create_exclusive(temp_object_name(name), want.total_size)
    mapping = None
    try:
        header = Header(
            slot_count=want.slot_count,
            max_frame_bytes=want.max_frame_bytes,
            max_readers=want.max_readers,
            created_ns=time.time_ns(),
        )
        os.pwrite(tmp.fd, encode_header(header), 0)
        mapping = RingMapping(tmp, header, writable=True)
        _claim(mapping.hdr, epoch=1)
        # Semaphores left by readers of an earlier ring of this name would be shared
        # with readers of the new one: start from fresh ones.
        for i in range(want.max_readers):
            unlink_semaphore(semaphore_name(name, i))
        published = publish(tmp, object_name(name))
    except BaseException:
        if mapping is not None:
            mapping.close()
        else:
            tmp.close()
        raise
    finally:
        unlink_object(tmp.shm_name)
    if not published:
        mapping.close()
        return None
    tmp.shm_name = object_name(name)
    return RingWriter(name, mapping, reclaimed=False)


def _reclaim(
    name: str, obj: ShmObject, want: Header, *, reclaim: bool, stale_after: float
) -> RingWriter | None:
    """Take over an existing ring under its lock; None when the caller should retry."""
    mapping = None
    try:
        with obj.locked():
            if not obj.still_named():
                # Closing the fd drops the flock too; the lock's exit then finds fd -1.
                obj.close()
                return None
            header = read_header(obj)
            status = judge_writer(header, stale_after)
            if status.liveness in (Liveness.ALIVE, Liveness.STALLED):
                raise RingExists(f"ring {name!r} is owned by live writer pid {status.pid}")
            if not reclaim:
                raise RingExists(f"ring {name!r} exists ({status.liveness.value} writer)")
            mapping = RingMapping(obj, header, writable=True)
            geometry = (header.slot_count, header.max_frame_bytes, header.max_readers)
            if geometry != (want.slot_count, want.max_frame_bytes, want.max_readers):
                # Readers of the old geometry cannot follow: tell them, then replace it
                # (its semaphores go too: the new ring may have fewer reader slots).
                mapping.hdr[IDX_WRITER_STATE] = WriterState.CLOSED
                unlink_ring(name, header.max_readers)
            else:
                _repair_slots(mapping)
                _claim(mapping.hdr, epoch=header.writer_epoch + 1)
                _log.info(
                    "reclaimed ring %s from %s writer pid %d",
                    name,
                    status.liveness.value,
                    status.pid,
                )
                return RingWriter(name, mapping, reclaimed=True)
    except BaseException:
        if mapping is not None:
            mapping.close()
        else:
            obj.close()
        raise
    mapping.close()
    return None


def _repair_slots(mapping: RingMapping) -> None:
    """A writer killed mid-write leaves its slot odd: empty it and make it even, so the
    half-written frame can never validate."""
    for i, ci in enumerate(mapping.counter_idx):
        c = mapping.words[ci]
        if c & 1:
            SLOT_META.pack_into(mapping.slots, mapping.meta_offsets[i], *_EMPTY_META)
            mapping.words[ci] = c + 1
