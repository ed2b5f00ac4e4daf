"""WatchCameraStatus at its edges: a client that cancels, and refresh intervals too short."""

from __future__ import annotations

import asyncio
import gc
import logging

import grpc
import pytest
from google.protobuf import duration_pb2

from its.camera.v1 import camera_service_pb2
from tests.conftest import rpc_error_details
from tests.decoder.conftest import Decoder


async def test_a_client_cancelling_a_watch_logs_no_error(
    decoder: Decoder, caplog: pytest.LogCaptureFixture
) -> None:
    # Enough cameras that the snapshot is still being written when the client cancels.
    cameras = 20
    for index in range(cameras):
        await decoder.create(f"quiet-{index}", "rtsp://127.0.0.1:9/x")  # disabled
    caplog.set_level(logging.WARNING)
    request = camera_service_pb2.WatchCameraStatusRequest(
        refresh_interval=duration_pb2.Duration(seconds=1)
    )
    for _ in range(5):
        call = decoder.stub.WatchCameraStatus(request)
        assert isinstance(await call.read(), camera_service_pb2.WatchCameraStatusResponse)
        call.cancel()
    # The server notices; whatever it left behind is finalised (by the loop or collector).
    await asyncio.sleep(0.5)
    gc.collect()
    await asyncio.sleep(0.2)
    # It still serves a whole snapshot after the cancellations.
    call = decoder.stub.WatchCameraStatus(request)
    names = {(await call.read()).status.name for _ in range(cameras)}  # type: ignore[union-attr]
    assert len(names) == cameras
    call.cancel()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


@pytest.mark.parametrize(
    "interval",
    [
        duration_pb2.Duration(nanos=1),
        duration_pb2.Duration(nanos=999_999_999),
        duration_pb2.Duration(nanos=500),
        duration_pb2.Duration(seconds=-1),
        duration_pb2.Duration(nanos=-1),
    ],
    ids=["1ns", "999999999ns", "500ns", "-1s", "-1ns"],
)
async def test_refresh_intervals_under_a_second_are_refused(
    decoder: Decoder, interval: duration_pb2.Duration
) -> None:
    request = camera_service_pb2.WatchCameraStatusRequest(refresh_interval=interval)
    call = decoder.stub.WatchCameraStatus(request)
    # Bounded: a wrongly accepted interval opens a stream that sends nothing (no cameras).
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "refresh_interval" in (caught.value.details() or "")
    assert "at least 1 second" in (caught.value.details() or "")
    assert rpc_error_details(caught.value)[1] == ["refresh_interval"]


@pytest.mark.parametrize(
    "interval",
    [None, duration_pb2.Duration(), duration_pb2.Duration(seconds=1)],
    ids=["unset", "zero", "1s"],
)
async def test_refresh_intervals_of_a_second_or_unset_are_taken(
    decoder: Decoder, interval: duration_pb2.Duration | None
) -> None:
    await decoder.create("quiet", "rtsp://127.0.0.1:9/x")
    request = camera_service_pb2.WatchCameraStatusRequest(refresh_interval=interval)
    call = decoder.stub.WatchCameraStatus(request)
    first = await call.read()
    assert first.status.name == "cameras/quiet/status"  # type: ignore[union-attr]
    call.cancel()
