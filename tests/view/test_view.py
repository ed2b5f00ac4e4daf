"""The live view against real hosts on loopback (fresh databases): the screen built from
what it fetched while a simulated camera streams through decoder, inference, analytics and
query; ``run_view`` in its own process, found through an up.json, stopped by SIGINT."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import pty
import re
import secrets
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from its.camera.v1 import camera_pb2, camera_service_pb2
from its.common.v1 import geometry_pb2
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import (
    AnalyticsServiceSettings,
    DecoderSettings,
    InferenceSettings,
    ServiceHost,
    Settings,
)
from its_camera_ai.decoder.server import decoder_unit
from its_camera_ai.inference.server import inference_unit
from its_camera_ai.query.server import UNIT as QUERY_UNIT
from its_camera_ai.sim import Scene, SceneConfig
from its_camera_ai.view import ViewFetcher, ViewSnapshot, render_view, view_main
from its_camera_ai_client import AsyncClient, connect_async
from tests.conftest import REDIS_URL, free_port
from tests.security.conftest import SecureHost

SIM = {"seed": 3, "fps": 10, "camera": {"width": 320, "height": 240}}
SOURCE = "sim://road?seed=3&fps=10&width=320&height=240"
COUNTED_WITHIN_S = 60.0


@pytest.fixture
async def pipeline(postgres_dsn: str, tmp_path: Path) -> AsyncIterator[ServiceHost]:
    """Every unit in one host (``serve all``), in development (anonymous callers allowed)."""
    settings = Settings(
        grpc={"host": "127.0.0.1", "port": 0, "drain_seconds": 0.5},
        http={"host": "127.0.0.1", "port": 0},
        database={"dsn": postgres_dsn},
        redis={"url": REDIS_URL},  # where analytics publishes each camera's live stats
        decoder=DecoderSettings(
            source_keys=f"k1:{base64.b64encode(secrets.token_bytes(32)).decode()}",
            ring_prefix=f"v{uuid.uuid4().hex[:8]}-",
        ),
        analytics=AnalyticsServiceSettings(spool_dir=tmp_path / "spool"),
    )
    inference = inference_unit(InferenceSettings(max_queue_delay_ms=2.0))
    units = [decoder_unit(), analytics_unit(), inference, QUERY_UNIT]
    host = ServiceHost(settings, units)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


def _sim_counting_line() -> camera_pb2.CountingLine:
    """The simulator's own counting line across the road, in image pixels."""
    line = Scene(SceneConfig.model_validate(SIM)).summary()["counting_lines"][0]
    (ax, ay), (bx, by) = line["image_a"], line["image_b"]
    return camera_pb2.CountingLine(
        id="main",
        segment=geometry_pb2.LineSegment(
            start=geometry_pb2.Point(x=ax, y=ay), end=geometry_pb2.Point(x=bx, y=by)
        ),
    )


async def _create(client: AsyncClient, camera_id: str, camera: camera_pb2.Camera) -> None:
    request = camera_service_pb2.CreateCameraRequest(camera_id=camera_id, camera=camera)
    await client.cameras.CreateCamera(request)


async def _until_counted(fetcher: ViewFetcher) -> ViewSnapshot:
    deadline = time.monotonic() + COUNTED_WITHIN_S
    while True:
        snapshot = await fetcher.fetch()
        if sum(line.total for line in snapshot.lines) > 0:
            return snapshot
        assert time.monotonic() < deadline, f"nothing counted within {COUNTED_WITHIN_S} s"
        await asyncio.sleep(1.0)


async def test_the_screen_shows_cameras_states_and_counts_per_line(pipeline: ServiceHost) -> None:
    target = f"127.0.0.1:{pipeline.grpc_port}"
    async with connect_async(target) as client:
        await _create(client, "cam-live", camera_pb2.Camera(
            source_uri=SOURCE, enabled=True, lines=[_sim_counting_line()]))  # fmt: skip
        await _create(client, "cam-off", camera_pb2.Camera(source_uri=SOURCE, enabled=False))
        fetcher = ViewFetcher(
            client, client, source=target, http_targets={"all": f"127.0.0.1:{pipeline.http_port}"}
        )
        await _until_counted(fetcher)
        await asyncio.sleep(1.0)
        snapshot = await fetcher.fetch()  # a second scrape of /metrics: rates over a window

    assert snapshot.problems == ()
    console = Console(record=True, width=160, color_system=None)
    console.print(render_view(snapshot))
    screen = re.sub("[│┃]", " ", console.export_text())  # cells apart by spaces only

    live = next(camera for camera in snapshot.cameras if camera.camera_id == "cam-live")
    assert live.processed_fps is not None
    assert live.processed_fps > 0
    row = rf"^\s*cam-live\s+streaming\s+\d+\.\d\s+{live.processed_fps:.1f}\s+{live.active_tracks}\s"
    assert re.search(row, screen, re.M), screen
    assert re.search(r"^\s*cam-off\s+stopped\s", screen, re.M), screen
    # One row per direction of the line, each with the count the API gave.
    lines = {line.direction: line for line in snapshot.lines}
    assert set(lines) == {"left-to-right", "right-to-left"}
    assert sum(line.total for line in lines.values()) > 0
    for direction, line in lines.items():
        classes = " ".join(f"{name}={count}" for name, count in sorted(line.by_class.items()))
        row = rf"^\s*cam-live\s+main\s+{direction}\s+{line.total}\s+{re.escape(classes or '-')}"
        assert re.search(row, screen, re.M), screen
    # The stages' latency from /metrics: the model ran on every frame analysed.
    model = next(stage for stage in snapshot.stages if stage.stage == "model")
    assert model.observations > 0
    assert model.p50_ms is not None
    assert re.search(r"^\s*model\s+\d+\.\d\d\s+\d+\.\d\d\s+\d+", screen, re.M), screen
    assert snapshot.detections_per_second is not None
    assert snapshot.detections_per_second > 0
    assert "detections/s " in screen


