"""Running a model's network on a backend: eager torch, ``torch.compile``, TensorRT or
ONNX Runtime.

``build_engine`` turns a loaded ``DetectionModel`` and the configured backend, device and
precision into an ``Engine``: a callable from the normalised input batch to the raw outputs,
exactly what ``model.network`` returns and ``model.postprocess`` takes. The engine owns its
copy of the network (moved, cast, compiled), so the model's own ``detect`` keeps running
unchanged on the CPU.

Everything that can go wrong does so at build time, at start-up, naming the setting: CUDA
missing or a CPU build of torch, fp16 on a CPU, bf16 on a CPU or GPU without bf16 support,
torch_tensorrt or onnxruntime not installed, compilation or export failing
(``BackendUnavailableError``), outputs
whose shapes differ from the eager network's on a blank batch (``OutputFormatError``). The
check runs at batch 1 and at the largest batch, which is also the warm-up of the compiling
backends: the first live frame pays no compilation.

TensorRT engines take minutes to build, so they are cached on disk, under a key of
everything an engine depends on (model digest, GPU and compute capability, library
versions, precision, input size, batch range); a cache entry is written atomically, only
after it has been loaded back and checked, and an unusable one is rebuilt, never fatal.

ONNX Runtime (``_onnxruntime``) runs the network on the CPU in float32, exported to ONNX at
build.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

from its.inference.v1 import model_pb2
from its_camera_ai.common._config import BackendName
from its_camera_ai.inference.models._contract import DetectionModel
from its_camera_ai.inference.models._errors import (
    BackendUnavailableError,
    ModelLoadError,
    OutputFormatError,
)
from its_camera_ai.inference.models._onnxruntime import import_onnxruntime, onnxruntime_runner

if TYPE_CHECKING:
    from its_camera_ai.common._config import InferenceSettings

__all__ = ["BackendUnavailableError", "Engine", "EngineSpec", "build_engine"]

_log = logging.getLogger(__name__)

_INSTALL_GPU = "pip install 'its-camera-ai[gpu]'"
_BACKENDS: tuple[BackendName, ...] = get_args(BackendName)
# Part of every TensorRT cache key: bump it when the way engines are built or saved changes,
# so that entries written the old way are no longer picked up.
_CACHE_FORMAT = 1

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_PRECISIONS = {
    "fp32": model_pb2.PRECISION_FP32,
    "fp16": model_pb2.PRECISION_FP16,
    "bf16": model_pb2.PRECISION_BF16,
}

_Runner = Callable[[torch.Tensor], Any]
# Output tensor shapes, flattened; non-tensor leaves by type name.
_Shapes = list[tuple[int, ...] | str]


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """How to run the network: ``InferenceSettings``' backend fields, and nothing else."""

    backend: BackendName = "torch"
    device: str = "cpu"  # torch notation: "cpu", "cuda", "cuda:1"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    max_batch_size: int = 8
    cache_dir: Path = Path("var/inference/engines")  # TensorRT engines

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")

    @classmethod
    def from_settings(cls, s: InferenceSettings) -> EngineSpec:
        return cls(
            backend=s.engine_backend,
            device=s.device,
            precision=s.precision,
            max_batch_size=s.max_batch_size,
            cache_dir=s.engine_cache_dir,
        )

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    def target_device(self) -> torch.device:
        """The device this spec runs on, once checked usable here; otherwise
        ``BackendUnavailableError`` says why."""
        try:
            dev = torch.device(self.device)
        except RuntimeError as e:
            raise BackendUnavailableError(
                f"inference.device={self.device!r} is not a device"
            ) from e
        if self.backend == "onnxruntime" and (dev.type != "cpu" or self.precision != "fp32"):
            raise BackendUnavailableError(
                f"inference.backend='onnxruntime' runs on the CPU in fp32, not on "
                f"{self.device!r} in {self.precision!r}; set inference.device 'cpu' and "
                "inference.precision 'fp32', or use backend 'torch'"
            )
        if dev.type == "cpu":
            if self.precision == "fp16":
                raise BackendUnavailableError(
                    "inference.precision='fp16' needs a cuda device, inference.device is 'cpu'"
                )
            if self.backend == "tensorrt":
                raise BackendUnavailableError(
                    "inference.backend='tensorrt' needs a cuda device, inference.device is 'cpu'"
                )
            # Without bf16 instructions oneDNN emulates bf16, slower than fp32.
            if self.precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                raise BackendUnavailableError(
                    "inference.precision='bf16' needs a CPU with bf16 instructions (AVX512-BF16 "
                    "or AMX), which this one lacks; use precision 'fp32'"
                )
            return dev
        if dev.type != "cuda":
            raise BackendUnavailableError(
                f"inference.device={self.device!r}: only 'cpu' and 'cuda[:N]' are supported"
            )
        if not torch.cuda.is_available():
            why = (
                f"this torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)"
                if torch.version.cuda is None
                else "torch sees no CUDA device (driver, CUDA_VISIBLE_DEVICES?)"
            )
            raise BackendUnavailableError(
                f"inference.device={self.device!r} requested but {why}; "
                "set inference.device to 'cpu'"
            )
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise BackendUnavailableError(
                f"inference.device={self.device!r}: only {torch.cuda.device_count()} CUDA "
                "device(s) visible"
            )
        cuda = torch.device("cuda", index)
        major, minor = torch.cuda.get_device_capability(cuda)
        if self.precision == "bf16" and major < 8:  # bf16 tensor cores came with Ampere
            raise BackendUnavailableError(
                f"inference.precision='bf16' needs a GPU of compute capability 8.0 or newer, "
                f"{torch.cuda.get_device_name(cuda)} is {major}.{minor}; use precision 'fp16'"
            )
        return cuda


