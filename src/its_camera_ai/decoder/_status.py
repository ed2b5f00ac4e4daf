"""Live camera status: what each decoder worker reports, and who is watching it.

A ``StatusTracker`` per camera is written by that camera's worker thread and read by the
event loop (GetCameraStatus, WatchCameraStatus, metrics). Counters are plain integers bumped
by the one worker thread that owns the camera at a time; state changes take a lock and
notify the ``StatusBoard``, which wakes watchers on the event loop. A watcher keeps a set of
cameras that changed rather than a queue of events, so a slow client gets the newest status
of each camera instead of an ever-growing backlog. ``watch_messages`` turns a watch into
what one WatchCameraStatus stream sends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from google.protobuf import timestamp_pb2

from its.camera.v1 import camera_service_pb2, camera_status_pb2
from its.common.v1 import geometry_pb2

__all__ = ["CameraState", "StatusBoard", "StatusTracker", "Watch", "watch_messages"]

CameraState = camera_status_pb2.CameraState
_Response = camera_service_pb2.WatchCameraStatusResponse
FPS_WINDOW_SECONDS = 10.0
# Enough timestamps for 120 frames/s over the whole window.
_FPS_HISTORY = int(120 * FPS_WINDOW_SECONDS)


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


class StatusTracker:
    """The status of one camera since this process started tracking it."""

    def __init__(self, camera_id: str, notify: Callable[[str], None]) -> None:
        self.camera_id = camera_id
        self._notify = notify
        self._lock = threading.Lock()
        self.state: int = CameraState.CAMERA_STATE_STOPPED
        self.state_change_ns = time.time_ns()
        self.ring_name = ""
        self.resolution: tuple[int, int] | None = None
        self.frames_decoded = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self.last_frame_ns = 0
        self.last_error = ""
        self.last_error_ns = 0
        self._frame_times: collections.deque[float] = collections.deque(maxlen=_FPS_HISTORY)
        self._counting_since = 0.0

    # --- written by the worker -----------------------------------------------------------

    def set_state(self, state: int, error: str = "") -> None:
        """Enter ``state``; ``error`` (already masked) becomes ``last_error``."""
        with self._lock:
            changed = state != self.state or bool(error)
            if state != self.state:
                self.state = state
                self.state_change_ns = time.time_ns()
            if error:
                self.last_error = error
                self.last_error_ns = time.time_ns()
        if changed:
            self._notify(self.camera_id)

    def set_ring(self, ring_name: str, resolution: tuple[int, int] | None) -> None:
        with self._lock:
            self.ring_name = ring_name
            self.resolution = resolution
        self._notify(self.camera_id)

    def frame_written(self, capture_ns: int) -> None:
        if not self._frame_times:
            self._counting_since = time.monotonic()
        self.frames_decoded += 1
        self.last_frame_ns = capture_ns
        self._frame_times.append(time.monotonic())

    def frames_lost(self, count: int = 1) -> None:
        self.frames_dropped += count

    def reconnecting(self) -> None:
        self.reconnects += 1

    # --- read by the event loop ----------------------------------------------------------

    def measured_fps(self) -> float:
        """Frames per second over the last 10 s, or since the first frame when that is
        more recent (at least 1 s, so the first frames do not read as a huge rate)."""
        times = tuple(self._frame_times)
        if not times:
            return 0.0
        now = time.monotonic()
        recent = sum(1 for t in times if t > now - FPS_WINDOW_SECONDS)
        span = min(FPS_WINDOW_SECONDS, max(now - self._counting_since, 1.0))
        return recent / span

    def snapshot(self) -> camera_status_pb2.CameraStatus:
        with self._lock:
            status = camera_status_pb2.CameraStatus(
                name=f"cameras/{self.camera_id}/status",
                state=self.state,  # type: ignore[arg-type]
                state_change_time=_timestamp(self.state_change_ns),
                ring_name=self.ring_name,
                measured_fps=self.measured_fps(),
                frames_decoded=self.frames_decoded,
                frames_dropped=self.frames_dropped,
                reconnects=self.reconnects,
                last_error=self.last_error,
                update_time=_timestamp(time.time_ns()),
            )
            if self.resolution is not None:
                status.resolution.CopyFrom(
                    geometry_pb2.ImageSize(width=self.resolution[0], height=self.resolution[1])
                )
            if self.last_frame_ns:
                status.last_frame_time.CopyFrom(_timestamp(self.last_frame_ns))
            if self.last_error_ns:
                status.last_error_time.CopyFrom(_timestamp(self.last_error_ns))
        return status


class Watch:
    """One WatchCameraStatus stream's view of the board: which cameras changed since it
    last looked (True: deleted)."""

    def __init__(self, camera_id: str | None) -> None:
        self.camera_id = camera_id
        self.pending: dict[str, bool] = {}
        self.wakeup = asyncio.Event()

    def mark(self, camera_id: str, deleted: bool) -> None:
        if self.camera_id in (None, camera_id):
            self.pending[camera_id] = self.pending.get(camera_id, False) or deleted
            self.wakeup.set()

    async def changes(
        self, refresh_seconds: float | None
    ) -> AsyncIterator[tuple[dict[str, bool], bool]]:
        """Batches of changed cameras, each with whether a refresh is due (then every
        watched camera is to be sent). Refreshes keep their period however busy the
        changes are."""
        next_refresh = None if refresh_seconds is None else time.monotonic() + refresh_seconds
        while True:
            timeout = None if next_refresh is None else max(next_refresh - time.monotonic(), 0)
            try:
                async with asyncio.timeout(timeout):
                    await self.wakeup.wait()
            except TimeoutError:
                pass
            refreshing = next_refresh is not None and time.monotonic() >= next_refresh
            if refreshing:
                assert refresh_seconds is not None
                assert next_refresh is not None
                next_refresh = max(next_refresh + refresh_seconds, time.monotonic())
            self.wakeup.clear()
            batch, self.pending = self.pending, {}
            yield batch, refreshing


class StatusBoard:
    """Every camera's tracker, and the watches to tell about changes.

    Trackers notify from worker threads; the board moves each notification onto its event
    loop, where watches live.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._trackers: dict[str, StatusTracker] = {}
        self._watches: set[Watch] = set()

    def track(self, camera_id: str) -> StatusTracker:
        tracker = self._trackers.get(camera_id)
        if tracker is None:
            tracker = StatusTracker(camera_id, self._notify_threadsafe)
            self._trackers[camera_id] = tracker
            self._changed(camera_id)
        return tracker

    def forget(self, camera_id: str) -> None:
        if self._trackers.pop(camera_id, None) is not None:
            self._changed(camera_id, deleted=True)

    def get(self, camera_id: str) -> StatusTracker | None:
        return self._trackers.get(camera_id)

    def trackers(self) -> list[StatusTracker]:
        return list(self._trackers.values())

    def watch(self, camera_id: str | None) -> Watch:
        watch = Watch(camera_id)
        self._watches.add(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        self._watches.discard(watch)

    def _notify_threadsafe(self, camera_id: str) -> None:
        # A closed loop: the service is gone and nobody is watching.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._changed, camera_id)

    def _changed(self, camera_id: str, deleted: bool = False) -> None:
        for watch in self._watches:
            watch.mark(camera_id, deleted)


def _deleted_status(camera_id: str) -> camera_status_pb2.CameraStatus:
    status = camera_status_pb2.CameraStatus(
        name=f"cameras/{camera_id}/status", state=CameraState.CAMERA_STATE_STOPPED
    )
    status.update_time.GetCurrentTime()
    return status


def _watched(board: StatusBoard, camera_id: str | None) -> list[StatusTracker]:
    if camera_id is None:
        return board.trackers()
    tracker = board.get(camera_id)
    return [tracker] if tracker is not None else []


async def watch_messages(
    board: StatusBoard, camera_id: str | None, refresh_seconds: float | None
) -> AsyncGenerator[_Response, None]:
    """One WatchCameraStatus stream: the status of every watched camera (one camera, or
    all with None), then each change, deletion and periodic refresh. A watch of one camera
    ends once it is deleted."""
    # Watch before the snapshot: a change in between is sent twice, never lost.
    watch = board.watch(camera_id)
    try:
        for tracker in _watched(board, camera_id):
            yield _Response(status=tracker.snapshot())
        async for changed, refreshing in watch.changes(refresh_seconds):
            for changed_id, deleted in changed.items():
                if deleted:
                    yield _Response(status=_deleted_status(changed_id), camera_deleted=True)
                    if camera_id is not None:
                        return
                elif (changed_tracker := board.get(changed_id)) is not None:
                    yield _Response(status=changed_tracker.snapshot())
            if refreshing:
                for tracker in _watched(board, camera_id):
                    if tracker.camera_id not in changed:
                        yield _Response(status=tracker.snapshot())
    finally:
        board.unwatch(watch)
