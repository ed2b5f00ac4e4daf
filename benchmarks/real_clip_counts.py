"""Line counts on real clips against their hand counts, for each shipped model.

    python benchmarks/real_clip_counts.py [--models its-detector-v1 yolox-nano-coco]
        [--score-threshold 0.1 ...] [--precision fp32 bf16] [--backend auto torch onnxruntime]
        [--input-size 640x384] [--json out.json]

Each clip of ``tests/data/real_clips/counts.json`` (hand counts made with the time-slice
method; a clip outside the repository is skipped where it is absent) is decoded with PyAV,
every frame detected by the model (batches of 8, as the service batches), and the
detections fed, frame by frame with the clip's own timing, to the analytics engine
(``CameraAnalytics``) with the clip's counting lines. Per line and direction: the count,
the truth, missed (FN) and extra (FP) counts, and the error of the total. Classes are not
compared (every vehicle of these clips is a car; a class flip shows in the class column),
but what the detector calls them is shown: the share of its car, truck and bus detections
over the whole clip that are cars (1.00 where the network knows a car from a lorry).
Score thresholds: the one the service's frame pipeline sends analytics
(``inference.score_threshold``, 0.1: the tracker's weak band) unless given; several give
one row each. ``--precision bf16`` runs the network through the engine
``inference.precision: bf16`` builds (a CPU with bf16 instructions, or a GPU),
``--backend`` as ``inference.backend`` builds it (default ``auto``, as the service: ONNX
Runtime for fp32, torch for bf16; ``onnxruntime``: fp32 only); several values give one row
each. ``--input-size`` runs
every model's network at that input instead of its manifest's (``inference.input_size``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import av
import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from its_camera_ai.analytics import CameraAnalytics, FrameInput
from its_camera_ai.common import InferenceSettings
from its_camera_ai.inference import feed_score_threshold
from its_camera_ai.inference.models import (
    CLASS_IDS,
    SHIPPED_MODELS,
    DetectionModel,
    Detections,
    EngineSpec,
    build_engine,
    detect_frames,
    load_model,
)
from its_camera_ai.inference.training import size_argument
from its_camera_ai.scene import Direction, LineSpec, SceneSpec
from its_camera_ai.testing import BENCHMARK_BACKENDS, engines

REPO = Path(__file__).resolve().parents[1]
COUNTS = REPO / "tests/data/real_clips/counts.json"
_BATCH = 8
_NS = 1_000_000_000
_CLASS_NAMES = {cid: name for name, cid in CLASS_IDS.items()}
_DIRECTIONS = {"LEFT_TO_RIGHT": Direction.LEFT_TO_RIGHT, "RIGHT_TO_LEFT": Direction.RIGHT_TO_LEFT}


@dataclass(frozen=True)
class LineResult:
    clip: str
    line: str
    model: str
    input_size: str
    backend: str
    precision: str
    threshold: float
    # Per direction: (counted, true).
    by_direction: dict[str, tuple[int, int]]
    classes: dict[str, int]
    # The clip's detections at ``threshold``, every frame, by class name.
    detected: dict[str, int]
    # Frames/s of model.detect over the clip (batches of 8, letterbox to postprocess).
    detect_fps: float

    @property
    def counted(self) -> int:
        return sum(c for c, _ in self.by_direction.values())

    @property
    def truth(self) -> int:
        return sum(t for _, t in self.by_direction.values())

    @property
    def car_share(self) -> float:
        """Of the clip's car, truck and bus detections, the share called car."""
        vehicles = sum(self.detected.get(name, 0) for name in ("car", "truck", "bus"))
        return self.detected.get("car", 0) / vehicles if vehicles else float("nan")

    @property
    def missed(self) -> int:
        return sum(max(t - c, 0) for c, t in self.by_direction.values())

    @property
    def extra(self) -> int:
        return sum(max(c - t, 0) for c, t in self.by_direction.values())


def clip_frames(path: Path) -> list[np.ndarray[Any, Any]]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _scene(clip: dict[str, Any]) -> SceneSpec:
    return SceneSpec(
        lines=tuple(
            LineSpec(line["id"], tuple(line["start"]), tuple(line["end"])) for line in clip["lines"]
        )
    )


Detect = Callable[[list[np.ndarray[Any, Any]], float], list[Detections]]
Backend = Literal["torch", "onnxruntime"]
Precision = Literal["fp32", "bf16"]
# One engine per model (by its weights and input), backend and precision, whatever the
# clips and thresholds.
_DETECTORS: dict[tuple[str, tuple[int, int], Backend, Precision], Detect] = {}


def _detector(model: DetectionModel, backend: Backend, precision: Precision) -> Detect:
    """``model.detect``, or the same stages around the engine the service builds for
    ``inference.backend`` and ``inference.precision`` (which says what a machine lacks)."""
    if (backend, precision) == ("torch", "fp32"):
        return model.detect
    key = (model.digest, model.input_size, backend, precision)
    if key not in _DETECTORS:
        spec = EngineSpec(backend, precision=precision, max_batch_size=_BATCH)
        network = build_engine(model, spec)
        _DETECTORS[key] = lambda frames, threshold: detect_frames(
            model, network, frames, threshold, network.device
        )
    return _DETECTORS[key]