class Engine:
    """``model.network`` on one backend, device and precision; made by ``build_engine``.

    ``backend`` and ``precision`` are the ``its.inference.v1`` enum values the Model resource
    reports; ``device`` always carries its index on CUDA ("cuda:0", never "cuda").
    """

    def __init__(
        self,
        run: _Runner,
        spec: EngineSpec,
        device: torch.device,
        input_size: tuple[int, int],
        *,
        loaded_from_cache: bool = False,
    ) -> None:
        self.spec = spec
        self.device = device
        self.input_size = input_size
        self.max_batch_size = spec.max_batch_size
        self.backend: int = _backend_value(spec.backend, device)
        self.precision: int = _PRECISIONS[spec.precision]
        # TensorRT only: whether the engine came from the on-disk cache instead of a build.
        self.loaded_from_cache = loaded_from_cache
        self._run = run
        self._dtype = spec.dtype

    def __call__(self, x: torch.Tensor) -> Any:
        """Normalised float32 ``[B,3,H,W]`` on ``device``, 1 <= B <= ``max_batch_size`` ->
        the raw outputs as ``model.network`` returns them, in the engine's precision
        (``postprocess`` decodes in float32: bf16 keeps 8 bits of a box coordinate)."""
        w, h = self.input_size
        if (
            x.dim() != 4
            or tuple(x.shape[1:]) != (3, h, w)
            or not 1 <= x.shape[0] <= self.max_batch_size
        ):
            raise ValueError(
                f"engine input must be [1..{self.max_batch_size}, 3, {h}, {w}], "
                f"got {tuple(x.shape)}"
            )
        if x.device != self.device:
            raise ValueError(f"engine input is on {x.device}, the engine on {self.device}")
        with torch.inference_mode():
            return self._run(x.to(self._dtype))

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"Engine({s.backend}, {self.device}, {s.precision}, "
            f"max_batch_size={self.max_batch_size}, input_size={self.input_size})"
        )


def build_engine(model: DetectionModel, spec: EngineSpec) -> Engine:
    """Place (and compile) a copy of ``model.network`` as ``spec`` says, warm it up and check
    its outputs against the eager network's; see the module docstring for the errors."""
    if spec.backend not in _BACKENDS:
        raise BackendUnavailableError(
            f"inference.backend={spec.backend!r} is not one of {', '.join(_BACKENDS)}"
        )
    # Before the device: on a machine with neither, installing comes first.
    if spec.backend == "tensorrt":
        _import_torch_tensorrt()
    if spec.backend == "onnxruntime":
        import_onnxruntime()
    device = spec.target_device()
    reference = _output_shapes(model, model.network, _module_device(model.network))
    t0 = time.perf_counter()
    with torch.no_grad():
        # Under no_grad: a copied TorchScript module's parameters would otherwise come out
        # as non-leaf tensors (cloned with autograd on), which .to() warns about.
        net = copy.deepcopy(model.network)
    net = net.eval().to(device=device, dtype=spec.dtype)
    if spec.backend == "torch":
        engine = Engine(net, spec, device, model.input_size)
    elif spec.backend == "torch-compile":
        engine = Engine(_compiled(net, model, spec, device), spec, device, model.input_size)
    elif spec.backend == "onnxruntime":
        runner = onnxruntime_runner(net, model, len(reference))
        engine = Engine(runner, spec, device, model.input_size)
    else:
        engine = _tensorrt(net, model, spec, device, reference)
    _check(engine, reference, model.name)
    _log.info(
        "inference engine %r for %s ready in %.1f s%s",
        engine,
        model.name,
        time.perf_counter() - t0,
        " (from the engine cache)" if engine.loaded_from_cache else "",
    )
    return engine


