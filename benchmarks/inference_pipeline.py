"""Inference service end to end: synthetic 720p cameras at 30 FPS, batching on vs off.

    .venv/bin/python benchmarks/inference_pipeline.py            # ~3 min
    .venv/bin/python benchmarks/inference_pipeline.py --quick    # smoke test
    .venv/bin/python benchmarks/inference_pipeline.py --precision fp32 bf16  # both, side by side
    .venv/bin/python benchmarks/inference_pipeline.py --models yolox-nano-its its-detector-v1
    .venv/bin/python benchmarks/inference_pipeline.py --torch-threads 1 2  # torch_threads
    .venv/bin/python benchmarks/inference_pipeline.py --backend torch onnxruntime
    .venv/bin/python benchmarks/inference_pipeline.py --cameras 4 --backend onnxruntime
    .venv/bin/python benchmarks/inference_pipeline.py --input-size 416x288 640x384
    .venv/bin/python benchmarks/inference_pipeline.py --score-threshold 0.3 0.1

Each camera is a ring written by a thread at 30 FPS with rendered simulator frames
(1280x720 RGB, looped), as the decoder writes them. The real inference service (in-process
host: ring feeds, dynamic batcher, the configured model on the CPU, producer) streams the
detections over gRPC to an AnalyticsService peer on loopback that records each frame's
arrival. Reported per configuration, side by side in one run:

- frames/s delivered to analytics, and the share of written frames skipped (the newest-
  frame policy drops what the model cannot keep up with, and counts it);
- latency from capture (the slot's wall-clock capture time) to the detections arriving at
  analytics, p50 and p99 over the delivered frames;
- mean model batch size.

"batching off" is max_batch_size=1 (every frame alone); "batching on" is max_batch_size=8
with a 5 ms maximum queue delay. ``--precision`` is ``inference.precision`` (bf16 needs a CPU
with bf16 instructions), ``--models`` ``inference.model`` (default: the service's default);
``--torch-threads`` ``inference.torch_threads`` (default: torch's, one per core);
``--backend`` ``inference.backend`` (default ``auto``, as the service: ONNX Runtime for
fp32, torch for bf16; ``onnxruntime``: fp32 only, so it runs with ``--precision fp32``
alone); ``--input-size`` ``inference.input_size`` (default: the
model's own), ``--score-threshold`` ``inference.score_threshold`` (default: the service's,
0.1); several values run every configuration with each. The writer
threads and the gRPC peer share the cores with torch, as the decoder and analytics do on a
real node.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import sys
import time
import uuid
from typing import Any

import numpy as np
import torch

from its_camera_ai.common import InferenceSettings
from its_camera_ai.inference.training import size_argument
from its_camera_ai.sim import Scene, SceneConfig
from its_camera_ai.testing import (
    BENCHMARK_BACKENDS,
    RingFeeder,
    engines,
    inference_host,
    recording_analytics,
)


def _frames(count: int) -> list[np.ndarray]:
    scene = Scene(SceneConfig(seed=3), size=(1280, 720))
    for _ in range(60):
        scene.step()
    return [frame for frame, _ in scene.frames(count)]


def _metric(host: Any, name: str) -> float:
    total = 0.0
    for metric in host.runtime.metrics.collect():
        if metric.name == name:
            total += sum(s.value for s in metric.samples if s.name.endswith(("_total", "_sum")))
    return total


def _count(host: Any, name: str) -> float:
    for metric in host.runtime.metrics.collect():
        if metric.name == name:
            return float(sum(s.value for s in metric.samples if s.name.endswith("_count")))
    return 0.0


STAGES = ("queue_wait", "preprocess", "model", "postprocess")


def _stage_totals(host: Any) -> dict[str, tuple[float, float]]:
    """Per stage histogram: (sum of seconds, observations)."""
    return {
        stage: (
            _metric(host, f"inference_{stage}_seconds"),
            _count(host, f"inference_{stage}_seconds"),
        )
        for stage in STAGES
    }


async def run(
    cameras: int,
    batching: bool,
    model: str,
    input_size: tuple[int, int] | None,
    engine: tuple[str, str],
    torch_threads: int,
    score_threshold: float,
    seconds: float,
    frames: list[np.ndarray],
) -> dict[str, Any]:
    backend, precision = engine
    rings = {f"cam-{i}": f"bench-{uuid.uuid4().hex[:8]}" for i in range(cameras)}
    feeders = [RingFeeder(ring, frames, fps=30.0, slots=8, loops=10**6) for ring in rings.values()]
    options: dict[str, Any] = (
        {"max_batch_size": 8, "max_queue_delay_ms": 5.0}
        if batching
        else {
            "max_batch_size": 1,
            "max_queue_delay_ms": 0.0,
        }
    )
    options["backend"] = backend
    options["precision"] = precision
    options["model"] = model
    options["input_size"] = input_size
    options["torch_threads"] = torch_threads
    options["score_threshold"] = score_threshold
    async with recording_analytics() as (recorder, target):
        arrivals = recorder.latencies_ms
        async with inference_host(cameras=rings, analytics_target=target, **options) as host:
            await asyncio.sleep(0.5)
            for feeder in feeders:
                feeder.start()
            await asyncio.sleep(2.0)  # warm-up: caches, first batches
            written0 = sum(len(f.written) for f in feeders)
            arrivals.clear()
            stages0 = _stage_totals(host)
            batches0, frames0 = (
                _count(host, "inference_batch_size"),
                _metric(host, "inference_batch_size"),
            )
            t0 = time.monotonic()
            await asyncio.sleep(seconds)
            elapsed = time.monotonic() - t0
            delivered = len(arrivals)
            latencies = np.array(arrivals)
            written = sum(len(f.written) for f in feeders) - written0
            batches = _count(host, "inference_batch_size") - batches0
            batched = _metric(host, "inference_batch_size") - frames0
            stages1 = _stage_totals(host)
            for feeder in feeders:
                feeder.close()
    return {
        "cameras": cameras,
        "batching": "on (8, 5 ms)" if batching else "off (1)",
        "model": model,
        "input": "x".join(map(str, input_size)) if input_size else "model's",
        "backend": backend,
        "precision": precision,
        "torch_threads": torch_threads,
        "score_threshold": score_threshold,
        "fps": delivered / elapsed,
        "written_fps": written / elapsed,
        "skipped": max(0.0, 1.0 - delivered / written) if written else 0.0,
        "p50_ms": float(np.percentile(latencies, 50)) if delivered else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if delivered else float("nan"),
        "mean_batch": batched / batches if batches else float("nan"),
        # Mean ms per observation: per frame for queue_wait, per batch for the others.
        **{
            f"{stage}_ms": 1e3
            * (stages1[stage][0] - stages0[stage][0])
            / max(stages1[stage][1] - stages0[stage][1], 1)
            for stage in STAGES
        },
    }


async def main_async(args: argparse.Namespace) -> None:
    frames = _frames(8 if args.quick else 60)
    seconds = 3.0 if args.quick else args.seconds
    counts = (1, 2) if args.quick else args.cameras
    measured = engines(args.backend, args.precision)
    rows = []
    for cameras in counts:
        for batching in (False, True):
            for model, size, engine, threads, threshold in itertools.product(
                args.models, args.input_size, measured, args.torch_threads, args.score_threshold
            ):
                rows.append(
                    await run(
                        cameras, batching, model, size, engine, threads, threshold, seconds, frames
                    )
                )
                print(rows[-1], flush=True)
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {seconds:.0f} s per row\n"
    )
    print(
        "| cameras (720p30) | batching | model | input | backend | precision | torch threads "
        "| score threshold | delivered fps "
        "| written fps | skipped | p50 ms | p99 ms | mean batch | queue wait ms "
        "| preprocess ms/batch | model ms/batch | postprocess ms/batch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['cameras']} | {r['batching']} | {r['model']} | {r['input']} | {r['backend']} | "
            f"{r['precision']} | "
            f"{r['torch_threads']} | {r['score_threshold']:g} | {r['fps']:.1f} | "
            f"{r['written_fps']:.1f} | "
            f"{r['skipped']:.0%} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_batch']:.2f} | "
            f"{r['queue_wait_ms']:.1f} | {r['preprocess_ms']:.1f} | {r['model_ms']:.1f} | "
            f"{r['postprocess_ms']:.1f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cameras", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    parser.add_argument("--models", nargs="+", default=[InferenceSettings().model])
    parser.add_argument("--backend", nargs="+", choices=BENCHMARK_BACKENDS, default=["auto"])
    parser.add_argument(
        "--input-size",
        nargs="+",
        type=size_argument,
        default=[None],
        help="WxH (default: the model's)",
    )
    parser.add_argument(
        "--score-threshold",
        nargs="+",
        type=float,
        default=[InferenceSettings().score_threshold],
        help="inference.score_threshold (default: the service's)",
    )
    # Set for every row: the setting is process-wide, and 0 would keep the last row's.
    parser.add_argument("--torch-threads", nargs="+", type=int, default=[torch.get_num_threads()])
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