def count_clip(
    clip: dict[str, Any],
    frames: list[np.ndarray[Any, Any]],
    model: DetectionModel,
    precision: Precision,
    threshold: float,
    progress: Progress,
    backend: Backend = "torch",
) -> list[LineResult]:
    """The clip through ``model`` (its network run by ``backend`` in ``precision``) and the
    analytics engine: one result per line."""
    task = progress.add_task(
        f"{clip['file']} {model.name} {backend} {precision} @{threshold}", total=len(frames)
    )
    detect = _detector(model, backend, precision)
    engine = CameraAnalytics("clip", _scene(clip))
    height, width = frames[0].shape[:2]
    step_ns = round(_NS / float(clip["fps"]))
    counted: Counter[tuple[str, Direction]] = Counter()
    classes: dict[str, Counter[str]] = {line["id"]: Counter() for line in clip["lines"]}
    detected: Counter[str] = Counter()
    detecting = 0.0
    for start in range(0, len(frames), _BATCH):
        batch = frames[start : start + _BATCH]
        began = time.perf_counter()
        detections = detect(batch, threshold)
        detecting += time.perf_counter() - began
        for offset, found in enumerate(detections):
            index = start + offset
            detected.update(_CLASS_NAMES[int(c)] for c in found.classes.tolist())
            rows = np.column_stack((
                found.boxes.numpy(), found.scores.numpy(), found.classes.numpy()
            )).astype(np.float64)  # fmt: skip
            outcome = engine.process(
                FrameInput("clip", index + 1, (index + 1) * step_ns, width, height, rows)
            )
            for crossing in outcome.crossings:
                counted[crossing.line_id, crossing.direction] += 1
                classes[crossing.line_id][crossing.object_class.name.lower()] += 1
        progress.advance(task, len(batch))
    results = []
    for line in clip["lines"]:
        by_direction = {
            name: (counted[line["id"], direction], _true(line, name))
            for name, direction in _DIRECTIONS.items()
        }
        results.append(LineResult(
            clip["file"], line["id"], model.name, "x".join(map(str, model.input_size)), backend,
            precision, threshold, by_direction,
            dict(classes[line["id"]]), dict(detected), len(frames) / detecting,
        ))  # fmt: skip
    return results


def _true(line: dict[str, Any], direction: str) -> int:
    return sum(line["totals"].get(direction, {}).values())


def _table(results: list[LineResult]) -> str:
    rows = [
        "| clip | line | model | input | backend | precision | score threshold | counted | truth"
        " | missed (FN)"
        " | extra (FP) | error | per direction counted/truth | classes counted"
        " | vehicle detections called car | detect frames/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        error = (r.counted - r.truth) / r.truth if r.truth else float("nan")
        directions = ", ".join(f"{d.lower()} {c}/{t}" for d, (c, t) in r.by_direction.items())
        rows.append(
            f"| {r.clip} | {r.line} | {r.model} | {r.input_size} | {r.backend} | {r.precision}"
            f" | {r.threshold:.2f} | {r.counted}"
            f" | {r.truth}"
            f" | {r.missed} | {r.extra} | {error:+.0%} | {directions} | {r.classes or '-'}"
            f" | {r.car_share:.2f} | {r.detect_fps:.0f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SHIPPED_MODELS))
    parser.add_argument("--score-threshold", type=float, nargs="*", default=[])
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    # onnxruntime runs fp32 only: it is paired with --precision fp32 alone.
    parser.add_argument("--backend", nargs="+", choices=BENCHMARK_BACKENDS, default=["auto"])
    parser.add_argument(
        "--input-size", type=size_argument, default=None, help="WxH: every network's input"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    input_size = args.input_size
    clips = json.loads(COUNTS.read_text())["clips"]
    present = [c for c in clips if (REPO / c["path"]).is_file()]
    for clip in clips:
        if clip not in present:
            print(f"skipped {clip['file']}: {clip['path']} is absent", file=sys.stderr)
    measured = engines(args.backend, args.precision)
    results: list[LineResult] = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
    ) as progress:  # fmt: skip
        for clip in present:
            frames = clip_frames(REPO / clip["path"])
            for name in args.models:
                model = load_model(name, input_size=input_size)
                thresholds = args.score_threshold or [
                    feed_score_threshold(InferenceSettings(), model)
                ]
                for backend, precision in measured:
                    for threshold in thresholds:
                        # --backend and --precision's choices narrow what engines() gives.
                        results += count_clip(
                            clip,
                            frames,
                            model,
                            cast(Precision, precision),
                            threshold,
                            progress,
                            cast(Backend, backend),
                        )
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
