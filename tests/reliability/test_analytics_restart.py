"""SIGKILL the analytics process mid-stream (also with batches still in its spool), restart
it, resend what was not acknowledged: the tables equal an undisturbed run's."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc, detection_batch_pb2
from tests.analytics import synth
from tests.analytics.test_service_support import (
    CAMERA_ID,
    camera_proto,
    producer_mark,
    reference,
    serve_cameras,
    stored,
    stream,
    to_batches,
    traffic,
)
from tests.conftest import free_port
from tests.reliability.conftest import PrivatePostgres

pytestmark = pytest.mark.reliability


class Process:
    """``its-camera-ai serve analytics`` as a child process, configured from the environment."""

    def __init__(self, dsn: str, spool_dir: Path, decoder: str) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "ITS_DATABASE__DSN": dsn,
            "ITS_GRPC__HOST": "127.0.0.1",
            "ITS_GRPC__PORT": str(self.port),
            "ITS_HTTP__ENABLED": "false",
            "ITS_ANALYTICS__SPOOL_DIR": str(spool_dir),
            "ITS_ANALYTICS__DECODER_TARGET": decoder,
            "ITS_ANALYTICS__BREAKER_RESET_SECONDS": "0.3",
            "ITS_ANALYTICS__REPLAY_INTERVAL_SECONDS": "0.2",
            "ITS_LOGGING__LEVEL": "WARNING",
        }
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> grpc.aio.Channel:
        command = [sys.executable, "-m", "its_camera_ai.cli", "serve", "analytics"]
        self.process = subprocess.Popen(command, env=self.env)  # noqa: ASYNC220 - returns at once
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        await asyncio.wait_for(channel.channel_ready(), 60)
        return channel

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
async def decoder() -> AsyncIterator[str]:
    """The target of a CameraService serving the road camera."""
    async with serve_cameras({CAMERA_ID: camera_proto(synth.road_scene())}) as target:
        yield target


async def _stream_until_killed(
    channel: grpc.aio.Channel,
    batches: list[detection_batch_pb2.DetectionBatch],
    process: Process,
    kill_after: int,
) -> int:
    """Stream everything, SIGKILL the service after ``kill_after`` acks; the last acked."""
    stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)

    async def requests() -> AsyncIterator[analytics_service_pb2.StreamDetectionBatchesRequest]:
        for batch in batches:
            yield analytics_service_pb2.StreamDetectionBatchesRequest(batch=batch)

    acked = 0
    call = stub.StreamDetectionBatches(requests())
    try:
        async for ack in call:
            acked = ack.acknowledged_sequence
            if acked == batches[kill_after - 1].sequence:
                process.kill()
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.UNAVAILABLE:
            raise
    else:
        raise AssertionError("the stream outlived the service")
    await channel.close()
    return acked


async def _resend_and_check(
    process: Process, dsn: str, batches: list[detection_batch_pb2.DetectionBatch], acked: int
) -> None:
    channel = await process.start()
    try:
        # The producer resends everything it holds unacknowledged, in order.
        acks = await stream(channel, [b for b in batches if b.sequence > acked])
        assert [a.acknowledged_sequence for a in acks] == [
            b.sequence for b in batches if b.sequence > acked
        ]
    finally:
        await channel.close()
        process.kill()


async def test_sigkill_mid_stream_loses_and_doubles_nothing(
    postgres_dsn: str, decoder: str, spool_dir: Path
) -> None:
    frames = traffic()
    batches = to_batches(frames, "inference-0/kill")
    process = Process(postgres_dsn, spool_dir, decoder)
    acked = await _stream_until_killed(await process.start(), batches, process, kill_after=12)
    assert acked >= 12, acked
    await _resend_and_check(process, postgres_dsn, batches, acked)
    assert await stored(postgres_dsn) == reference(frames, synth.road_scene())
    assert await producer_mark(postgres_dsn, "inference-0/kill") == batches[-1].sequence


async def test_sigkill_with_a_spool_pending_replays_it_on_restart(
    private_postgres: PrivatePostgres, decoder: str, spool_dir: Path
) -> None:
    dsn = private_postgres.dsn
    frames = traffic()
    batches = to_batches(frames, "inference-0/kill-spool")
    process = Process(dsn, spool_dir, decoder)
    channel = await process.start()
    await stream(channel, batches[:8])
    private_postgres.stop()
    # Acknowledged from the spool only, then the process dies with them still there.
    acked = await _stream_until_killed(channel, batches[8:], process, kill_after=10)
    assert acked >= batches[17].sequence
    assert (spool_dir / "batches.spool").stat().st_size > 0

    private_postgres.start()
    await _resend_and_check(process, dsn, batches, acked)
    assert await stored(dsn) == reference(frames, synth.road_scene())
    assert await producer_mark(dsn, "inference-0/kill-spool") == batches[-1].sequence