def _write_up_dir(directory: Path, served: SecureHost) -> None:
    """What `its-camera-ai up` leaves for clients, here naming one host for every service."""
    directory.mkdir()
    token_file = directory / "token"
    token_file.write_text(served.token("viewer") + "\n")
    grpc_target, http_target = served.target, f"127.0.0.1:{served.host.http_port}"
    services = ("decoder", "analytics", "inference", "query")
    up = {
        "grpc": dict.fromkeys(services, grpc_target),
        "http": {"decoder": http_target},
        "token_file": str(token_file),
    }
    (directory / "up.json").write_text(json.dumps(up))


async def _read_until(stream: asyncio.StreamReader, wanted: list[str], within: float) -> str:
    seen = ""
    deadline = time.monotonic() + within
    while not all(text in seen for text in wanted):
        left = deadline - time.monotonic()
        assert left > 0, f"{wanted} not shown within {within} s:\n{seen[-3000:]}"
        chunk = await asyncio.wait_for(stream.read(65536), left)
        assert chunk, f"the view ended early:\n{seen[-3000:]}"
        seen += chunk.decode(errors="replace")
    return seen


async def test_run_view_in_a_process_follows_up_json_and_stops_on_sigint(
    secured_host: SecureHost, tmp_path: Path
) -> None:
    async with connect_async(secured_host.target, token=secured_host.token("operator")) as client:
        await _create(client, "cam-sub", camera_pb2.Camera(source_uri=SOURCE, enabled=False))
    up_dir = tmp_path / "up"
    _write_up_dir(up_dir, secured_host)
    # A terminal as far as rich can tell (cursor movements, refresh in place), no colours.
    env = {**os.environ, "TTY_COMPATIBLE": "1", "TERM": "xterm", "COLUMNS": "150", "NO_COLOR": "1"}
    code = f"import sys, its_camera_ai.view as v; sys.exit(v.run_view({str(up_dir)!r}))"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        # Seen with up.json's viewer token: the host refuses anonymous callers.
        await _read_until(process.stdout, ["cam-sub", "stopped", "Latency per stage"], 30.0)
        await asyncio.sleep(1.5)  # a few refreshes in place
        process.send_signal(signal.SIGINT)
        rest, errors = await asyncio.wait_for(process.communicate(), 15.0)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, errors.decode()
    assert errors == b""
    assert rest.endswith(b"\x1b[?25h") or b"\x1b[?25h" in rest[-64:]  # the cursor shown again


def test_view_names_a_missing_up_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert view_main(["--up-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"its-camera-ai view: {tmp_path / 'up.json'}: not found (is `its-camera-ai up` running?)\n"
    )
    (tmp_path / "up.json").write_text(json.dumps({"grpc": {"decoder": "127.0.0.1:1"}}))
    assert view_main(["--up-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.endswith("up.json: grpc.query: expected HOST:PORT, got None\n")


def test_q_quits_the_view_in_a_terminal_even_with_nothing_to_reach() -> None:
    """In a real pseudo-terminal: the view shows why it cannot fetch (API and /metrics),
    keeps running, and ``q`` (no Enter) ends it with 0 and the terminal's modes restored."""
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 150, 0, 0))
    modes = termios.tcgetattr(terminal)
    nobody = f"127.0.0.1:{free_port()}"
    view = [sys.executable, "-m", "its_camera_ai", "view", "--target", nobody]
    view += ["--metrics", nobody, "--refresh", "0.5"]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    process = subprocess.Popen(
        view, stdin=terminal, stdout=terminal, stderr=terminal, env={**env, "TERM": "xterm"}
    )
    try:
        seen = b""
        deadline = time.monotonic() + 30.0
        wanted = (b"CameraService.ListCameras: UNAVAILABLE", f"/metrics at {nobody}".encode())
        while not all(text in seen for text in wanted):
            assert time.monotonic() < deadline, seen.decode(errors="replace")[-2000:]
            if select.select([master], [], [], 1.0)[0]:
                seen += os.read(master, 65536)
        os.write(master, b"q")
        assert process.wait(timeout=15) == 0
        assert termios.tcgetattr(terminal) == modes
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
        os.close(terminal)
