"""Inference backends on a CUDA device: eager fp32/fp16 against the CPU, torch.compile, and
TensorRT with its engine cache (runs only where CUDA is available: ``pytest -m gpu``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from its.inference.v1 import model_pb2
from its_camera_ai.inference.models import (
    DetectionModel,
    Detections,
    Engine,
    EngineSpec,
    build_engine,
    letterbox_any,
)
from its_camera_ai.inference.training import box_iou

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def sim_frames() -> np.ndarray:
    """Simulator frames (day and night): real vehicles, so there are detections to compare."""
    from its_camera_ai.sim import Scene, SceneConfig

    out = []
    for seed, condition in ((1, "day"), (2, "night")):
        scene = Scene(SceneConfig(seed=seed, condition=condition))
        out += [frame for frame, _ in scene.frames(4)]
    return np.stack(out)


def on_device(model: DetectionModel, engine: Engine, images: np.ndarray) -> list[Detections]:
    x, lb = letterbox_any(
        torch.from_numpy(images).to(engine.device), model.input_size, model.pad_value
    )
    raw = engine(model.normalise(x))
    thr = model.default_score_threshold
    return model.postprocess(raw, [lb] * len(images), [thr] * len(images))


def assert_agrees(
    got: list[Detections], want: list[Detections], thr: float, score_tol: float, min_iou: float
) -> None:
    """Every confident detection of one side has a same-class match on the other; scores
    differ by at most ``score_tol``. Detections within ``score_tol`` of the threshold may
    flip to either side of it and are not required to match."""
    total = 0
    for g, w in zip(got, want, strict=True):
        for a, b in ((w, g), (g, w)):
            sure = a.scores >= thr + score_tol
            total += int(sure.sum())
            for box, score, cls in zip(a.boxes[sure], a.scores[sure], a.classes[sure], strict=True):
                same = b.classes == cls
                assert same.any(), f"class {int(cls)} at {box.tolist()} unmatched"
                iou = box_iou(box[None].numpy(), b.boxes[same].numpy())[0]
                best = int(iou.argmax())
                assert iou[best] >= min_iou, f"{box.tolist()}: best IoU {float(iou[best]):.3f}"
                assert abs(float(b.scores[same][best] - score)) <= score_tol
    assert total > 0, "no confident detections to compare"


def test_cuda_eager_matches_cpu(detector: DetectionModel, sim_frames: np.ndarray) -> None:
    engine = build_engine(detector, EngineSpec("torch", device="cuda", max_batch_size=8))
    assert engine.backend == model_pb2.BACKEND_TORCH_CUDA
    assert engine.device == torch.device("cuda", torch.cuda.current_device())
    # TF32 convolutions (torch's default on Ampere and later) keep scores within ~1e-3.
    assert_agrees(
        on_device(detector, engine, sim_frames),
        detector.detect(sim_frames),
        detector.default_score_threshold,
        score_tol=5e-3,
        min_iou=0.95,
    )


def test_cuda_fp16_within_tolerance(detector: DetectionModel, sim_frames: np.ndarray) -> None:
    engine = build_engine(
        detector, EngineSpec("torch", device="cuda", precision="fp16", max_batch_size=8)
    )
    assert engine.precision == model_pb2.PRECISION_FP16
    assert_agrees(
        on_device(detector, engine, sim_frames),
        detector.detect(sim_frames),
        detector.default_score_threshold,
        score_tol=2e-2,
        min_iou=0.85,
    )


def outputs(engine: Engine, x: torch.Tensor) -> list[torch.Tensor]:
    raw: Any = engine(x)
    return [t.float() for t in (raw if isinstance(raw, list | tuple) else [raw])]


def test_torch_compile_on_cuda_runs(
    detector: DetectionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = EngineSpec("torch-compile", device="cuda", precision="fp16", max_batch_size=8)
    engine = build_engine(detector, spec)
    eager = build_engine(detector, EngineSpec("torch", "cuda", "fp16", 8))
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    w, h = detector.input_size
    for b in (1, 3, 8):
        x = torch.rand(b, 3, h, w, device=engine.device)
        for got, want in zip(outputs(engine, x), outputs(eager, x), strict=True):
            torch.testing.assert_close(got, want, atol=5e-2, rtol=1e-2)


def test_tensorrt_engine_builds_and_is_cached(detector: DetectionModel, tmp_path: Path) -> None:
    pytest.importorskip("torch_tensorrt")
    spec = EngineSpec("tensorrt", "cuda", "fp16", max_batch_size=8, cache_dir=tmp_path)
    t0 = time.perf_counter()
    first = build_engine(detector, spec)
    built_s = time.perf_counter() - t0
    assert first.backend == model_pb2.BACKEND_TENSORRT
    assert not first.loaded_from_cache
    (entry,) = tmp_path.glob("*.pt2")

    t0 = time.perf_counter()
    second = build_engine(detector, spec)
    loaded_s = time.perf_counter() - t0
    print(f"TensorRT engine: built in {built_s:.1f} s, loaded from the cache in {loaded_s:.1f} s")
    assert second.loaded_from_cache
    assert loaded_s < built_s

    eager = build_engine(detector, EngineSpec("torch", "cuda", "fp16", 8))
    w, h = detector.input_size
    for b in (1, 5, 8):
        x = torch.rand(b, 3, h, w, device=second.device)
        for got, want in zip(outputs(second, x), outputs(eager, x), strict=True):
            torch.testing.assert_close(got, want, atol=5e-2, rtol=1e-2)

    # A corrupt entry is rebuilt (and rewritten), not fatal.
    entry.write_bytes(b"not an engine")
    third = build_engine(detector, spec)
    assert not third.loaded_from_cache
    assert entry.stat().st_size > 100
