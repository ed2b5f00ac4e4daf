"""Network sources against real servers on loopback: RTSP (Debian's gst-rtsp-server, run
with the system Python), HTTP and UDP MPEG-TS; reconnects, a changed resolution after a
reconnect, timeouts on silent servers, and credentials that never leak."""

from __future__ import annotations

import asyncio
import functools
import http.server
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from its.camera.v1 import camera_status_pb2 as status_pb2
from its_camera_ai import shm
from tests.conftest import free_port
from tests.decoder.conftest import Decoder, read_frames, read_until_told, streaming

STREAMING = status_pb2.CAMERA_STATE_STREAMING
BACKING_OFF = status_pb2.CAMERA_STATE_BACKING_OFF
FAILED = status_pb2.CAMERA_STATE_FAILED

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")
PASSWORD = "s3cret-Pa55"


@functools.cache
def gstreamer_missing() -> str | None:
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "assert Gst.ElementFactory.find('x264enc'), 'x264enc'"
    )
    try:
        result = subprocess.run(
            [SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no system Python: {exc}"
    if result.returncode:
        return (
            "GStreamer RTSP server missing (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0"
            " gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly)"
        )
    return None


needs_rtsp = pytest.mark.skipif(gstreamer_missing() is not None, reason=str(gstreamer_missing()))


class RtspServer:
    """gst-rtsp-server in a child process; ``stop`` kills it hard, like a camera losing power."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self._args = args
        self._process: subprocess.Popen[str] | None = None

    def start(self, *extra: str) -> None:
        self._process = subprocess.Popen(
            [SYSTEM_PYTHON, str(RTSP_SERVER), str(self.port), *self._args, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        assert line == "ready", f"RTSP server did not start: {line} {self._process.stderr}"

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@pytest.fixture
def rtsp() -> Iterator[RtspServer]:
    server = RtspServer(free_port(), "--user", "admin", "--password", PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@needs_rtsp
async def test_rtsp_streams_reconnects_and_follows_a_new_resolution(
    decoder: Decoder,
    rtsp: RtspServer,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO)
    uri = f"rtsp://admin:{PASSWORD}@127.0.0.1:{rtsp.port}/stream"
    created = await decoder.create("gate", uri, enabled=True)
    assert PASSWORD not in created.source_uri
    status = await decoder.wait_for("gate", streaming)
    assert (status.resolution.width, status.resolution.height) == (320, 240)
    frames = await asyncio.to_thread(read_frames, status.ring_name, 10)
    sequences = [f[0] for f in frames]
    assert sequences == list(range(sequences[0], sequences[0] + 10))
    assert {(w, h) for _, w, h, _ in frames} == {(320, 240)}

    reader = shm.attach(status.ring_name)
    rtsp.stop()  # the camera goes away...
    down = await decoder.wait_for("gate", lambda s: s.state == BACKING_OFF)
    assert down.last_error
    assert PASSWORD not in down.last_error
    rtsp.start("--width", "640", "--height", "360")  # ...and comes back at another size
    up = await decoder.wait_for(
        "gate", lambda s: streaming(s) and s.resolution.width == 640, within=20
    )
    assert up.reconnects >= 1
    assert up.frames_decoded > status.frames_decoded
    # The old ring's reader is told; the new ring carries the new size.
    with pytest.raises((shm.NoWriter, shm.RingNotFound)):
        await read_until_told(reader)
    reader.close()
    frames = await asyncio.to_thread(read_frames, up.ring_name, 5)
    assert {(w, h) for _, w, h, _ in frames} == {(640, 360)}

    # Logged with the camera and the masked source; the password nowhere, not even in
    # what FFmpeg might print on stderr.
    started = [r for r in caplog.records if r.getMessage() == "camera started"]
    assert started[0].__dict__["source"] == f"rtsp://admin:***@127.0.0.1:{rtsp.port}/stream"
    assert any(
        getattr(r, "camera", None) == "gate"
        for r in caplog.records
        if "backing off" in r.getMessage()
    )
    for record in caplog.records:
        assert PASSWORD not in str(record.__dict__)
    assert PASSWORD not in "".join(capfd.readouterr())


@needs_rtsp
async def test_rtsp_over_udp_and_a_rejected_password(decoder: Decoder, rtsp: RtspServer) -> None:
    await decoder.create(
        "udp", f"rtsp://admin:{PASSWORD}@127.0.0.1:{rtsp.port}/stream?udp", enabled=True
    )
    await decoder.create(
        "wrong", f"rtsp://admin:guess1234@127.0.0.1:{rtsp.port}/stream", enabled=True
    )
    await decoder.wait_for("udp", streaming)
    wrong = await decoder.wait_for("wrong", lambda s: s.state == FAILED)
    assert "401" in wrong.last_error
    assert "guess1234" not in wrong.last_error
    assert wrong.reconnects == 0  # a rejected password is not retried


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web(samples: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(samples))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_http_stream_and_a_non_video_url(decoder: Decoder, web: str, samples: Path) -> None:
    (samples / "page.html").write_text("<html>not video</html>" * 100)
    await decoder.create("web", f"{web}/h264.ts?token=abc123", enabled=True)
    await decoder.create("page", f"{web}/page.html", enabled=True)
    status = await decoder.wait_for("web", streaming)
    assert (status.resolution.width, status.resolution.height) == (320, 240)
    # A live source that ends is reconnected to (2 s of video, then again).
    again = await decoder.wait_for("web", lambda s: s.reconnects >= 1 and s.frames_decoded > 70)
    assert "end of stream" in again.last_error
    assert "abc123" not in again.last_error
    page = await decoder.wait_for("page", lambda s: s.state == FAILED)
    assert "page.html" in page.last_error


def _send_mpegts(port: int, stop: threading.Event) -> None:
    with av.open(f"udp://127.0.0.1:{port}?pkt_size=1316", "w", format="mpegts") as output:
        stream = output.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "15"}
        index = 0
        started = time.monotonic()
        while not stop.is_set():
            rgb = np.full((240, 320, 3), index % 200, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 30)
            for packet in stream.encode(frame):
                output.mux(packet)
            index += 1
            time.sleep(max(0.0, started + index / 30 - time.monotonic()))


async def test_udp_mpegts_stream(decoder: Decoder) -> None:
    port = free_port()
    stop = threading.Event()
    sender = threading.Thread(target=_send_mpegts, args=(port, stop), daemon=True)
    sender.start()
    try:
        await decoder.create("multicast", f"udp://127.0.0.1:{port}", enabled=True)
        status = await decoder.wait_for("multicast", streaming)
        frames = await asyncio.to_thread(read_frames, status.ring_name, 10)
        assert {(w, h) for _, w, h, _ in frames} == {(320, 240)}
    finally:
        stop.set()
        sender.join()
    # The sender is gone: the silence is a timeout, then backoff.
    silent = await decoder.wait_for("multicast", lambda s: s.state == BACKING_OFF)
    assert "timed out" in silent.last_error


async def test_a_server_that_never_answers_times_out(decoder: Decoder) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts connections (in the kernel) and never says a word
        port = listener.getsockname()[1]
        started = time.monotonic()
        await decoder.create("mute", f"rtsp://127.0.0.1:{port}/x", enabled=True)
        status = await decoder.wait_for("mute", lambda s: s.state == BACKING_OFF)
        assert "timed out" in status.last_error
        assert time.monotonic() - started < decoder.settings.connect_timeout_seconds + 3
