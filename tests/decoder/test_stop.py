"""Stopping a camera whose source hangs: a server that accepts and never answers must not
hold DeleteCamera (or the worker thread, or the ring) for the length of a timeout."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from its.camera.v1 import camera_service_pb2
from its.camera.v1 import camera_status_pb2 as status_pb2
from its_camera_ai import shm
from its_camera_ai.common import DecoderSettings
from tests.decoder.conftest import Decoder, streaming

CONNECTING = status_pb2.CAMERA_STATE_CONNECTING
# Far longer than a prompt stop may take: a stop that waits for the timeout fails the test.
LONG_TIMEOUT = 30.0
PROMPT = 1.5


@pytest.fixture
def decoder_settings(decoder_settings: DecoderSettings) -> DecoderSettings:
    return decoder_settings.model_copy(
        update={"connect_timeout_seconds": LONG_TIMEOUT, "read_timeout_seconds": LONG_TIMEOUT}
    )


class SilentAfterFirst:
    """A TCP server on loopback: the first ``serve`` connections get ``payload`` (an HTTP
    response), every later one is accepted and left hanging without a byte."""

    def __init__(self, payload: bytes, serve: int) -> None:
        self._payload = payload
        self._serve = serve
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted > self._serve:
                self._held.append(connection)
                continue
            with connection:
                connection.recv(65536)
                connection.sendall(self._payload)

    def close(self) -> None:
        self._listener.close()
        for connection in self._held:
            connection.close()
        self._thread.join(5)


def http_response(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


@pytest.fixture
def silent() -> Iterator[SilentAfterFirst]:
    server = SilentAfterFirst(b"", serve=0)
    try:
        yield server
    finally:
        server.close()


def worker_threads(camera_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"decoder-{camera_id}"]


async def delete_promptly(decoder: Decoder, camera_id: str) -> None:
    started = time.monotonic()
    await decoder.stub.DeleteCamera(
        camera_service_pb2.DeleteCameraRequest(name=f"cameras/{camera_id}")
    )
    took = time.monotonic() - started
    assert took < PROMPT, f"DeleteCamera took {took:.1f} s"
    assert not worker_threads(camera_id), "the worker thread outlived DeleteCamera"


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
async def test_deleting_a_camera_stuck_connecting_is_prompt(
    decoder: Decoder, silent: SilentAfterFirst, scheme: str
) -> None:
    camera_id = f"mute-{scheme}"
    await decoder.create(camera_id, f"{scheme}://127.0.0.1:{silent.port}/x", enabled=True)
    await decoder.wait_for(camera_id, lambda s: s.state == CONNECTING)
    # Let the worker get well into the blocking open (connected, waiting for a reply).
    deadline = time.monotonic() + 5
    while silent.accepted < 1:
        assert time.monotonic() < deadline, "the decoder never connected"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    await delete_promptly(decoder, camera_id)


async def test_deleting_a_camera_reconnecting_to_a_silent_server_unlinks_its_ring(
    decoder: Decoder, samples: Path
) -> None:
    server = SilentAfterFirst(http_response((samples / "h264.ts").read_bytes()), serve=1)
    try:
        await decoder.create("fading", f"http://127.0.0.1:{server.port}/live.ts", enabled=True)
        status = await decoder.wait_for("fading", streaming)
        ring = status.ring_name
        # The 2 s clip ends, the reconnect hangs: CONNECTING with the ring still held.
        await decoder.wait_for("fading", lambda s: s.state == CONNECTING and s.reconnects >= 1)
        assert ring in {info.name for info in shm.list_rings()}
        await asyncio.sleep(0.3)
        await delete_promptly(decoder, "fading")
        assert ring not in {info.name for info in shm.list_rings()}
    finally:
        server.close()
