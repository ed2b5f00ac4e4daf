"""``its-camera-ai up`` end to end: the real command as a subprocess, four real service
processes, through the public gRPC API with the development token.

Counts against ground truth: the sample camera is the simulator's street, deterministic by
its URI, so ``sample_scene()`` stepped to the decoder's frame count gives every crossing
that happened. The counts come from the shipped detector (held-out mAP 0.741, not truth
boxes) running live on a shared CPU, so exact equality is not what it can honestly promise:
the test asserts that each line's count lies between the truth crossings that are surely
processed (more than 5 s old, after the first 2 s while inference attaches) and every
crossing so far, each give or take ``max(2, 15 %)``. The sample scene raises no incident,
so a second camera gets a wrong-way driver's detections streamed into the analytics process
(as inference would send them), and its incident must arrive on ``StreamEvents`` from the
query process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from its.camera.v1 import camera_service_pb2
from its.common.v1 import time_range_pb2
from its.query.v1 import event_pb2, query_service_pb2
from its_camera_ai.up import SAMPLE_CAMERA, sample_camera, sample_scene
from its_camera_ai_client import UnauthenticatedError, connect_async
from tests.analytics import synth
from tests.analytics.test_service_support import camera_proto, recent_start_ns, stream, to_batches
from tests.up.processes import Proc, children_of, free_port_block

START_WITHIN_S = 150.0
STOP_WITHIN_S = 60.0
# Scene time the sample runs before its counts are read.
COUNTED_SCENE_S = 25.0
SAMPLE_FPS = 10
WRONG_WAY_CAMERA = "wrong-way"
MOTOR = ("car", "truck", "bus", "motorcycle")
SERVICE_FAMILY = {
    "decoder": "decoder_",
    "analytics": "analytics_",
    "inference": "inference_",
    "query": "query_",
}


class Up:
    """``up --no-view`` as a child process, its output in a file."""

    def __init__(self, data_dir: Path, cwd: Path, environment: dict[str, str], *args: str):
        self.data_dir = data_dir
        self.base_port = free_port_block()
        self.output = cwd / "up.out"
        command = [sys.executable, "-m", "its_camera_ai", "up", "--no-view"]
        command += ["--data-dir", str(data_dir), "--base-port", str(self.base_port), *args]
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=environment, stdout=out, stderr=subprocess.STDOUT
            )

    def text(self) -> str:
        return self.output.read_text()

    def wait_for(self, pattern: str, within: float) -> re.Match[str]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if (found := re.search(pattern, self.text())) is not None:
                return found
            assert self.process.poll() is None, f"up exited:\n{self.text()}"
            time.sleep(0.25)
        raise AssertionError(f"no {pattern!r} within {within} s:\n{self.text()}")

    @property
    def info(self) -> dict[str, object]:
        document: dict[str, object] = json.loads((self.data_dir / "up.json").read_text())
        return document

    def target(self, kind: str, service: str) -> str:
        section = self.info[kind]
        assert isinstance(section, dict)
        return str(section[service])

    def children(self) -> dict[str, Proc]:
        """The service processes by unit name."""
        found = {}
        for child in children_of(self.process.pid):
            if "serve" in child.command:
                found[child.command[child.command.index("serve") + 1]] = child
        return found

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(STOP_WITHIN_S)

    def kill(self) -> None:
        if self.process.poll() is None:
            for child in self.children().values():
                child.kill()
            self.process.kill()
            self.process.wait()


def _environment(**settings: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("ITS_")}
    return {**inherited, "ITS_GRPC__DRAIN_SECONDS": "2", **settings}


@pytest.fixture
def up_factory() -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for instance in started:
        instance.kill()


def _metrics(target: str) -> str:
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as reply:
        text: str = reply.read().decode()
        return text


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(labels)}\}})? (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _frames_rendered(up: Up) -> int:
    text = _metrics(up.target("http", "decoder"))
    labels = f'camera="{SAMPLE_CAMERA}"'
    decoded = _metric(text, "decoder_frames_decoded_total", labels)
    return int(decoded + _metric(text, "decoder_frames_dropped_total", labels))


async def _line_counts(target: str, token: str) -> dict[str, int]:
    now = int(time.time())
    window = time_range_pb2.TimeRange(
        start_time=timestamp_pb2.Timestamp(seconds=now - 3600),
        end_time=timestamp_pb2.Timestamp(seconds=now + 60),
    )
    counts = {}
    async with connect_async(target, token=token) as client:
        for line in sample_camera().lines:
            reply = await client.query.GetTrafficCounts(
                query_service_pb2.GetTrafficCountsRequest(
                    camera=f"cameras/{SAMPLE_CAMERA}",
                    time_range=window,
                    bin_size=duration_pb2.Duration(seconds=60),
                    line_id=line.id,
                )
            )
            counts[line.id] = sum(b.volume for b in reply.bins)
    return counts


def _truth(frames: int) -> tuple[dict[str, int], dict[str, int]]:
    """Per line: motor-vehicle crossings surely processed by now, and all so far."""
    scene = sample_scene()
    for _ in range(frames):
        scene.step()
    now_s = frames / SAMPLE_FPS
    sure: dict[str, int] = {}
    every: dict[str, int] = {}
    for crossing in scene.crossings:
        if crossing.cls not in MOTOR or crossing.time_s > now_s:
            continue
        line = crossing.line.lower()
        every[line] = every.get(line, 0) + 1
        if 2.0 <= crossing.time_s <= now_s - 5.0:
            sure[line] = sure.get(line, 0) + 1
    return sure, every


async def _wrong_way_event_on_the_stream(up: Up, token: str) -> query_service_pb2.Event:
    """A wrong-way driver streamed into analytics (as inference would) on a camera of its
    own; the incident it raises, as StreamEvents delivers it to a client with the token."""
    camera = camera_proto(synth.road_scene())
    camera.source_uri, camera.enabled = "sim://road", False  # its detections come from here
    frames = synth.wrong_way_traffic(16.0, recent_start_ns(16.0))
    async with connect_async(up.target("grpc", "decoder"), token=token) as client:
        await client.cameras.CreateCamera(
            camera_service_pb2.CreateCameraRequest(camera=camera, camera_id=WRONG_WAY_CAMERA)
        )
    async with connect_async(up.target("grpc", "query"), token=token) as client:
        events = client.query.StreamEvents(
            query_service_pb2.StreamEventsRequest(camera=f"cameras/{WRONG_WAY_CAMERA}")
        )
        async with grpc.aio.insecure_channel(up.target("grpc", "analytics")) as analytics:
            # Analytics learns the camera from the decoder's watch: probe with one frame.
            for attempt in range(100):
                probe = to_batches(frames[:1], f"probe-{attempt}", camera=WRONG_WAY_CAMERA)
                if (await stream(analytics, probe))[0].accepted_frames == 1:
                    break
                await asyncio.sleep(0.2)
            await stream(analytics, to_batches(frames[1:], "e2e-0", camera=WRONG_WAY_CAMERA))
        async with asyncio.timeout(30):
            async for message in events:
                if message.event.type == event_pb2.EVENT_TYPE_WRONG_WAY:
                    events.cancel()
                    return message.event
    raise AssertionError("StreamEvents ended without the wrong-way event")


async def _refused_without_the_right_token(target: str) -> None:
    async with connect_async(target, token="not-a-jwt") as client:
        with pytest.raises(UnauthenticatedError):
            await client.query.ListEvents(query_service_pb2.ListEventsRequest(parent="cameras/-"))


def _check_counts(up: Up, token: str) -> None:
    deadline = time.monotonic() + COUNTED_SCENE_S + 60
    while _frames_rendered(up) < COUNTED_SCENE_S * SAMPLE_FPS:
        assert time.monotonic() < deadline, "the sample camera does not deliver frames"
        time.sleep(1)
    frames = _frames_rendered(up)
    counts = asyncio.run(_line_counts(up.target("grpc", "query"), token))
    sure, every = _truth(frames)
    print(f"\nafter {frames} frames: counted {counts}, truth sure {sure}, all {every}")
    assert every, "the sample scene had no crossing to count"
    for line, total in every.items():
        slack = max(2, round(0.15 * total))
        assert sure.get(line, 0) - slack <= counts[line] <= total + slack, (line, counts, every)


async def _live_stats(target: str, token: str) -> float:
    """The sample's analysed frames per second, as the view shows it: live figures reach
    query from analytics through up's private Redis."""
    async with connect_async(target, token=token) as client:
        reply = await client.query.GetCameraStats(
            query_service_pb2.GetCameraStatsRequest(name=f"cameras/{SAMPLE_CAMERA}/stats")
        )
    return float(reply.stats.processed_fps)


