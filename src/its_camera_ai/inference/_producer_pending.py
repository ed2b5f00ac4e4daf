"""The detection producer's pending frames: submitted, not yet in a batch.

Filled by ``DetectionProducer.submit()`` on the inference batching thread and emptied by the
stream on the event loop, so every method is thread-safe and none blocks for longer than a
few list operations: a slow or absent analytics service can never stall inference. Frames
are queued per camera in submission order; beyond the limit the oldest frame of any camera
is dropped, counted and (at most every 10 s) logged. The event loop is woken once per burst
of submissions, not once per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable

from its.analytics.v1 import detection_batch_pb2
from its_camera_ai.inference._log_throttle import LogThrottle

__all__ = ["PendingFrames"]

_log = logging.getLogger(__name__)

_Frame = detection_batch_pb2.FrameDetections


class PendingFrames:
    """Per-camera queues of frames waiting for a batch, at most ``limit`` frames in all."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        # Guarded by _lock: each frame with its global arrival number ("oldest" across cameras).
        self._queues: dict[str, deque[tuple[int, _Frame]]] = {}
        self._count = 0
        self._arrival = 0
        self._closed = False
        self._dropped: Tally[str] = Tally()  # per camera, not yet logged
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_added: Callable[[], None] | None = None
        self._wake_scheduled = False
        self._drop_log = LogThrottle()

    def __len__(self) -> int:
        with self._lock:
            return self._count

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def notify(self, loop: asyncio.AbstractEventLoop, on_added: Callable[[], None]) -> None:
        """From now on run ``on_added`` on ``loop`` after frames are added: once per burst
        (a burst ends when the call runs)."""
        with self._lock:
            self._loop = loop
            self._on_added = on_added

    def add(self, camera: str, frame: _Frame) -> int | None:
        """Queue ``frame`` of ``camera``: how many of the oldest frames were dropped to make
        room, or None if the queue is closed (the frame is not queued)."""
        loop: asyncio.AbstractEventLoop | None = None
        dropped = 0
        with self._lock:
            if self._closed:
                return None
            queue = self._queues.get(camera)
            if queue is None:
                queue = self._queues[camera] = deque()
            self._arrival += 1
            queue.append((self._arrival, frame))
            self._count += 1
            while self._count > self._limit:
                self._drop_oldest_locked()
                dropped += 1
            if self._loop is not None and not self._wake_scheduled:
                self._wake_scheduled = True
                loop = self._loop
        if loop is not None:
            # The loop may be shutting down under us: the frame stays pending, and the
            # producer's close() counts it as undelivered.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._woken)
        return dropped

    def _drop_oldest_locked(self) -> None:
        oldest_camera = min(
            (camera for camera, queue in self._queues.items() if queue),
            key=lambda camera: self._queues[camera][0][0],
        )
        self._queues[oldest_camera].popleft()
        self._count -= 1
        self._dropped[oldest_camera] += 1

    def _woken(self) -> None:
        with self._lock:
            self._wake_scheduled = False
            on_added = self._on_added
        if on_added is not None:
            on_added()
        self.log_drops()

    def take(self, max_frames: int) -> tuple[str, list[_Frame]] | None:
        """The camera waiting longest and up to ``max_frames`` of its frames, oldest first;
        None if nothing is pending."""
        with self._lock:
            waiting = [(queue[0][0], camera) for camera, queue in self._queues.items() if queue]
            if not waiting:
                return None
            _, camera = min(waiting)
            queue = self._queues[camera]
            taken = [queue.popleft()[1] for _ in range(min(max_frames, len(queue)))]
            if not queue:
                del self._queues[camera]
            self._count -= len(taken)
        return camera, taken

    def close(self) -> bool:
        """Refuse frames from now on; True if the queue was open until now."""
        with self._lock:
            was_open = not self._closed
            self._closed = True
        return was_open

    def clear(self) -> int:
        """Forget every pending frame; how many there were."""
        with self._lock:
            count = self._count
            self._queues.clear()
            self._count = 0
        return count

    def log_drops(self, *, force: bool = False) -> None:
        """Log the frames dropped since the last such line, at most every 10 s unless
        ``force``."""
        with self._lock:
            if not self._dropped or not (force or self._drop_log.ready()):
                return
            dropped, self._dropped = self._dropped, Tally()
            pending = self._count
        _log.warning(
            "pending frame buffer full: dropped the oldest frames",
            extra={
                "dropped_frames": sum(dropped.values()),
                "by_camera": dict(dropped.most_common(10)),
                "cameras": len(dropped),
                "pending_frames": pending,
                "max_pending_frames": self._limit,
            },
        )
