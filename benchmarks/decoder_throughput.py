"""Decoder throughput into the ring, and how many cameras one core carries.

    .venv/bin/python benchmarks/decoder_throughput.py [--seconds 6] [--cpu 1]

Measures the real ingest path (``CameraWorker``: demux, H.264 decode, swscale to RGB24,
copy into the shared-memory ring, trace span, metrics) on looping files of simulator
footage, with every thread of this process pinned to one CPU:

1. throughput: frames/s one core decodes into the ring, 720p and 1080p, unpaced;
2. threads or processes: two unpaced 720p cameras as two threads of one process and as
   two processes, on two cores (when the machine has them);
3. capacity: the most 720p30 cameras, paced like live cameras, one core carries for the
   whole run with no frame dropped and each at >= 29.5 frames/s.

Prints a markdown table (for docs/benchmarks.md) and a JSON line. Samples are encoded once
into --samples (default /tmp/its-decoder-bench) and reused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import av
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from its_camera_ai import shm
from its_camera_ai.common import DecoderSettings
from its_camera_ai.decoder import (
    CameraMetrics,
    CameraWorker,
    DecoderMetrics,
    DecodeSpec,
    StatusBoard,
    parse_source_uri,
)
from its_camera_ai.sim import CameraConfig, Scene, SceneConfig

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
# Seconds of footage per sample (rendering 1080p costs ~0.2 s a frame); files loop.
SAMPLE_SECONDS = {"720p": 3.0, "1080p": 2.0}


def make_sample(path: Path, width: int, height: int, seconds: float) -> Path:
    """Simulator traffic at 30 frames/s, encoded the way IP cameras do: H.264 with a
    1 s GOP and no B-frames."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = Scene(SceneConfig(seed=11, warmup_s=3, camera=CameraConfig(width=width, height=height)))
    partial = path.with_suffix(".part.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "x264-params": "keyint=30:bframes=0"}
        for rgb, _ in scene.frames(round(seconds * 30)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.rename(path)
    return path


@dataclass
class Run:
    fps: list[float]
    dropped: int
    # Decode latency (packet read to frame committed), milliseconds.
    p50_ms: float
    p99_ms: float


class _Recorder(CameraMetrics):
    """A camera's metrics that also keep every latency observed while ``recording``."""

    recording = False
    latencies: ClassVar[list[float]] = []

    def __init__(self, inner: CameraMetrics) -> None:
        self._inner = inner

    def observe_latency(self, seconds: float) -> None:
        self._inner.observe_latency(seconds)
        if _Recorder.recording:
            _Recorder.latencies.append(seconds)

    def frame_span(self) -> tuple[trace.Span, shm.TraceContext]:
        return self._inner.frame_span()


async def run_cameras(sample: Path, count: int, seconds: float, *, paced: bool) -> Run:
    settings = DecoderSettings(
        file_roots=(sample.parent,),
        pace_files=paced,
        # Tight, so an overloaded core shows as drops within a short run.
        max_lag_seconds=0.25,
        ring_prefix=f"b{uuid.uuid4().hex[:6]}-",
    )
    board = StatusBoard(asyncio.get_running_loop())
    metrics = DecoderMetrics(CollectorRegistry(), board)
    source = parse_source_uri(f"file://{sample}", file_roots=settings.file_roots)
    workers = []
    for index in range(count):
        camera = f"cam{index}"
        spec = DecodeSpec(camera, source, loop=True, target_fps=0, resolution=None)
        workers.append(
            CameraWorker(
                spec,
                settings,
                ring_name=settings.ring_prefix + camera,
                tracker=board.track(camera),
                metrics=_Recorder(metrics.camera(camera)),
            )
        )
    for worker in workers:
        worker.start()
    trackers = board.trackers()
    try:
        await asyncio.sleep(1.0)  # open, probe, first keyframe
        start = [(t.frames_decoded, t.frames_dropped) for t in trackers]
        _Recorder.recording = True
        started = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - started
        _Recorder.recording = False
        end = [(t.frames_decoded, t.frames_dropped) for t in trackers]
    finally:
        for worker in workers:
            worker.stop()
        for worker in workers:
            await asyncio.to_thread(worker.join)
    fps = [(e[0] - s[0]) / elapsed for s, e in zip(start, end, strict=True)]
    dropped = sum(e[1] - s[1] for s, e in zip(start, end, strict=True))
    latencies = sorted(_Recorder.latencies)
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return Run(fps, dropped, p50, p99)


Job = tuple[str, int, float, bool, frozenset[int]]


def _job(job: Job) -> Run:
    """One measurement in a fresh process, its threads pinned to ``cpus``."""
    sample, count, seconds, paced, cpus = job
    os.sched_setaffinity(0, cpus)
    return asyncio.run(run_cameras(Path(sample), count, seconds, paced=paced))


def measure(*jobs: Job) -> list[Run]:
    """Run jobs side by side, one process each (spawned: no inherited threads or rings)."""
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        return pool.map(_job, jobs)


def capacity(sample: Path, seconds: float, cpu: int, estimate: int) -> tuple[int, Run | None]:
    """Most paced 720p30 cameras on one core with no drop and every camera at >= 29.5."""
    for count in range(estimate + 1, 0, -1):
        (run,) = measure((str(sample), count, seconds, True, frozenset({cpu})))
        print(
            f"  {count} paced cameras: slowest {min(run.fps):.1f} frames/s, {run.dropped} dropped"
        )
        if run.dropped == 0 and min(run.fps) >= 29.5:
            return count, run
    return 0, None


def _spread(values: list[float]) -> str:
    """Median, and the range when repeated: the machine is shared, so runs disagree."""
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def _latency(runs: list[Run]) -> str:
    p50 = statistics.median(r.p50_ms for r in runs)
    p99 = statistics.median(r.p99_ms for r in runs)
    return f"{p50:.1f} / {p99:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)))
    parser.add_argument("--samples", type=Path, default=Path("/tmp/its-decoder-bench"))
    args = parser.parse_args()
    samples = {
        name: str(make_sample(args.samples / f"{name}.mp4", *size, SAMPLE_SECONDS[name]))
        for name, size in SIZES.items()
    }
    one_core = frozenset({args.cpu})
    repeat = range(args.repeat)
    results: dict[str, object] = {"cpus": os.cpu_count(), "pinned_cpu": args.cpu}
    rows = []

    def row(what: str, runs: list[Run], fps: list[float]) -> None:
        rows.append((what, f"{_spread(fps)} frames/s", _latency(runs)))
        results[what] = [round(f, 1) for f in fps]
        print(rows[-1])

    for name, sample in samples.items():
        runs = [measure((sample, 1, args.seconds, False, one_core))[0] for _ in repeat]
        row(f"{name}: 1 camera unpaced, 1 core", runs, [r.fps[0] for r in runs])

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        pair = frozenset(cpus[:2])
        threads = [measure((samples["720p"], 2, args.seconds, False, pair))[0] for _ in repeat]
        processes = [
            measure(*[(samples["720p"], 1, args.seconds, False, pair)] * 2) for _ in repeat
        ]
        row("720p: 2 cameras unpaced as threads, 2 cores", threads, [sum(r.fps) for r in threads])
        row(
            "720p: 2 cameras unpaced as processes, 2 cores",
            [r for runs in processes for r in runs],
            [sum(r.fps[0] for r in runs) for runs in processes],
        )

    # Cameras sharing a core: as threads they also queue for the GIL.
    dense = 4
    threads = [measure((samples["720p"], dense, args.seconds, True, one_core))[0] for _ in repeat]
    processes = [
        measure(*[(samples["720p"], 1, args.seconds, True, one_core)] * dense) for _ in repeat
    ]
    row(f"720p30: {dense} paced cameras as threads, 1 core", threads, [sum(r.fps) for r in threads])
    row(
        f"720p30: {dense} paced cameras as processes, 1 core",
        [r for runs in processes for r in runs],
        [sum(r.fps[0] for r in runs) for runs in processes],
    )

    throughput = results["720p: 1 camera unpaced, 1 core"]
    assert isinstance(throughput, list)
    cameras, sustained = capacity(
        Path(samples["720p"]), args.seconds, args.cpu, int(statistics.median(throughput) // 30)
    )
    results["cameras_720p30_per_core"] = cameras
    rows.append(
        (
            "720p30 cameras one core sustains (paced, threads, 0 dropped)",
            str(cameras),
            _latency([sustained]) if sustained else "n/a",
        )
    )

    print("\n| measurement | result | decode latency p50 / p99 |\n| --- | --- | --- |")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