# --- backends ------------------------------------------------------------------------


def _compiled(
    net: torch.nn.Module, model: DetectionModel, spec: EngineSpec, device: torch.device
) -> _Runner:
    w, h = model.input_size
    if any(isinstance(m, torch.jit.ScriptModule) for m in net.modules()):
        _log.warning(
            "%s is TorchScript, which torch.compile does not trace: it runs eagerly, as "
            "with backend 'torch'",
            model.name,
        )
    try:
        compiled: _Runner = torch.compile(net)
        with torch.inference_mode():
            # Dynamo specialises batch 1 (0/1 specialisation), so one graph for batch 1 and
            # one with the batch dimension marked dynamic for 2..max cover every live batch.
            compiled(torch.zeros(1, 3, h, w, device=device, dtype=spec.dtype))
            if spec.max_batch_size > 1:
                x = torch.zeros(spec.max_batch_size, 3, h, w, device=device, dtype=spec.dtype)
                torch._dynamo.mark_dynamic(x, 0)
                compiled(x)
    except Exception as e:  # Dynamo/Inductor raise many kinds; all mean "cannot compile"
        raise BackendUnavailableError(
            f"inference.backend='torch-compile': torch.compile of {model.name} on "
            f"{device} failed ({type(e).__name__}: {e}); use backend 'torch' instead"
        ) from e

    def run(x: torch.Tensor) -> Any:
        # Dynamo guards on the input's strides and on whether it is an inference tensor
        # (made under inference_mode, like the warm-up batches) or not (a caller's buffer
        # allocated outside it): either difference would recompile, tens of seconds, at
        # the first live batch. A contiguous copy made here, under the engine's
        # inference_mode, always matches the warm-up (one batch copy; the network costs
        # far more).
        return compiled(x.to(memory_format=torch.contiguous_format, copy=True))

    return run


