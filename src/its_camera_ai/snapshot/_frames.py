"""The newest frames of the cameras' shared-memory rings, for snapshots.

Readers attach on demand without a notification slot (they never wait, and take none of
the ring's reader registrations from inference), are kept for the next snapshot, at most
``max_readers`` of them (the least recently used closed first), and are attached anew
when the writer is gone (a restarted decoder makes a new ring). ``RingReader`` is not
thread-safe: every call here runs on one worker thread, which also does the pixel work so
the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from its_camera_ai import shm

__all__ = ["RingFrames", "to_rgb"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_MAX_READERS = 32


def _yuv_to_rgb(
    y: NDArray[np.uint8], u: NDArray[np.uint8], v: NDArray[np.uint8]
) -> NDArray[np.uint8]:
    """BT.601 limited range, chroma upsampled by replication (as inference converts)."""
    h, w = y.shape
    yf = (y.astype(np.float32) - 16.0) * (255.0 / 219.0)
    uf = (u.astype(np.float32) - 128.0).repeat(2, 0).repeat(2, 1)[:h, :w]
    vf = (v.astype(np.float32) - 128.0).repeat(2, 0).repeat(2, 1)[:h, :w]
    rgb = np.stack(
        (yf + 1.596027 * vf, yf - 0.391762 * uf - 0.812968 * vf, yf + 2.017232 * uf), axis=-1
    )
    out: NDArray[np.uint8] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return out


def to_rgb(frame: shm.Frame) -> NDArray[np.uint8]:
    """A private (H, W, 3) RGB copy of a ring frame, whatever its pixel format."""
    fmt = frame.format
    planes = frame.planes()
    if fmt is shm.PixelFormat.RGB24:
        rgb = np.array(planes[0], copy=True)
    elif fmt is shm.PixelFormat.BGR24:
        rgb = np.ascontiguousarray(planes[0][..., ::-1])
    elif fmt is shm.PixelFormat.RGBA:
        rgb = np.ascontiguousarray(planes[0][..., :3])
    elif fmt is shm.PixelFormat.GRAY8:
        rgb = np.repeat(planes[0][..., None], 3, axis=2)
    elif fmt is shm.PixelFormat.NV12:
        y, uv = planes
        rgb = _yuv_to_rgb(y, uv[..., 0], uv[..., 1])
    else:
        rgb = _yuv_to_rgb(*planes)
    return rgb


class RingFrames:
    def __init__(self, ring_name: Callable[[str], str], *, max_readers: int = _MAX_READERS) -> None:
        self._ring_name = ring_name
        self._max_readers = max_readers
        self._readers: OrderedDict[str, shm.RingReader] = OrderedDict()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="snapshot")

    async def run(self, work: Callable[[], _T]) -> _T:
        """``work`` on the worker thread (the one that may touch the readers)."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, work)

    def frame(self, camera_id: str, sequence: int | None) -> NDArray[np.uint8] | None:
        """On the worker thread: frame ``sequence`` of the camera's ring if it is still
        there, else the newest; None without a ring (or a frame in it)."""
        reader = self._reader(camera_id)
        if reader is None:
            return None
        newest = reader.last_sequence + reader.lag
        for wanted in dict.fromkeys((sequence or newest, newest)):
            frame = reader.read_sequence(wanted)
            if frame is None:
                continue
            try:
                rgb = to_rgb(frame)
                frame.check()
            except shm.FrameOverwritten:
                continue  # the writer took the slot while we copied: try the newest
            finally:
                frame.release()
            return rgb
        return None

    def _reader(self, camera_id: str) -> shm.RingReader | None:
        reader = self._readers.pop(camera_id, None)
        if reader is not None and reader.writer_status().liveness is not shm.Liveness.ALIVE:
            reader.close()  # closed, or its writer gone: a new ring may have replaced it
            reader = None
        if reader is None:
            try:
                reader = shm.attach(self._ring_name(camera_id), notify=False)
            except (shm.ShmError, OSError) as exc:
                _log.debug("no ring for a snapshot", extra={"camera": camera_id, "error": str(exc)})
                return None
        self._readers[camera_id] = reader
        while len(self._readers) > self._max_readers:
            self._readers.popitem(last=False)[1].close()
        return reader

    def _close_readers(self) -> None:
        while self._readers:
            self._readers.popitem()[1].close()

    async def close(self) -> None:
        await self.run(self._close_readers)
        self._worker.shutdown(wait=True)
