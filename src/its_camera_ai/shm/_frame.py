"""A frame handed to a reader: zero-copy views of its slot plus the frame's metadata.

The views alias the ring. The writer does not wait for readers, so once it has gone round
the ring the slot holds another frame: `is_valid()` says whether that has happened yet,
`copy()` takes a private copy and proves it untorn, and used as a context manager the
frame re-validates on exit and raises FrameOverwritten if the data under the block may
have changed. Views are read-only: writing into a reader's tensor in place is an access
to a read-only mapping (numpy refuses; torch does not check), so clone before mutating.
"""

from __future__ import annotations

import time
import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from its_camera_ai.shm._cuda import load_torch
from its_camera_ai.shm._errors import FrameOverwritten
from its_camera_ai.shm.layout import (
    Geometry,
    PixelFormat,
    TraceContext,
    array_view,
    checked_geometry,
    plane_views,
    trace_from,
)

if TYPE_CHECKING:
    from its_camera_ai.shm._reader import RingReader

_torch: Any = None


def as_tensor(array: np.ndarray) -> Any:
    """torch.from_numpy without the one-time 'array is not writable' warning: read-only is
    intended here and documented above."""
    global _torch  # noqa: PLW0603 - torch is imported on the first tensor only
    if _torch is None:
        torch = load_torch()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(array)
        _torch = torch
        return t
    return _torch.from_numpy(array)


class Frame:
    """One frame of a ring as a reader sees it.

    Creating one is the reader's hot path (it runs right after a wake-up, with cold
    caches), so it only keeps references: metadata stays in the unpacked slot tuple and is
    decoded on access.
    """

    __slots__ = (
        "_ci",
        "_counter",
        "_mem",
        "_meta",
        "_reader",
        "_view",
        "_words",
        "received_ns",
        "slot",
    )

    def __init__(
        self, reader: RingReader, slot: int, counter: int, meta: tuple[Any, ...], view: list[Any]
    ) -> None:
        self._reader = reader
        self._words: memoryview = reader._words
        self._ci: int = reader._ci[slot]
        self._mem: np.ndarray = reader._mem
        self.slot = slot
        self._counter = counter
        self._meta = meta
        # [geometry, numpy view, torch tensor or None], shared by frames of this slot.
        self._view: list[Any] | None = view
        self.received_ns = time.monotonic_ns()

    # --- metadata ---------------------------------------------------------------------

    @property
    def sequence(self) -> int:
        seq: int = self._meta[0]
        return seq

    @property
    def commit_ns(self) -> int:
        """When the writer committed the frame (CLOCK_MONOTONIC ns)."""
        ns: int = self._meta[1]
        return ns

    @property
    def capture_ns(self) -> int:
        """Capture time as the writer gave it (wall clock ns)."""
        ns: int = self._meta[2]
        return ns

    @property
    def pts(self) -> int:
        pts: int = self._meta[3]
        return pts

    @property
    def trace(self) -> TraceContext | None:
        m = self._meta
        return trace_from(m[9], m[10], m[11])

    @property
    def geometry(self) -> Geometry:
        view = self._view
        if view is not None:
            g: Geometry = view[0]
            return g
        plen, w, h, stride, fmt = self._meta[4:9]
        return checked_geometry(fmt, w, h, stride, payload_len=plen, max_frame_bytes=plen)

    @property
    def width(self) -> int:
        w: int = self._meta[5]
        return w

    @property
    def height(self) -> int:
        h: int = self._meta[6]
        return h

    @property
    def stride(self) -> int:
        s: int = self._meta[7]
        return s

    @property
    def format(self) -> PixelFormat:
        return self.geometry.format

    @property
    def nbytes(self) -> int:
        n: int = self._meta[4]
        return n

    @property
    def handoff_ns(self) -> int:
        """From the writer's commit to this reader taking the frame (CLOCK_MONOTONIC)."""
        return self.received_ns - self.commit_ns

    # --- views ------------------------------------------------------------------------

    @property
    def array(self) -> np.ndarray:
        """Read-only numpy view: (h, w, c) packed, (h, w) gray, (h*3/2, stride) planar."""
        view = self._view
        if view is None:
            view = self._view = [self.geometry, self._new_array(), None]
        arr: np.ndarray = view[1]
        return arr

    def _new_array(self) -> np.ndarray:
        return array_view(self._mem, self._reader._pay_off[self.slot], self.geometry)

    def planes(self) -> tuple[np.ndarray, ...]:
        """Per-plane views: (Y, U, V) for YUV420P, (Y, UV) for NV12, (array,) otherwise."""
        return plane_views(self._mem, self._reader._pay_off[self.slot], self.geometry)

    def plane_tensors(self) -> tuple[Any, ...]:
        """Read-only torch tensors over ``planes()`` (zero copy)."""
        return tuple(as_tensor(p) for p in self.planes())

    def tensor(self) -> Any:
        """Read-only torch tensor over the slot (uint8, same shape and strides as array).

        Frames of the same slot and geometry share one tensor object (a cold
        torch.from_numpy costs tens of microseconds, the whole handoff budget): take views
        (t.unsqueeze(0)), not in-place metadata changes (t.unsqueeze_(0))."""
        view = self._view
        if view is None:
            view = self._view = [self.geometry, self._new_array(), None]
        if view[2] is None:
            view[2] = as_tensor(view[1])
        return view[2]

    # --- validity ---------------------------------------------------------------------

    def is_valid(self) -> bool:
        """True while the writer has not started overwriting this frame's slot."""
        return self._words[self._ci] == self._counter

    def check(self) -> None:
        """Raise FrameOverwritten (and count a torn read) if the slot was overwritten."""
        if self._words[self._ci] != self._counter:
            self._reader._torn()
            raise FrameOverwritten(
                f"frame {self.sequence} of ring {self._reader.ring!r} was overwritten "
                "while held; the reader is slower than the ring (use more slots or copy())"
            )

    def copy(self) -> np.ndarray:
        """A private contiguous copy, verified untorn after copying (FrameOverwritten if
        not): hold frames this way when the reader may take longer than the ring lasts."""
        out = np.array(self.array, copy=True, order="C")
        self.check()
        return out

    def copy_tensor(self) -> Any:
        """Like copy(), as a (writable) torch tensor."""
        return as_tensor(self.copy())

    def to_device(self, device: Any = "cuda", *, non_blocking: bool = True) -> Any:
        """Copy to `device` (a DMA when the reader pinned the ring), wait for the copy,
        then verify the source was not overwritten during it."""
        t = self.tensor().to(device, non_blocking=non_blocking)
        if non_blocking and t.device.type == "cuda":
            _torch.cuda.current_stream(t.device).synchronize()
        self.check()
        return t

    def release(self) -> None:
        """Drop this frame's views so the reader's mapping can be unmapped on close."""
        self._view = None

    def __enter__(self) -> Frame:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.check()
        finally:
            self.release()

    def __repr__(self) -> str:
        return (
            f"Frame(seq={self.sequence}, {self.format.name} {self.width}x{self.height} "
            f"stride={self.stride}, slot={self.slot})"
        )
