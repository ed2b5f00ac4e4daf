"""Ingest into rings from files (H.264, H.265, MPEG-TS) and the simulator, camera life
cycle without restarts, the status model and its watch stream, and the metrics."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from its.camera.v1 import camera_pb2, camera_service_pb2
from its.camera.v1 import camera_status_pb2 as status_pb2
from its.common.v1 import geometry_pb2
from its_camera_ai import shm
from tests.decoder.conftest import SAMPLE_FPS, Decoder, read_frames, read_until_told, streaming

STREAMING = status_pb2.CAMERA_STATE_STREAMING
STOPPED = status_pb2.CAMERA_STATE_STOPPED
FAILED = status_pb2.CAMERA_STATE_FAILED


def consecutive(frames: list[tuple[int, int, int, int]]) -> bool:
    sequences = [f[0] for f in frames]
    return sequences == list(range(sequences[0], sequences[0] + len(sequences)))


@pytest.mark.parametrize(
    ("sample", "resolution"),
    [("h264.mp4", None), ("h265.mp4", (160, 120)), ("h264.ts", (640, 480))],
)
async def test_file_frames_arrive_in_the_ring(
    decoder: Decoder, samples: Path, sample: str, resolution: tuple[int, int] | None
) -> None:
    size = geometry_pb2.ImageSize(width=resolution[0], height=resolution[1]) if resolution else None
    await decoder.create(
        "replay", f"file://{samples / sample}", enabled=True, loop=True, resolution=size
    )
    status = await decoder.wait_for("replay", streaming)
    width, height = resolution or (320, 240)
    assert status.ring_name == decoder.ring("replay")
    assert (status.resolution.width, status.resolution.height) == (width, height)

    frames = await asyncio.to_thread(read_frames, status.ring_name, 12)
    assert len(frames) == 12
    assert {(w, h) for _, w, h, _ in frames} == {(width, height)}
    assert consecutive(frames)
    captures = [f[3] for f in frames]
    assert captures == sorted(captures)
    assert status.last_frame_time.ToNanoseconds() > 0


async def test_file_ends_thinned_and_stopped_then_restarts_on_update(
    decoder: Decoder, samples: Path
) -> None:
    await decoder.create("once", f"file://{samples / 'h264.mp4'}", enabled=True, target_fps=10)
    status = await decoder.wait_for("once", lambda s: s.state == STOPPED and s.frames_decoded > 0)
    # 2 s at 30 frames/s thinned to 10 frames/s: every third frame, none of it a loss.
    assert status.frames_decoded == 20
    assert status.frames_dropped == 0
    assert status.ring_name == ""  # the ring is gone with the worker
    assert 5 < status.measured_fps < 15

    # Any update is a request to try again: the file plays anew.
    await decoder.stub.UpdateCamera(
        camera_service_pb2.UpdateCameraRequest(
            camera=camera_pb2.Camera(name="cameras/once", target_fps=30),
            update_mask=field_mask_pb2.FieldMask(paths=["target_fps"]),
        )
    )
    await decoder.wait_for("once", lambda s: s.frames_decoded > 25)


async def test_simulator_renders_into_the_ring(decoder: Decoder) -> None:
    await decoder.create("synthetic", "sim://road?seed=7&width=320&height=240&fps=15", enabled=True)
    status = await decoder.wait_for("synthetic", streaming, within=30)
    frames = await asyncio.to_thread(read_frames, status.ring_name, 5)
    assert {(w, h) for _, w, h, _ in frames} == {(320, 240)}
    assert consecutive(frames)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await decoder.create("bad-scene", "sim://road?condition=sandstorm")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_frames_carry_their_trace_context_and_metrics_export(
    decoder: Decoder, samples: Path
) -> None:
    await decoder.create("traced", f"file://{samples / 'h264.mp4'}", enabled=True, loop=True)
    status = await decoder.wait_for("traced", streaming)
    reader = shm.attach(status.ring_name)
    try:
        frame = await asyncio.to_thread(reader.read_latest, 5.0)
        assert frame is not None
        with frame:
            assert frame.trace is not None
            assert frame.trace.trace_id != bytes(16)
            assert frame.format is shm.PixelFormat.RGB24
    finally:
        reader.close()

    url = f"http://127.0.0.1:{decoder.host.http_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert 'decoder_frames_decoded_total{camera="traced"}' in body
    assert 'decoder_decode_latency_seconds_bucket{camera="traced",le="0.01"}' in body
    assert 'decoder_fps{camera="traced"}' in body
    assert 'decoder_cameras{state="streaming"} 1.0' in body
    assert 'decoder_reconnects_total{camera="traced"} 0.0' in body


async def test_cameras_change_without_disturbing_the_others(
    decoder: Decoder, samples: Path
) -> None:
    source = f"file://{samples / 'h264.mp4'}"
    await decoder.create("steady", source, enabled=True, loop=True)
    await decoder.create("changing", source, enabled=True, loop=True)
    await decoder.wait_for("changing", streaming)
    steady_before = (await decoder.wait_for("steady", streaming)).frames_decoded

    # A new output size: the ring is re-created and its old readers are told.
    reader = shm.attach(decoder.ring("changing"))
    await decoder.stub.UpdateCamera(
        camera_service_pb2.UpdateCameraRequest(
            camera=camera_pb2.Camera(
                name="cameras/changing", resolution=geometry_pb2.ImageSize(width=160, height=120)
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["resolution"]),
        )
    )
    # RingClosed, or RingNotFound once the name holds the new ring: either way, re-attach.
    with pytest.raises((shm.NoWriter, shm.RingNotFound)):
        await read_until_told(reader)
    reader.close()
    status = await decoder.wait_for(
        "changing", lambda s: streaming(s) and s.resolution.width == 160
    )
    frames = await asyncio.to_thread(read_frames, status.ring_name, 3)
    assert {(w, h) for _, w, h, _ in frames} == {(160, 120)}

    # Disabled: stopped, ring gone. Enabled again: back.
    disable = camera_service_pb2.UpdateCameraRequest(
        camera=camera_pb2.Camera(name="cameras/changing", enabled=False),
        update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
    )
    await decoder.stub.UpdateCamera(disable)
    status = await decoder.wait_for("changing", lambda s: s.state == STOPPED)
    assert status.ring_name == ""
    with pytest.raises(shm.RingNotFound):
        shm.attach(decoder.ring("changing"))
    disable.camera.enabled = True
    await decoder.stub.UpdateCamera(disable)
    await decoder.wait_for("changing", lambda s: s.state == STREAMING)

    # Deleted: its ring goes with it, the status is NOT_FOUND.
    await decoder.stub.DeleteCamera(camera_service_pb2.DeleteCameraRequest(name="cameras/changing"))
    with pytest.raises(shm.RingNotFound):
        shm.attach(decoder.ring("changing"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await decoder.status("changing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    steady = await decoder.wait_for(
        "steady", lambda s: s.frames_decoded > steady_before + SAMPLE_FPS // 2
    )
    assert (steady.state, steady.reconnects) == (STREAMING, 0)


async def test_broken_sources_are_reported_not_fatal(decoder: Decoder, samples: Path) -> None:
    corrupt = samples / "corrupt.ts"
    data = bytearray((samples / "h264.ts").read_bytes())
    for offset in range(20_000, len(data) - 1000, 7_000):
        data[offset : offset + 400] = bytes(400)  # holes in the middle of the stream
    corrupt.write_bytes(bytes(data))
    await decoder.create("holes", f"file://{corrupt}", enabled=True)

    doomed = samples / "doomed.mp4"
    doomed.write_bytes((samples / "h264.mp4").read_bytes())
    await decoder.create("doomed", f"file://{doomed}", enabled=False)
    doomed.unlink()
    await decoder.stub.UpdateCamera(
        camera_service_pb2.UpdateCameraRequest(
            camera=camera_pb2.Camera(name="cameras/doomed", enabled=True),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        )
    )
    failed = await decoder.wait_for("doomed", lambda s: s.state == FAILED)
    assert "No such file" in failed.last_error
    assert failed.last_error_time.seconds > 0

    await decoder.create("refused", "rtsp://user:hunter22@127.0.0.1:9/stream", enabled=True)
    backing_off = await decoder.wait_for("refused", lambda s: s.reconnects >= 2)
    assert backing_off.state in (
        status_pb2.CAMERA_STATE_BACKING_OFF,
        status_pb2.CAMERA_STATE_CONNECTING,
    )
    assert "refused" in backing_off.last_error.lower()
    assert "hunter22" not in backing_off.last_error
    assert "user:***@" in backing_off.last_error

    holes = await decoder.wait_for("holes", lambda s: s.state == STOPPED and s.frames_decoded > 0)
    assert holes.frames_dropped > 0
    assert holes.frames_decoded + holes.frames_dropped >= 40


async def watch(
    decoder: Decoder, request: camera_service_pb2.WatchCameraStatusRequest
) -> tuple[asyncio.Queue[camera_service_pb2.WatchCameraStatusResponse], asyncio.Task[None]]:
    queue: asyncio.Queue[camera_service_pb2.WatchCameraStatusResponse] = asyncio.Queue()

    async def pump() -> None:
        async for message in decoder.stub.WatchCameraStatus(request):
            await queue.put(message)

    return queue, asyncio.create_task(pump())


async def next_where(
    queue: asyncio.Queue[camera_service_pb2.WatchCameraStatusResponse], want: object
) -> camera_service_pb2.WatchCameraStatusResponse:
    async with asyncio.timeout(15):
        while True:
            message = await queue.get()
            if want(message):  # type: ignore[operator]
                return message


async def test_watch_streams_snapshots_changes_and_deletions(
    decoder: Decoder, samples: Path
) -> None:
    await decoder.create("quiet", "rtsp://127.0.0.1:9/x")  # disabled
    everything, all_task = await watch(decoder, camera_service_pb2.WatchCameraStatusRequest())
    first = await next_where(everything, lambda m: True)
    assert (first.status.name, first.status.state) == ("cameras/quiet/status", STOPPED)

    await decoder.create("live", f"file://{samples / 'h264.mp4'}", enabled=True, loop=True)
    single, single_task = await watch(
        decoder,
        camera_service_pb2.WatchCameraStatusRequest(
            camera="cameras/live", refresh_interval=duration_pb2.Duration(seconds=1)
        ),
    )
    # Created, then connecting, then streaming with its ring.
    await next_where(everything, lambda m: m.status.name == "cameras/live/status")
    message = await next_where(single, lambda m: m.status.state == STREAMING and m.status.ring_name)
    assert message.status.resolution.width == 320
    # The refresh keeps the counters coming while nothing else changes.
    counted = message.status.frames_decoded
    await next_where(single, lambda m: m.status.frames_decoded > counted + 10)

    await decoder.stub.DeleteCamera(camera_service_pb2.DeleteCameraRequest(name="cameras/live"))
    gone = await next_where(single, lambda m: m.camera_deleted)
    assert gone.status.state == STOPPED
    await asyncio.wait_for(single_task, 5)  # the single-camera stream ends with OK
    await next_where(
        everything, lambda m: m.camera_deleted and m.status.name == "cameras/live/status"
    )
    all_task.cancel()

    for request, code in [
        (
            camera_service_pb2.WatchCameraStatusRequest(camera="cameras/none"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            camera_service_pb2.WatchCameraStatusRequest(camera="none"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            camera_service_pb2.WatchCameraStatusRequest(
                refresh_interval=duration_pb2.Duration(nanos=100_000_000)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in decoder.stub.WatchCameraStatus(request):
                pass
        assert caught.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await decoder.stub.GetCameraStatus(
            camera_service_pb2.GetCameraStatusRequest(name="cameras/quiet")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