def _tensorrt(
    net: torch.nn.Module,
    model: DetectionModel,
    spec: EngineSpec,
    device: torch.device,
    reference: _Shapes,
) -> Engine:
    trt = _import_torch_tensorrt()
    w, h = model.input_size
    n = spec.max_batch_size
    path = _cache_path(trt, model, spec, device)

    def engine_of(run: _Runner, *, cached: bool) -> Engine:
        engine = Engine(run, spec, device, model.input_size, loaded_from_cache=cached)
        _check(engine, reference, model.name)
        return engine

    if path is not None and path.is_file():
        try:
            return engine_of(torch.export.load(str(path)).module(), cached=True)
        except Exception as e:  # truncated, foreign or stale: rebuild it, never fatal
            _log.warning("TensorRT engine cache entry %s is unusable (%s); rebuilding", path, e)
            with contextlib.suppress(OSError):  # a read-only cache: rebuilt every start
                path.unlink(missing_ok=True)
    # Torch-TensorRT traces the network with torch.export at the opt batch; traced at 1,
    # the batch dimension would be specialised to 1 (0/1 specialisation) and not dynamic.
    opt = 1 if n == 1 else max(2, (n + 1) // 2)
    batch = trt.Input(
        min_shape=(1, 3, h, w),
        opt_shape=(opt, 3, h, w),
        max_shape=(n, 3, h, w),
        dtype=spec.dtype,
    )
    try:
        # The network is already cast to the precision; older Torch-TensorRT releases also
        # need enabled_precisions to pick fp16 kernels (newer ones follow the weights' types).
        compiled = trt.compile(
            net, ir="dynamo", inputs=[batch], enabled_precisions={spec.dtype}, device=device
        )
    except Exception as e:  # converter and builder errors have no common type
        raise BackendUnavailableError(
            f"inference.backend='tensorrt': Torch-TensorRT could not compile {model.name} "
            f"({type(e).__name__}: {e}); use backend 'torch-compile' or 'torch' instead"
        ) from e
    engine = engine_of(compiled, cached=False)
    if path is not None:
        _save_engine(trt, compiled, batch, path, lambda run: engine_of(run, cached=True))
    return engine


def _save_engine(
    trt: Any, compiled: Any, batch: Any, path: Path, check: Callable[[_Runner], object]
) -> None:
    """Write the engine to ``path`` once a reload of it passes the check; failing to cache
    costs the next start a rebuild, so it is logged, not raised."""
    # Torch-TensorRT releases differ in how a dynamic-batch module is saved: recent ones
    # infer the dynamic batch from the Input's min/max shapes when retracing, older ones
    # keep it only when saving the compiled graph as it is. The reload check tells.
    attempts: tuple[dict[str, Any], ...] = ({"arg_inputs": [batch]}, {"retrace": False})
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for kwargs in attempts:
            try:
                trt.save(compiled, str(tmp), output_format="exported_program", **kwargs)
                check(torch.export.load(str(tmp)).module())
            except Exception as e:  # exporter limitations, disk full: try the next way
                _log.info("saving the TensorRT engine with %s failed: %s", kwargs, e)
                continue
            os.replace(tmp, path)
            _log.info("TensorRT engine cached in %s", path)
            return
        _log.warning("TensorRT engine not cached in %s: no way of saving it reloads", path)
    except OSError as e:  # the cache directory cannot be made
        _log.warning("TensorRT engine not cached in %s: %s", path, e)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _cache_path(
    trt: Any, model: DetectionModel, spec: EngineSpec, device: torch.device
) -> Path | None:
    if not model.digest:
        # Without the weights' hash a cached engine could silently belong to other weights.
        _log.warning("model %s has no digest: its TensorRT engine is not cached", model.name)
        return None
    major, minor = torch.cuda.get_device_capability(device)
    key = {
        "format": _CACHE_FORMAT,
        "model": model.digest,
        "device": str(device),  # the saved program's non-TensorRT parts are placed on it
        "gpu": torch.cuda.get_device_name(device),
        "capability": f"{major}.{minor}",
        "torch": torch.__version__,
        "torch_tensorrt": getattr(trt, "__version__", "unknown"),
        "tensorrt": _version_of("tensorrt"),
        "precision": spec.precision,
        "input_size": list(model.input_size),
        "max_batch_size": spec.max_batch_size,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    name = re.sub(r"[^A-Za-z0-9._-]", "_", model.name) or "model"
    return spec.cache_dir / f"{name}-{spec.precision}-{digest[:24]}.pt2"


# --- availability --------------------------------------------------------------------


def _import_torch_tensorrt() -> Any:
    try:
        return importlib.import_module("torch_tensorrt")
    except Exception as e:  # absent, libnvinfer missing, built for another torch: all alike
        raise BackendUnavailableError(
            f"inference.backend='tensorrt' needs torch_tensorrt, which is not usable here "
            f"({type(e).__name__}: {e}); {_INSTALL_GPU}, or use backend 'torch-compile' or "
            "'torch'"
        ) from e


def _backend_value(backend: str, device: torch.device) -> int:
    if backend == "onnxruntime":
        return model_pb2.BACKEND_ONNXRUNTIME_CPU
    if backend == "tensorrt":
        return model_pb2.BACKEND_TENSORRT
    if backend == "torch-compile":
        return model_pb2.BACKEND_TORCH_COMPILE
    return model_pb2.BACKEND_TORCH_CUDA if device.type == "cuda" else model_pb2.BACKEND_TORCH_CPU


def _version_of(module: str) -> str:
    try:
        return str(importlib.import_module(module).__version__)
    except (ImportError, AttributeError, OSError):
        return "unknown"


# --- output check --------------------------------------------------------------------


def _flat_shapes(out: Any) -> _Shapes:
    """Tensor shapes of (nested tuples or lists of) outputs; other leaves by type name.
    Lists and tuples count alike: compiled graphs may return either."""
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, list | tuple):
        return [s for o in out for s in _flat_shapes(o)]
    return [type(out).__name__]


def _module_device(module: torch.nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def _output_shapes(model: DetectionModel, net: _Runner, device: torch.device) -> _Shapes:
    """The eager network's output shapes on a blank frame: what every engine must match."""
    w, h = model.input_size
    try:
        with torch.inference_mode():
            return _flat_shapes(net(torch.zeros(1, 3, h, w, device=device)))
    except Exception as e:  # any failure on a blank frame is a broken model
        raise ModelLoadError(f"{model.name} fails on a blank frame: {e}") from e


def _check(engine: Engine, reference: _Shapes, name: str) -> None:
    """Run blank batches of 1 and ``max_batch_size``; their output shapes must be the eager
    network's at batch 1 with the leading (batch) dimension scaled."""
    w, h = engine.input_size
    for b in sorted({1, engine.max_batch_size}):
        try:
            got = _flat_shapes(engine(torch.zeros(b, 3, h, w, device=engine.device)))
        except Exception as e:  # any failure here is a broken backend, reported at build
            raise ModelLoadError(f"{name}: {engine!r} fails on a blank batch of {b}: {e}") from e
        want = [(b, *s[1:]) if not isinstance(s, str) and s[:1] == (1,) else s for s in reference]
        if got != want:
            raise OutputFormatError(
                f"{name}: {engine!r} outputs {got} for a batch of {b}, the eager network {want}"
            )
