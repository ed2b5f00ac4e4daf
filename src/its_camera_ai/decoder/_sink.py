"""A camera's shared-memory ring, as its worker writes it.

The ring is sized for the frames it carries, which are known only once the first frame is
decoded (a camera's native size is not configuration), so the sink creates it then. When
the output size changes (the source came back at another resolution after a reconnect),
the old ring is closed, so its readers get ``RingClosed``, and a new one takes its name;
the camera's status announces the new resolution to WatchCameraStatus clients.

Frames are converted and scaled by FFmpeg's swscale into a private frame, then copied
plane by plane into the reserved slot (the one copy a ring write costs).
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from its_camera_ai import shm
from its_camera_ai.common import PixelFormatName
from its_camera_ai.decoder._sources import Picture, SourceError
from its_camera_ai.decoder._status import StatusTracker

__all__ = ["RingSink", "ring_name_for"]

_log = logging.getLogger(__name__)

# With the longest prefix (16) and the hash (9), still within shm's 64-character names.
_KEPT_ID_CHARACTERS = 39


def ring_name_for(prefix: str, camera_id: str) -> str:
    """The ring of a camera: prefix + id, shortened with a hash if over shm's name limit."""
    try:
        return shm.validate_name(prefix + camera_id)
    except shm.InvalidRingName:
        digest = hashlib.sha256(camera_id.encode()).hexdigest()[:8]
        return shm.validate_name(f"{prefix}{camera_id[:_KEPT_ID_CHARACTERS]}-{digest}")


class RingSink:
    """Writes pictures into the camera's ring. One thread only (the camera's worker)."""

    def __init__(
        self,
        ring_name: str,
        *,
        slots: int,
        pixel_format: PixelFormatName,
        resolution: tuple[int, int] | None,
        scale_threads: int,
        tracker: StatusTracker,
    ) -> None:
        self.ring_name = ring_name
        self._slots = slots
        self._format = shm.PixelFormat.from_name(pixel_format)
        self._av_format = self._format.ffmpeg_name
        self._resolution = resolution
        self._scale_threads = scale_threads
        self._tracker = tracker
        self._reformatter = VideoReformatter()
        self._writer: shm.RingWriter | None = None
        self._size: tuple[int, int] | None = None

    def _output_size(self, width: int, height: int) -> tuple[int, int]:
        if self._resolution is not None:
            return self._resolution
        # 4:2:0 layouts need even sizes; odd native sizes lose their last row/column.
        return (width & ~1, height & ~1) if self._format.planar else (width, height)

    def _open(self, size: tuple[int, int]) -> shm.RingWriter:
        self.close()
        width, height = size
        try:
            writer = shm.create(
                self.ring_name,
                slots=self._slots,
                max_frame_bytes=shm.frame_bytes(self._format, width, height),
            )
        except shm.RingExists as exc:
            # Another live decoder owns this name: configuration, not the network.
            raise SourceError(f"ring {self.ring_name} is in use: {exc}", permanent=True) from None
        except (shm.ShmError, OSError) as exc:
            raise SourceError(
                f"cannot create ring {self.ring_name}: {exc}", permanent=True
            ) from None
        self._writer, self._size = writer, size
        self._tracker.set_ring(self.ring_name, size)
        _log.info(
            "ring ready",
            extra={"camera": self._tracker.camera_id, "ring": self.ring_name, "size": size},
        )
        return writer

    def write(self, picture: Picture, trace: shm.TraceContext | None) -> int:
        """Convert, scale and commit one picture; returns its sequence number in the ring."""
        frame = picture.frame
        size = self._output_size(frame.width, frame.height)
        writer = self._writer if size == self._size and self._writer else self._open(size)
        width, height = size
        converted = self._reformatter.reformat(
            frame,
            width,
            height,
            self._av_format,
            interpolation=Interpolation.BILINEAR,
            threads=self._scale_threads,
        )
        with writer.reserve(
            width,
            height,
            self._format,
            pts=picture.pts,
            capture_ns=picture.capture_ns,
            trace=trace,
        ) as slot:
            for target, plane in zip(slot.planes(), converted.planes, strict=True):
                rows, columns = target.shape[0], target.size // target.shape[0]
                source = np.frombuffer(memoryview(plane), np.uint8, count=rows * plane.line_size)
                np.copyto(
                    target, source.reshape(rows, plane.line_size)[:, :columns].reshape(target.shape)
                )
            return slot.sequence

    def close(self) -> None:
        """Close and unlink the ring (its readers see RingClosed)."""
        if self._writer is not None:
            self._writer.close()
            self._writer, self._size = None, None
            self._tracker.set_ring("", None)
