"""The reader: newest-frame or every-frame reading, with overrun and drop accounting."""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import Any

from its_camera_ai.shm import _metrics
from its_camera_ai.shm._cuda import pin
from its_camera_ai.shm._errors import RingClosed, RingNotFound, ShmError, WriterDead
from its_camera_ai.shm._frame import Frame
from its_camera_ai.shm._mapping import Liveness, RingMapping, WriterStatus, open_ring
from its_camera_ai.shm._notify import ReaderWaiter
from its_camera_ai.shm._system import validate_name
from its_camera_ai.shm.layout import (
    IDX_LAST_SEQ,
    IDX_WRITER_EPOCH,
    SLOT_META,
    Geometry,
    array_view,
    checked_geometry,
)


class RingReader:
    """One consumer of a ring. Any number may attach (up to the ring's max_readers with
    notification). Not thread-safe: one thread per reader object.

    `read_latest()` returns the newest frame not seen yet (skipping older ones);
    `read_next()` returns every frame in order until the writer laps the reader, then
    skips to the newest. Both count what they skip in `stats.frames_dropped`; laps are
    `stats.overruns`. With no new frame they wait (sleeping on a semaphore) up to
    `timeout` seconds (None: forever, 0: don't wait) and return None on timeout. While
    waiting they check the writer every `check_interval` seconds and, instead of waiting
    for frames that will not come, raise WriterDead (a restarted writer may reclaim the
    ring: keep reading), RingClosed (closed on purpose; `.unlinked`: attach again) or
    RingNotFound (a dead writer's ring unlinked or replaced: attach again). Frames
    already committed are still returned after the writer died.
    """

    def __init__(
        self,
        name: str,
        mapping: RingMapping,
        *,
        notify: bool,
        stale_after: float,
        check_interval: float,
        skip_existing: bool,
        spin: float = 0.0,
    ) -> None:
        self.ring = name
        self._map = mapping
        self._n = mapping.slot_count
        self._buf = mapping.slots
        self._mem = mapping.mem
        self._hdr = mapping.hdr
        self._words = mapping.words
        self._ci = mapping.counter_idx
        self._meta_off = mapping.meta_offsets
        self._pay_off = mapping.payload_offsets
        self._cap = mapping.capacity
        self._stale_after = stale_after
        self._check_interval = check_interval
        self._next_check = 0.0
        # Predictive spin (opt-in): see _wait.
        self._spin_ns = max(int(spin * 1e9), 0)
        self._expect_ns = 0
        self._interval_ns = 0
        self._prev_commit = (0, 0)
        self._geoms: dict[tuple[Any, ...], Geometry] = {}
        self._views: list[dict[Geometry, list[Any]]] = [{} for _ in range(self._n)]
        self.stats = _metrics.ReaderStats()
        self._epoch = mapping.status(stale_after).epoch
        head = mapping.last_seq
        self._last_seen = head if skip_existing else max(head - 1, 0)
        self._waiter = (
            ReaderWaiter(mapping.obj, mapping.hdr, name, mapping.max_readers) if notify else None
        )
        self.closed = False
        _metrics.track(self)

    # --- state ------------------------------------------------------------------------

    @property
    def last_sequence(self) -> int:
        """Sequence of the last frame handed out (or skipped past)."""
        return self._last_seen

    @property
    def lag(self) -> int:
        """Frames published that this reader has not reached yet."""
        return max(self._hdr[IDX_LAST_SEQ] - self._last_seen, 0)

    @property
    def slot_count(self) -> int:
        return self._n

    @property
    def pinned(self) -> bool:
        return self._map.pinned is not None

    def writer_status(self) -> WriterStatus:
        self._check_open()
        return self._map.status(self._stale_after)

    # --- reading ----------------------------------------------------------------------

    def read_latest(self, timeout: float | None = None) -> Frame | None:
        """The newest frame this reader has not seen, waiting up to `timeout` for one."""
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            head = self._head()
            if head > self._last_seen:
                frame = self._take(head)
                if frame is not None:
                    self.stats.frames_dropped += head - self._last_seen - 1
                    self._last_seen = head
                    return frame
                # The writer went round the whole ring while we read the newest slot
                # (tiny frames, few slots): count it and look again.
                self.stats.overruns += 1
                continue
            if not self._wait(deadline):
                return None

    def read_next(self, timeout: float | None = None) -> Frame | None:
        """The frame after the last one handed out; when the writer has lapped this reader
        (the frame is gone or about to be) skip to the newest frame and count the loss."""
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            head = self._head()
            want = self._last_seen + 1
            if head >= want:
                # The slot after the newest is the one being rewritten next: frames older
                # than head - (n - 2) are gone or going.
                if head - want >= self._n - 1:
                    self.stats.overruns += 1
                    self.stats.frames_dropped += head - want
                    want = head
                frame = self._take(want)
                if frame is not None:
                    self._last_seen = want
                    return frame
                self.stats.overruns += 1
                self.stats.frames_dropped += 1
                self._last_seen = want
                continue
            if not self._wait(deadline):
                return None

    def read_sequence(self, sequence: int) -> Frame | None:
        """Frame `sequence` if its slot (``sequence % slot_count``) still holds it, committed;
        None once the writer overwrote it or before it was written. For frame references
        passed between processes (Triton's shared-memory style); does not move this
        reader's position."""
        self._check_open()
        if sequence <= 0:
            return None
        return self._take(sequence)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a frame newer than the last handed out is published."""
        self._check_open()
        return self._wait(None if timeout is None else time.monotonic() + timeout)

    def _head(self) -> int:
        head: int = self._hdr[IDX_LAST_SEQ]
        # Sequences only grow (a reclaiming writer continues them); a smaller one means the
        # header was rewritten: resynchronise rather than wait forever.
        self._last_seen = min(self._last_seen, head)
        return head

    def _take(self, seq: int) -> Frame | None:
        """Frame `seq` if its slot holds it, committed and unchanged while we looked;
        counted as read."""
        frame = self._frame_at(seq)
        if frame is None:
            return None
        st = self.stats
        st.frames_read += 1
        commit_ns = frame.commit_ns
        st.handoff.observe(max(frame.received_ns - commit_ns, 0))
        if self._hdr[IDX_WRITER_EPOCH] != self._epoch:
            self._note_epoch()
        if self._spin_ns:
            self._predict(seq, commit_ns)
        return frame

    def _frame_at(self, seq: int) -> Frame | None:
        """``_take`` without the accounting (the spin loop re-reads frames with it)."""
        i = seq % self._n
        words, ci = self._words, self._ci[i]
        c1: int = words[ci]
        if c1 & 1:
            return None
        t = SLOT_META.unpack_from(self._buf, self._meta_off[i])
        if t[0] != seq or words[ci] != c1:
            return None
        g = self._geoms.get(t[4:9])
        if g is None:
            g = self._new_geometry(t)
        # The view of a slot with a given geometry is always the same memory: make it (and
        # its tensor) once, not per frame.
        view = self._views[i].get(g)
        if view is None:
            view = self._new_view(i, g)
        return Frame(self, i, c1, t, view)

    def _new_geometry(self, t: tuple[Any, ...]) -> Geometry:
        plen, w, h, stride, fmt = t[4:9]
        g = checked_geometry(fmt, w, h, stride, payload_len=plen, max_frame_bytes=self._cap)
        if len(self._geoms) > 64:
            self._geoms.clear()
        self._geoms[t[4:9]] = g
        return g

    def _new_view(self, i: int, g: Geometry) -> list[Any]:
        views = self._views[i]
        if len(views) > 8:
            views.clear()
        view = views[g] = [g, array_view(self._mem, self._pay_off[i], g), None]
        return view

    def _predict(self, seq: int, commit_ns: int) -> None:
        prev_seq, prev_commit = self._prev_commit
        if prev_seq and seq > prev_seq and commit_ns > prev_commit:
            step = (commit_ns - prev_commit) // (seq - prev_seq)
            self._interval_ns = (
                step if not self._interval_ns else (7 * self._interval_ns + step) // 8
            )
        self._prev_commit = (seq, commit_ns)
        self._expect_ns = commit_ns + self._interval_ns if self._interval_ns else 0

    def _wait(self, deadline: float | None) -> bool:
        """Sleep until a frame newer than the last seen exists; False at the deadline.
        The head is re-read after every wake, which is what makes skipped posts safe.

        With `spin`, the reader still sleeps on its semaphore between frames, but wakes
        `spin` seconds before the next frame is due (predicted from the writer's commit
        times) and polls the header until `spin` after it: a woken sleeper pays the
        scheduler's and the hypervisor's wake-up latency (tens of microseconds, more at
        p99), a poller does not. Cost: at most 2 * spin of CPU per frame; none while no
        frames flow (a late frame ends the window and the reader sleeps again)."""
        while True:
            if self._head() > self._last_seen:
                return True
            now = time.monotonic()
            if now >= self._next_check:
                self._check_writer(now)
            if deadline is not None and now >= deadline:
                return False
            chunk = self._check_interval
            if deadline is not None:
                chunk = min(chunk, deadline - now)
            if self._expect_ns:
                lead = self._expect_ns - self._spin_ns - time.monotonic_ns()
                if lead > 0:
                    chunk = min(chunk, lead / 1e9)
                elif lead > -2 * self._spin_ns:
                    # Poll. Each round reads the last frame again and drops it: after the
                    # sleep the read path's code and data are cold (on a VM another guest
                    # may have had the core) and a first pass costs ~30 us instead of ~3.
                    # And it yields: the writer about to commit may share this core, and a
                    # spinner holding it would delay the very frame it waits for.
                    self._frame_at(self._last_seen)
                    os.sched_yield()
                    continue
                else:
                    self._expect_ns = 0  # the frame is late: sleep until it comes
            if self._waiter is None:
                if deadline is None:
                    raise ShmError("a reader attached with notify=False cannot wait: timeout=0")
                time.sleep(min(chunk, 0.001))  # explicit polling mode, for tools only
            elif self._waiter.wait(chunk):
                if self._hdr[IDX_LAST_SEQ] > self._last_seen:
                    return True
                # Woken with nothing new: the writer's close() posts to say so.
                self._next_check = 0.0

    def _check_writer(self, now: float) -> None:
        self._next_check = now + self._check_interval
        st = self._map.status(self._stale_after)
        if st.epoch != self._epoch:
            self._note_epoch()
        if st.liveness not in (Liveness.DEAD, Liveness.CLOSED):
            return
        if self._head() > self._last_seen:
            return  # frames are still there to read
        named = self._map.obj.still_named()
        if st.liveness is Liveness.CLOSED:
            if named:
                raise RingClosed(f"the writer closed ring {self.ring!r}")
            raise RingClosed(
                f"the writer closed and unlinked ring {self.ring!r}: attach again", unlinked=True
            )
        if not named:
            raise RingNotFound(f"ring {self.ring!r} was unlinked or replaced: attach again")
        self.stats.writer_dead += 1
        raise WriterDead(
            f"writer pid {st.pid} of ring {self.ring!r} died (last frame {st.last_seq})"
        )

    def _note_epoch(self) -> None:
        # Each reclaim increments the epoch: restarts between two looks all count.
        epoch: int = self._hdr[IDX_WRITER_EPOCH]
        self.stats.writer_restarts += max(epoch - self._epoch, 1)
        self._epoch = epoch

    def _torn(self) -> None:
        self.stats.torn_reads += 1

    # --- life cycle -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ShmError(f"reader of ring {self.ring!r} is closed")

    def close(self) -> None:
        """Unregister and unmap. Frames still referenced keep their memory mapped until
        they are collected (mmap cannot be closed under live views)."""
        if self.closed:
            return
        self.closed = True
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None
        del self._words, self._mem, self._hdr, self._views
        self._map.close()
        _metrics.retire(self)

    def __enter__(self) -> RingReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RingReader({self.ring!r}, last_seq={self._last_seen}, closed={self.closed})"


def attach(
    name: str,
    *,
    timeout: float = 0.0,
    notify: bool = True,
    pin_memory: bool = False,
    skip_existing: bool = False,
    stale_after: float = 5.0,
    check_interval: float = 0.25,
    spin: float = 0.0,
) -> RingReader:
    """Attach a reader to ring `name`, waiting up to `timeout` seconds for it to appear.

    The first read returns the newest frame already in the ring unless `skip_existing`.
    `notify=False` attaches without a registration slot (non-blocking reads only).
    `pin_memory` registers the mapping with CUDA when a device is available.
    `spin` (seconds, default 0: never) makes a latency-critical reader poll for that long
    either side of each frame's predicted arrival instead of relying on a wake-up alone
    (see RingReader._wait).
    """
    validate_name(name)
    deadline = time.monotonic() + timeout
    while True:
        try:
            reader, mapping = _attach_once(
                name,
                notify=notify,
                stale_after=stale_after,
                check_interval=check_interval,
                skip_existing=skip_existing,
                spin=spin,
            )
            break
        except RingNotFound:
            # Not there yet, or unlinked or replaced between opening and registering.
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
    if pin_memory:
        mapping.pinned = pin(mapping.slots, read_only=True)
    return reader


def _attach_once(name: str, **options: Any) -> tuple[RingReader, RingMapping]:
    obj, header = open_ring(name)
    mapping = RingMapping(obj, header, writable=False)
    try:
        return RingReader(name, mapping, **options), mapping
    except BaseException:
        mapping.close()
        raise
