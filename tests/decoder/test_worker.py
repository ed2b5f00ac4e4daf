"""The worker loop against scripted sources: stalls, crashes, backoff and stop."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator

import av
import numpy as np
from prometheus_client import CollectorRegistry

from its_camera_ai.common import DecoderSettings
from its_camera_ai.decoder import (
    CameraState,
    CameraWorker,
    DecoderMetrics,
    DecodeSpec,
    Picture,
    SourceError,
    StatusBoard,
    StatusTracker,
    parse_source_uri,
)


class ScriptedSource:
    """Yields what ``script`` yields; counts how often it was opened."""

    opened = 0

    def __init__(self, script: Callable[[], Iterator[Picture | None]]) -> None:
        type(self).opened += 1
        self._script = script

    def pictures(self) -> Iterator[Picture | None]:
        return self._script()

    def rewind(self) -> None:
        """Live: nothing to rewind."""

    def close(self) -> None:
        """Nothing held."""


def picture(index: int) -> Picture:
    frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 80, np.uint8), format="rgb24")
    return Picture(frame, index / 30, index, time.time_ns(), time.perf_counter())


async def run_worker(
    script: Callable[[], Iterator[Picture | None]],
    until: Callable[[StatusTracker], bool],
) -> StatusTracker:
    ScriptedSource.opened = 0
    settings = DecoderSettings(
        stall_timeout_seconds=0.3, backoff_initial_seconds=0.05, backoff_max_seconds=0.1
    )
    board = StatusBoard(asyncio.get_running_loop())
    camera_id = f"w{uuid.uuid4().hex[:8]}"
    tracker = board.track(camera_id)
    spec = DecodeSpec(camera_id, parse_source_uri("rtsp://cam/x", file_roots=()), False, 0, None)
    worker = CameraWorker(
        spec,
        settings,
        ring_name=camera_id,
        tracker=tracker,
        metrics=DecoderMetrics(CollectorRegistry(), board).camera(camera_id),
        opener=lambda *args, **kwargs: ScriptedSource(script),
    )
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not until(tracker):
            assert time.monotonic() < deadline, tracker.snapshot()
            await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await asyncio.to_thread(worker.join)
    return tracker


async def test_packets_without_pictures_are_a_stall() -> None:
    def script() -> Iterator[Picture | None]:
        yield picture(0)
        while True:  # packets keep coming, none decodes
            time.sleep(0.01)
            yield None

    tracker = await run_worker(script, lambda t: t.reconnects >= 2)
    assert "stalled" in tracker.last_error
    assert tracker.frames_decoded >= 2
    assert tracker.state == CameraState.CAMERA_STATE_STOPPED  # after the stop request
    assert tracker.ring_name == ""


async def test_a_bug_parks_the_camera_as_failed() -> None:
    def script() -> Iterator[Picture | None]:
        yield picture(0)
        raise ZeroDivisionError("bug")

    tracker = await run_worker(script, lambda t: t.state == CameraState.CAMERA_STATE_FAILED)
    assert tracker.last_error == "internal decoder error"
    assert ScriptedSource.opened == 1


async def test_permanent_errors_are_not_retried() -> None:
    def script() -> Iterator[Picture | None]:
        raise SourceError("rtsp://cam/x: codec vp8 is not supported", permanent=True)
        yield  # pragma: no cover - makes this a generator

    tracker = await run_worker(script, lambda t: t.state == CameraState.CAMERA_STATE_FAILED)
    await asyncio.sleep(0.3)
    assert ScriptedSource.opened == 1
    assert tracker.reconnects == 0
