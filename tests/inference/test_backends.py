"""Backends on the CPU: the eager engine reproduces ``detect``, unavailable settings fail at
build time naming the setting, ``torch.compile`` matches eager without recompiling, and ONNX
Runtime finds what eager torch finds."""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from its.inference.v1 import model_pb2
from its_camera_ai.common import InferenceSettings
from its_camera_ai.inference.models import (
    BackendUnavailableError,
    DetectionModel,
    Detections,
    Engine,
    EngineSpec,
    ModelLoadError,
    OutputFormatError,
    YoloAdapter,
    build_engine,
    detect_frames,
    load_detector,
    load_model,
)
from its_camera_ai.inference.training import box_iou
from its_camera_ai.sim import load_shard, write_dataset
from its_camera_ai.testing import engines


class ConvYolo(torch.nn.Module):
    """The Ultralytics export format ``[B, 4+nc, N]`` from a random strided convolution, so
    that the predictions depend on the image (unlike a fixed table)."""

    def __init__(self, nc: int, stride: int = 8) -> None:
        super().__init__()
        self.stride = stride
        self.conv = torch.nn.Conv2d(3, 4 + nc, stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        h, w = y.shape[2], y.shape[3]
        gy, gx = torch.meshgrid(
            torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij"
        )
        s = float(self.stride)
        centre = torch.stack(((gx + 0.5) * s, (gy + 0.5) * s)).flatten(1)
        xy = centre.unsqueeze(0) + torch.tanh(y[:, :2].flatten(2)) * s
        wh = torch.sigmoid(y[:, 2:4].flatten(2)) * 4 * s
        return torch.cat((xy, wh, torch.sigmoid(y[:, 4:].flatten(2))), dim=1)


@pytest.fixture
def yolo() -> DetectionModel:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        # torch 2.9+ deprecates scripting, but YOLO exports are TorchScript files.
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.script(ConvYolo(nc=6))
    return YoloAdapter(
        module,
        input_size=(128, 96),
        num_classes=6,
        class_map={i: i + 1 for i in range(6)},
        score_threshold=0.5,
        digest="0" * 64,
    )


def frames(n: int, h: int = 360, w: int = 640, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def assert_same(got: list[Detections], want: list[Detections]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.boxes, w.boxes, atol=1e-5, rtol=0)
        torch.testing.assert_close(g.scores, w.scores, atol=1e-5, rtol=0)
        assert torch.equal(g.classes, w.classes)


def flat(raw: Any) -> list[torch.Tensor]:
    return list(raw) if isinstance(raw, list | tuple) else [raw]


# --- eager ----------------------------------------------------------------------------


def test_eager_engine_reproduces_detect_of_the_shipped_detector(detector: DetectionModel) -> None:
    net_before = {k: v.clone() for k, v in detector.network.state_dict().items()}
    engine = build_engine(detector, EngineSpec("torch", max_batch_size=4))
    assert engine.backend == model_pb2.BACKEND_TORCH_CPU
    assert engine.precision == model_pb2.PRECISION_FP32
    assert engine.device == torch.device("cpu")
    assert not engine.loaded_from_cache
    images = frames(3)
    # A low threshold so that noise frames still yield plenty of peaks to compare.
    got = detect_frames(detector, engine, images, 0.05)
    assert sum(len(d.scores) for d in got) > 0
    assert_same(got, detector.detect(images, score_threshold=0.05))
    # The engine works on its own copy: the model's network is the same object, unchanged.
    for k, v in detector.network.state_dict().items():
        assert torch.equal(v, net_before[k])
        assert v.dtype == net_before[k].dtype


def test_eager_engine_reproduces_detect_of_a_yolo_adapter(yolo: DetectionModel) -> None:
    engine = build_engine(yolo, EngineSpec("torch", max_batch_size=3))
    images = frames(3, 240, 320, seed=1)
    got = detect_frames(yolo, engine, images, 0.5)
    assert sum(len(d.scores) for d in got) > 0
    assert_same(got, yolo.detect(images))


def test_engine_rejects_inputs_outside_its_shape(yolo: DetectionModel) -> None:
    engine = build_engine(yolo, EngineSpec("torch", max_batch_size=2))
    with pytest.raises(ValueError, match=r"\[1\.\.2, 3, 96, 128\]"):
        engine(torch.zeros(3, 3, 96, 128))
    with pytest.raises(ValueError, match="got"):
        engine(torch.zeros(1, 3, 128, 96))


def test_spec_from_settings(tmp_path: Path) -> None:
    s = InferenceSettings(backend="torch-compile", max_batch_size=4, engine_cache_dir=tmp_path)
    assert EngineSpec.from_settings(s) == EngineSpec("torch-compile", "cpu", "fp32", 4, tmp_path)
    with pytest.raises(ValueError, match="max_batch_size"):
        EngineSpec("torch", max_batch_size=0)


@pytest.mark.parametrize(
    ("device", "precision", "backend"),
    [("cpu", "fp32", "onnxruntime"), ("cpu", "bf16", "torch"), ("cuda", "fp16", "torch")],
)
def test_the_default_backend_is_onnxruntime_on_a_cpu_in_fp32_and_torch_otherwise(
    device: str, precision: Any, backend: str
) -> None:
    settings = InferenceSettings(device=device, precision=precision)
    assert settings.backend == "auto"
    assert EngineSpec.from_settings(settings).backend == backend
    # Named, a backend is taken as it is.
    assert InferenceSettings(backend="torch").engine_backend == "torch"


def test_benchmarks_measure_what_the_service_would_build() -> None:
    # Their --backend defaults to "auto": a plain run measures the service's own engine.
    assert engines(["auto"], ["fp32", "bf16"]) == [("onnxruntime", "fp32"), ("torch", "bf16")]
    # ONNX Runtime runs fp32 only; a pair asked for twice is measured once.
    assert engines(["torch", "onnxruntime", "auto"], ["fp32", "bf16"]) == [
        ("torch", "fp32"),
        ("torch", "bf16"),
        ("onnxruntime", "fp32"),
    ]


# --- unavailable combinations ---------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_names_the_device(yolo: DetectionModel, device: str) -> None:
    with pytest.raises(BackendUnavailableError, match=rf"inference\.device='{device}'") as e:
        build_engine(yolo, EngineSpec("torch", device=device))
    if torch.version.cuda is None:
        assert "CPU-only build" in str(e.value)


def test_fp16_on_cpu_names_the_precision(yolo: DetectionModel) -> None:
    with pytest.raises(BackendUnavailableError, match=r"inference\.precision='fp16'.*'cpu'"):
        build_engine(yolo, EngineSpec("torch", precision="fp16"))


@pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no bf16 instructions"
)
def test_bf16_engine_finds_what_fp32_finds_on_a_rendered_scene(
    detector: DetectionModel, tmp_path: Path
) -> None:
    """bf16 halves the CPU cost of the network; on a real scene it must find the same
    objects, in the same classes, at the same places (its held-out mAP is in the docs)."""
    write_dataset(tmp_path, [100_003], 2, compress=False)
    images = load_shard(tmp_path / "seed_100003.npz").images
    engine = build_engine(detector, EngineSpec("torch", precision="bf16", max_batch_size=2))
    assert engine.precision == model_pb2.PRECISION_BF16
    got = detect_frames(detector, engine, images, 0.3)
    want = detector.detect(images, score_threshold=0.3)
    for g, w in zip(got, want, strict=True):
        assert g.boxes.dtype == torch.float32  # decoded in float32 whatever the engine ran
        assert len(w.scores) >= 5
        iou = box_iou(w.boxes.numpy(), g.boxes.numpy())
        best = iou.argmax(axis=1)
        same_class = (g.classes[best] == w.classes).numpy()
        # Near the threshold a peak may fall on either side; the rest match one to one.
        matched = (iou.max(axis=1) >= 0.9) & same_class
        assert matched.mean() >= 0.9, (matched.mean(), w, g)
        close = (g.scores[best] - w.scores).abs().numpy()[matched]
        assert close.max() < 0.05


def test_settings_take_bf16_on_the_cpu() -> None:
    spec = EngineSpec.from_settings(InferenceSettings(precision="bf16"))
    assert (spec.device, spec.dtype) == ("cpu", torch.bfloat16)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_tensorrt_without_torch_tensorrt_says_how_to_install(
    yolo: DetectionModel, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import fails, as when missing
    with pytest.raises(BackendUnavailableError, match="torch_tensorrt") as e:
        build_engine(yolo, EngineSpec("tensorrt", device=device))
    assert "inference.backend='tensorrt'" in str(e.value)
    assert "pip install 'its-camera-ai[gpu]'" in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_tensorrt_on_cpu_names_the_device(
    yolo: DetectionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if torch_tensorrt were installed: the device is the remaining problem.
    monkeypatch.setitem(sys.modules, "torch_tensorrt", object())
    with pytest.raises(BackendUnavailableError, match="tensorrt' needs a cuda device"):
        build_engine(yolo, EngineSpec("tensorrt", device="cpu"))


def test_unknown_backend(yolo: DetectionModel) -> None:
    with pytest.raises(BackendUnavailableError, match=r"inference\.backend='onnx'"):
        build_engine(yolo, EngineSpec("onnx"))


def test_compile_failure_is_wrapped(yolo: DetectionModel, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(module: torch.nn.Module) -> Any:
        def run(x: torch.Tensor) -> Any:
            raise RuntimeError("inductor exploded")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(BackendUnavailableError, match=r"torch-compile.*inductor exploded"):
        build_engine(yolo, EngineSpec("torch-compile"))


class BatchOfOne(torch.nn.Module):
    """YOLO format at batch 1 whatever the batch: passes the model's own load check."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(1, 4 + 80, 10)


def test_outputs_not_scaling_with_the_batch_fail_the_build() -> None:
    model = YoloAdapter(BatchOfOne(), input_size=(64, 64))
    build_engine(model, EngineSpec("torch", max_batch_size=1))
    with pytest.raises(OutputFormatError, match="batch of 3") as e:
        build_engine(model, EngineSpec("torch", max_batch_size=3))
    assert isinstance(e.value, ModelLoadError)


# --- ONNX Runtime ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered_scene(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Two frames of a held-out simulator scene (vehicles, people, road)."""
    directory = tmp_path_factory.mktemp("scene")
    write_dataset(directory, [100_003], 2, compress=False)
    return load_shard(directory / "seed_100003.npz").images


@pytest.mark.parametrize("name", ["its-detector-v1", "yolox-nano-its"])
def test_onnxruntime_engine_finds_what_torch_finds(name: str, rendered_scene: np.ndarray) -> None:
    """The network exported to ONNX runs any batch and gives torch's detections (the same
    float32 arithmetic in other kernels: scores within 1e-4, boxes within 0.01 px)."""
    model = load_model(name)
    engine = build_engine(model, EngineSpec("onnxruntime", max_batch_size=4))
    assert (engine.backend, engine.precision) == (
        model_pb2.BACKEND_ONNXRUNTIME_CPU,
        model_pb2.PRECISION_FP32,
    )
    for batch in (rendered_scene[:1], rendered_scene, np.concatenate([rendered_scene] * 2)):
        got = detect_frames(model, engine, batch, 0.3)
        want = model.detect(batch, score_threshold=0.3)
        assert sum(len(w.scores) for w in want) >= 5 * len(batch)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.boxes, w.boxes, atol=1e-2, rtol=0)
            torch.testing.assert_close(g.scores, w.scores, atol=1e-4, rtol=0)
            assert torch.equal(g.classes, w.classes)


def _thread_cpu_ns() -> dict[int, int]:
    """CPU time of each of this process's threads (Linux's scheduler statistics, in ns)."""
    times = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            times[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
    return times


def test_onnxruntime_workers_stop_spinning_between_batches() -> None:
    """ONNX Runtime's workers spin while a batch runs (faster on small layers) but not after
    it: an idle engine leaves the cores to the decoder. Left spinning (ONNX Runtime's default),
    its worker burned 20-28 ms of CPU in the half second after a batch (2 threads)."""
    model = load_model("yolox-nano-its")
    w, h = model.input_size
    threads = torch.get_num_threads()
    before = set(_thread_cpu_ns())
    torch.set_num_threads(2)
    try:
        engine = build_engine(model, EngineSpec("onnxruntime", max_batch_size=2))
    finally:
        torch.set_num_threads(threads)
    engine(torch.rand(2, 3, h, w) * 255)
    # The engine's own threads alone: other tests may leave threads of their own running.
    start = {tid: ns for tid, ns in _thread_cpu_ns().items() if tid not in before}
    assert start, "the engine started no worker thread"
    time.sleep(0.5)
    end = _thread_cpu_ns()
    idle_ns = sum(end.get(tid, ns) - ns for tid, ns in start.items())
    assert idle_ns < 5_000_000, f"the engine's threads used {idle_ns / 1e6:.1f} ms while idle"


def test_onnxruntime_without_the_package_says_how_to_install(
    yolo: DetectionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails, as when missing
    with pytest.raises(BackendUnavailableError, match="onnxruntime") as e:
        build_engine(yolo, EngineSpec("onnxruntime"))
    assert "pip install onnx onnxruntime" in str(e.value)
    assert "inference.backend 'torch'" in str(e.value)


@pytest.mark.parametrize(
    ("device", "precision"), [("cpu", "bf16"), ("cpu", "fp16"), ("cuda", "fp32")]
)
def test_onnxruntime_runs_fp32_on_the_cpu_only(
    yolo: DetectionModel, device: str, precision: Any
) -> None:
    with pytest.raises(BackendUnavailableError, match="'onnxruntime' runs on the CPU in fp32"):
        build_engine(yolo, EngineSpec("onnxruntime", device=device, precision=precision))
    with pytest.raises(ValueError, match="backend onnxruntime runs on device cpu in precision"):
        InferenceSettings(backend="onnxruntime", device=device, precision=precision)


def test_onnxruntime_export_failure_is_wrapped(
    yolo: DetectionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(BackendUnavailableError, match="unsupported operator") as e:
        build_engine(yolo, EngineSpec("onnxruntime"))
    assert "use backend 'torch' instead" in str(e.value)


# --- torch.compile --------------------------------------------------------------------


def check_compiled_matches_eager(
    model: DetectionModel, engine: Engine, batches: tuple[int, ...], atol: float
) -> None:
    assert engine.backend == model_pb2.BACKEND_TORCH_COMPILE
    eager = build_engine(model, EngineSpec("torch", max_batch_size=engine.max_batch_size))
    w, h = model.input_size
    gen = torch.Generator().manual_seed(0)
    for b in batches:
        x = torch.rand(b, 3, h, w, generator=gen)
        for got, want in zip(flat(engine(x)), flat(eager(x)), strict=True):
            torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)


def test_torch_compile_matches_eager_without_recompiling(
    tiny_manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build's warm-up covers every live batch: no recompilation afterwards, whether
    the caller's batch is an inference tensor or a buffer made outside inference_mode.

    Inductor's code generation (~40 s cold on two cores, even for this tiny network) is
    torch's own; ``aot_eager`` runs the same Dynamo capture and guards in seconds. The
    Inductor run is ``test_torch_compile_inductor_on_the_shipped_detector``."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    model = load_detector(tiny_manifest)
    engine = build_engine(model, EngineSpec("torch-compile", max_batch_size=4))
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    check_compiled_matches_eager(model, engine, (1, 2, 3, 4), atol=1e-5)
    w, h = model.input_size
    with torch.inference_mode():
        engine(torch.rand(3, 3, h, w))
    buffer = torch.rand(4, 3, h, w)  # like the runner's preallocated input
    with torch.inference_mode():
        engine(buffer[:2])


@pytest.mark.performance
def test_torch_compile_inductor_on_the_shipped_detector(detector: DetectionModel) -> None:
    """Inductor on the CPU: ~85 s of compilation (batch 1 and the dynamic batch) with a cold
    Inductor cache on the two-core CI machine, one torch thread; ~8 s with a warm one."""
    t0 = time.perf_counter()
    engine = build_engine(detector, EngineSpec("torch-compile", max_batch_size=8))
    print(f"torch.compile (Inductor, CPU) build: {time.perf_counter() - t0:.1f} s")
    check_compiled_matches_eager(detector, engine, (1, 5, 8), atol=1e-4)


# --- the TensorRT engine cache, with a stand-in compiler --------------------------------


class Compiled:
    def __init__(self, program: torch.export.ExportedProgram) -> None:
        self.program = program
        self.module = program.module()

    def __call__(self, x: torch.Tensor) -> Any:
        return self.module(x)


class StandInTorchTensorRT(types.ModuleType):
    """Just enough of torch_tensorrt for the cache logic, which cannot run here otherwise:
    "compiles" with torch.export over the same dynamic batch range, and saves like a
    release that cannot retrace from Input specs (so the second way of saving is taken)."""

    __version__ = "0.0-stand-in"

    class Input:
        def __init__(self, *, min_shape: Any, opt_shape: Any, max_shape: Any, dtype: Any) -> None:
            self.min_shape, self.opt_shape, self.max_shape = min_shape, opt_shape, max_shape
            self.dtype = dtype

    def __init__(self) -> None:
        super().__init__("torch_tensorrt")
        self.compiles = 0

    def compile(self, net: torch.nn.Module, *, inputs: list[Any], **settings: Any) -> Compiled:
        self.compiles += 1
        spec = inputs[0]
        batch = torch.export.Dim("batch", min=spec.min_shape[0], max=spec.max_shape[0])
        example = torch.zeros(spec.opt_shape, dtype=spec.dtype, device=settings["device"])
        return Compiled(torch.export.export(net, (example,), dynamic_shapes=({0: batch},)))

    def save(self, module: Compiled, path: str, **settings: Any) -> None:
        if "arg_inputs" in settings:
            raise TypeError("cannot retrace from Input specs")
        torch.export.save(module.program, path)


@pytest.fixture
def stand_in_trt(monkeypatch: pytest.MonkeyPatch) -> StandInTorchTensorRT:
    trt = StandInTorchTensorRT()
    monkeypatch.setitem(sys.modules, "torch_tensorrt", trt)
    # The cache logic does not depend on the device: let it run on the CPU.
    monkeypatch.setattr(EngineSpec, "target_device", lambda spec: torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Stand-in GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    return trt


def test_tensorrt_engines_are_cached_keyed_and_rebuilt_when_corrupt(
    tiny_manifest: Path, tmp_path: Path, stand_in_trt: StandInTorchTensorRT
) -> None:
    model = load_detector(tiny_manifest)
    cache = tmp_path / "engines"
    spec = EngineSpec("tensorrt", max_batch_size=4, cache_dir=cache)
    first = build_engine(model, spec)
    assert first.backend == model_pb2.BACKEND_TENSORRT
    assert not first.loaded_from_cache
    (entry,) = cache.iterdir()  # the entry alone: no temporary file left behind
    assert entry.name.startswith("tiny-fp32-")
    assert entry.suffix == ".pt2"

    second = build_engine(model, spec)
    assert second.loaded_from_cache
    assert stand_in_trt.compiles == 1
    eager = build_engine(model, EngineSpec("torch", max_batch_size=4))
    w, h = model.input_size
    for b in (1, 3, 4):
        x = torch.rand(b, 3, h, w)
        for got, want in zip(flat(second(x)), flat(eager(x)), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    # Another batch range is another engine.
    build_engine(model, dataclasses.replace(spec, max_batch_size=2))
    assert stand_in_trt.compiles == 2
    assert len(list(cache.iterdir())) == 2

    entry.write_bytes(b"half an engine")
    assert not build_engine(model, spec).loaded_from_cache
    assert stand_in_trt.compiles == 3
    assert build_engine(model, spec).loaded_from_cache  # rewritten


def test_tensorrt_cache_problems_are_not_fatal(
    tiny_manifest: Path,
    tmp_path: Path,
    stand_in_trt: StandInTorchTensorRT,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="its_camera_ai.inference.models")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    model = load_detector(tiny_manifest)
    build_engine(model, EngineSpec("tensorrt", max_batch_size=2, cache_dir=not_a_dir))
    assert "not cached" in caplog.text

    caplog.clear()
    torch.manual_seed(0)
    no_digest = YoloAdapter(ConvYolo(nc=6), input_size=(64, 64), num_classes=6, class_map={})
    build_engine(no_digest, EngineSpec("tensorrt", max_batch_size=2, cache_dir=tmp_path))
    assert "no digest" in caplog.text
    assert list(tmp_path.glob("*.pt2")) == []