def _check_metrics(up: Up) -> None:
    for service, family in SERVICE_FAMILY.items():
        text = _metrics(up.target("http", service))
        assert re.search(rf"^{family}\w+", text, re.MULTILINE), f"no {family}* on {service}"
    inference = _metrics(up.target("http", "inference"))
    assert _metric(inference, "latency_capture_to_detections_seconds_count") > 0


def _check_restart(up: Up) -> None:
    killed = up.children()["inference"]
    killed.kill()
    up.wait_for(r"inference \(pid \d+\) ended with signal SIGKILL .*; restart 1 in", 10)
    deadline = time.monotonic() + 90
    while True:
        assert time.monotonic() < deadline, f"inference never came back:\n{up.text()}"
        restarted = up.children().get("inference")
        if restarted is not None and restarted.pid != killed.pid:
            try:
                text = _metrics(up.target("http", "inference"))
            except OSError:
                text = ""
            if _metric(text, "inference_frames_total", 'source="ring"') > 0:
                return
        time.sleep(1)


def _check_clean_stop(up: Up, children: dict[str, Proc]) -> None:
    prefix = str(up.info["ring_prefix"])
    assert up.stop() == 0, up.text()
    # Reverse start order, each stopped by its SIGTERM.
    order = re.findall(r"^(\w+) stopped \(exit code 0\)$", up.text(), re.MULTILINE)
    assert order == ["query", "inference", "analytics", "decoder"], up.text()
    for child in children.values():
        assert not child.running(), f"{child.command} outlived up"
    assert not [entry for entry in os.listdir("/dev/shm") if prefix in entry]
    assert not (up.data_dir / "up.json").exists()


