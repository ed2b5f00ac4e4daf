"""A slot reserved by the writer for in-place filling (decoder writes straight into it)."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from its_camera_ai.shm._cuda import load_torch
from its_camera_ai.shm.layout import Geometry, TraceContext, plane_views

if TYPE_CHECKING:
    from its_camera_ai.shm._writer import RingWriter


class WriteSlot:
    """The payload of the oldest slot, writable, until commit() or abort().

    As a context manager it commits on normal exit and aborts if the block raises, so a
    half-filled frame is never published.
    """

    __slots__ = (
        "_done",
        "_writer",
        "array",
        "capture_ns",
        "geometry",
        "index",
        "pts",
        "sequence",
        "trace",
    )

    def __init__(
        self,
        writer: RingWriter,
        *,
        index: int,
        sequence: int,
        geometry: Geometry,
        array: np.ndarray,
        pts: int,
        capture_ns: int | None,
        trace: TraceContext | None,
    ) -> None:
        self._writer = writer
        self.index = index
        self.sequence = sequence
        self.geometry = geometry
        self.array = array
        self.pts = pts
        self.capture_ns = capture_ns
        self.trace = trace
        self._done = False

    def planes(self) -> tuple[np.ndarray, ...]:
        """Writable per-plane views (see Frame.planes)."""
        w = self._writer
        return plane_views(w._map.mem, w._map.payload_offsets[self.index], self.geometry)

    def tensor(self) -> Any:
        """A torch tensor over the slot (writable), e.g. for `.copy_()` from a GPU frame."""
        return load_torch().from_numpy(self.array)

    def commit(self) -> int:
        """Publish the frame and wake readers; returns its sequence number."""
        if self._done:
            raise RuntimeError("slot already committed or aborted")
        self._done = True
        return self._writer._commit(self)

    def abort(self) -> None:
        """Give the slot up; its previous frame is gone, no new one is published."""
        if self._done:
            return
        self._done = True
        self._writer._abort(self)

    def __enter__(self) -> WriteSlot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.commit()
