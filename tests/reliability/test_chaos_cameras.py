"""Chaos: a camera source that stalls mid-stream or sends garbage (issue #19).

A real decoder (in-process, on the machine's PostgreSQL) decodes two cameras: a simulator
camera that always behaves, and an HTTP MPEG-TS camera served by a loopback server in the
test whose behaviour switches: good (the stream), stall (headers and a fifth of the stream,
then silence on an open connection), garbage (random bytes as the body). Invariants: the
flaky camera's trouble is visible in ``WatchCameraStatus`` and the decoder's metrics, the
other camera keeps decoding, the service never crashes, and the flaky camera streams again
once its source behaves (recovery times printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from its.camera.v1 import camera_service_pb2, camera_service_pb2_grpc
from its.camera.v1 import camera_status_pb2 as status_pb2
from its_camera_ai.common import DecoderSettings
from its_camera_ai.testing import metric_value
from tests.decoder.conftest import Decoder, encode_sample, new_key, start_decoder, streaming

pytestmark = pytest.mark.reliability

STREAMING = status_pb2.CAMERA_STATE_STREAMING
BACKING_OFF = status_pb2.CAMERA_STATE_BACKING_OFF
# Long enough that a good connection outlasts every phase of the test (no end of stream).
_SAMPLE_SECONDS = 15


class _FlakySource(http.server.ThreadingHTTPServer):
    behaviour = "good"
    stream_bytes = b""


class _Handler(http.server.BaseHTTPRequestHandler):
    """A live stream paced in real time, whose behaviour the test switches mid-connection."""

    server: _FlakySource

    def do_GET(self) -> None:
        body = self.server.stream_bytes
        chunk = len(body) // (_SAMPLE_SECONDS * 10)
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        offset = 0
        deadline = time.monotonic() + 2 * _SAMPLE_SECONDS
        with contextlib.suppress(OSError):  # the decoder hung up
            while offset < len(body) and time.monotonic() < deadline:
                behaviour = self.server.behaviour
                if behaviour == "good":
                    self.wfile.write(body[offset : offset + chunk])
                    offset += chunk
                elif behaviour == "garbage":
                    self.wfile.write(os.urandom(chunk))
                self.wfile.flush()  # "stall": nothing more on an open connection
                time.sleep(0.1)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def flaky_source(tmp_path: Path) -> Iterator[_FlakySource]:
    server = _FlakySource(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    sample = encode_sample(tmp_path / "live.ts", "libx264", seconds=_SAMPLE_SECONDS, fmt="mpegts",
                           size=(160, 120))  # fmt: skip
    server.stream_bytes = sample.read_bytes()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.behaviour = "good"  # releases stalled handlers
        server.shutdown()
        server.server_close()


@pytest.fixture
async def decoder(postgres_dsn: str, tmp_path: Path) -> AsyncIterator[Decoder]:
    settings = DecoderSettings(
        source_keys=f"k1:{new_key()}",
        ring_prefix=f"t{uuid.uuid4().hex[:8]}-",  # rings are host-wide objects
        ring_slots=4,
        connect_timeout_seconds=3.0,
        read_timeout_seconds=1.5,
        stall_timeout_seconds=3.0,
        backoff_initial_seconds=0.2,
        backoff_max_seconds=1.0,
    )
    host, channel = await start_decoder(settings, postgres_dsn)
    try:
        yield Decoder(host, camera_service_pb2_grpc.CameraServiceStub(channel), settings,
                      postgres_dsn)  # fmt: skip
    finally:
        await channel.close()
        await host.stop()


async def _watch(
    stub: camera_service_pb2_grpc.CameraServiceStub, seen: list[tuple[str, int, str]]
) -> None:
    """Record (camera, state, last error) of every status WatchCameraStatus reports."""
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        async for reply in stub.WatchCameraStatus(camera_service_pb2.WatchCameraStatusRequest()):
            camera = reply.status.name.split("/")[1]
            seen.append((camera, reply.status.state, reply.status.last_error))


async def _decoded(decoder: Decoder, camera_id: str) -> int:
    return (await decoder.status(camera_id)).frames_decoded


async def _trouble(decoder: Decoder, source: _FlakySource, behaviour: str) -> tuple[str, float]:
    """Switch the source mid-stream, wait until the flaky camera is backing off (a transient
    failure: it keeps reconnecting), then heal the source and wait until the camera streams
    again; (the error it reported, seconds from healing to streaming)."""
    source.behaviour = behaviour
    troubled = await decoder.wait_for("flaky", lambda s: s.state == BACKING_OFF, within=20.0)
    source.behaviour = "good"
    healed_at = time.monotonic()
    before = troubled.frames_decoded
    await decoder.wait_for("flaky", lambda s: s.state == STREAMING and s.frames_decoded > before,
                           within=20.0)  # fmt: skip
    return troubled.last_error, time.monotonic() - healed_at


async def test_a_stalling_or_garbage_source_fails_alone_and_recovers(
    decoder: Decoder, flaky_source: _FlakySource
) -> None:
    seen: list[tuple[str, int, str]] = []
    watcher = asyncio.create_task(_watch(decoder.stub, seen))
    try:
        await decoder.create("steady", "sim://road?seed=1&width=320&height=240&fps=15",
                             enabled=True)  # fmt: skip
        port = flaky_source.server_address[1]
        await decoder.create("flaky", f"http://127.0.0.1:{port}/live.ts", enabled=True)
        await decoder.wait_for("steady", streaming)
        await decoder.wait_for("flaky", streaming)
        steady_before = await _decoded(decoder, "steady")

        stall_error, stall_recovery_s = await _trouble(decoder, flaky_source, "stall")
        garbage_error, garbage_recovery_s = await _trouble(decoder, flaky_source, "garbage")

        # Both failures reached watchers, with their errors.
        flaky = {(state, error) for camera, state, error in seen if camera == "flaky"}
        assert {(BACKING_OFF, stall_error), (BACKING_OFF, garbage_error)} <= flaky
        # The other camera never left STREAMING once it got there.
        steady = [state for camera, state, _ in seen if camera == "steady"]
        assert set(steady[steady.index(STREAMING) :]) == {STREAMING}
        assert await _decoded(decoder, "steady") > steady_before + 30  # kept decoding
        reconnects = metric_value(decoder.host, "decoder_reconnects_total", camera="flaky")
        assert reconnects >= 1
        assert "stalled" in stall_error or "timed out" in stall_error
        assert "end of stream" not in garbage_error
        print(f"\nflaky camera: stall -> '{stall_error}', streaming again "
              f"{stall_recovery_s:.2f} s after the source healed; garbage -> "
              f"'{garbage_error}', streaming again {garbage_recovery_s:.2f} s after; "
              f"{reconnects:.0f} reconnects; the other camera never left STREAMING")  # fmt: skip
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