@pytest.mark.timeout(400)
def test_up_runs_counts_restarts_and_stops_cleanly(
    postgres_dsn: str, tmp_path: Path, up_factory: list[Up]
) -> None:
    environment = _environment(ITS_DATABASE__DSN=postgres_dsn)
    up = Up(tmp_path / "data", tmp_path, environment)
    up_factory.append(up)
    up.wait_for(r"ready in [\d.]+ s", START_WITHIN_S)
    assert f"sample camera '{SAMPLE_CAMERA}': created" in up.text()
    token_file = up.data_dir / "token"
    assert f"export ITS_TOKEN=$(cat {token_file})" in up.text()
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert set(up.children()) == set(SERVICE_FAMILY)

    asyncio.run(_refused_without_the_right_token(up.target("grpc", "query")))
    _check_counts(up, token)
    assert "redis: private, on" in up.text()
    assert asyncio.run(_live_stats(up.target("grpc", "query"), token)) > 0
    # The ring crossed processes: the decoder's ring, read by inference (its semaphore).
    prefix = str(up.info["ring_prefix"])
    assert f"sem.its-ring-{prefix}{SAMPLE_CAMERA}.r0" in os.listdir("/dev/shm")
    event = asyncio.run(_wrong_way_event_on_the_stream(up, token))
    assert event.name.startswith(f"cameras/{WRONG_WAY_CAMERA}/events/")
    _check_metrics(up)
    _check_restart(up)
    _check_clean_stop(up, up.children())


@pytest.mark.timeout(300)
def test_up_on_the_embedded_database_owns_it_and_stops_it(
    embedded_data_dir: Path, tmp_path: Path, up_factory: list[Up]
) -> None:
    # Outside pytest's 0700 tree: the embedded server runs as another user.
    data_dir = embedded_data_dir.parent / "up"
    up = Up(data_dir, tmp_path, _environment(), "--no-sample")
    up_factory.append(up)
    up.wait_for(r"ready in [\d.]+ s", START_WITHIN_S)
    assert f"embedded PostgreSQL in {data_dir / 'postgres'}" in up.text()
    postmasters = [p for p in children_of(up.process.pid) if p.command[0].endswith("postgres")]
    assert len(postmasters) == 1, "up owns the one embedded server"
    # Every service reaches it: query reads events, the decoder lists cameras.
    token = (data_dir / "token").read_text().strip()

    async def read() -> None:
        async with connect_async(up.target("grpc", "query"), token=token) as client:
            await client.query.ListEvents(query_service_pb2.ListEventsRequest(parent="cameras/-"))
        async with connect_async(up.target("grpc", "decoder"), token=token) as client:
            listed = await client.cameras.ListCameras(camera_service_pb2.ListCamerasRequest())
            assert not listed.cameras

    asyncio.run(read())
    children = up.children()
    assert up.stop() == 0, up.text()
    assert not postmasters[0].running(), "the embedded server outlived up"
    assert not [c.command for c in children.values() if c.running()]


def test_up_refuses_a_port_block_that_does_not_fit(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "its_camera_ai", "up", "--no-view", "--base-port", "65530"],
        check=False,
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--base-port: 65530 leaves no room for 8 ports" in result.stderr
