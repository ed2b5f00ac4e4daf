"""The inference service's surroundings: a recording AnalyticsService peer and sim frames
written into a real ring, paced like a decoder."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc, detection_batch_pb2
from its_camera_ai import shm
from its_camera_ai.sim import FrameTruth, Scene, SceneConfig

__all__ = [
    "SIM_SIZE",
    "RecordingAnalytics",
    "RingFeeder",
    "recording_analytics",
    "sim_frames",
    "until",
]

SIM_SIZE = (640, 360)


class RecordingAnalytics(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    """A real AnalyticsService endpoint that keeps every frame it is sent and acknowledges
    each batch: the inference service's output, observable frame by frame."""

    def __init__(self) -> None:
        self.frames: dict[str, dict[int, detection_batch_pb2.FrameDetections]] = defaultdict(dict)
        self.batches: list[detection_batch_pb2.DetectionBatch] = []
        # Per frame: from its capture time to its arrival here, milliseconds.
        self.latencies_ms: list[float] = []

    async def StreamDetectionBatches(
        self,
        request_iterator: AsyncIterator[analytics_service_pb2.StreamDetectionBatchesRequest],
        context: Any,
    ) -> AsyncIterator[analytics_service_pb2.StreamDetectionBatchesResponse]:
        async for request in request_iterator:
            batch = request.batch
            now = time.time_ns()
            self.batches.append(batch)
            for frame in batch.frames:
                self.frames[batch.camera][frame.frame_sequence] = frame
                self.latencies_ms.append((now - frame.capture_time.ToNanoseconds()) / 1e6)
            yield analytics_service_pb2.StreamDetectionBatchesResponse(
                acknowledged_sequence=batch.sequence, accepted_frames=len(batch.frames)
            )

    async def wait_frames(self, camera: str, count: int, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while len(self.frames[camera]) < count:
            assert time.monotonic() < deadline, (
                f"{len(self.frames[camera])} of {count} frames of {camera} arrived"
            )
            await asyncio.sleep(0.02)


@asynccontextmanager
async def recording_analytics() -> AsyncIterator[tuple[RecordingAnalytics, str]]:
    """A ``RecordingAnalytics`` served on loopback, and its address."""
    server = grpc.aio.server()
    recorder = RecordingAnalytics()
    analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield recorder, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def sim_frames(count: int, seed: int = 11) -> list[tuple[np.ndarray, FrameTruth]]:
    """``count`` simulator frames of ``SIM_SIZE`` with their ground truth."""
    scene = Scene(SceneConfig(seed=seed), size=SIM_SIZE)
    # Skip the empty start: traffic has entered the view after a few seconds.
    for _ in range(60):
        scene.step()
    return list(scene.frames(count))


@dataclass
class RingFeeder:
    """Writes frames into a ring on a thread at ``fps``, like a decoder."""

    name: str
    frames: list[np.ndarray]
    fps: float = 15.0
    slots: int = 32
    loops: int = 1
    written: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        h, w = self.frames[0].shape[:2]
        self.writer = shm.create(
            self.name,
            slots=self.slots,
            max_frame_bytes=shm.frame_bytes(shm.PixelFormat.RGB24, w, h),
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, index: int) -> int:
        frame = self.frames[index % len(self.frames)]
        h, w = frame.shape[:2]
        seq = self.writer.write(frame, w, h, shm.PixelFormat.RGB24, capture_ns=time.time_ns())
        self.written.append(seq)
        return seq

    def _run(self) -> None:
        # On the camera's clock: frame i is due at i / fps from the start, however long the
        # writes took (a pause after each write would fall behind under load, and a
        # benchmark would then be offered fewer frames than the camera makes).
        start = time.monotonic()
        for i in range(len(self.frames) * self.loops):
            if self._stop.is_set():
                return
            self.write(i)
            self._stop.wait(max(0.0, start + (i + 1) / self.fps - time.monotonic()))

    def start(self) -> RingFeeder:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 60.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        """Stop writing and close the ring; safe to call again (tests close in finally)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.join(5.0)
        self.writer.close()


async def until(predicate: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Wait until ``predicate()`` holds; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
