"""The ``onnxruntime`` backend: the network exported to ONNX at build and run by ONNX
Runtime's CPU kernels, in float32.

The CPU's default (``inference.backend: auto``). The export (torch's TorchScript-based
exporter, about a second) happens at every start, so there is no file to go stale; ONNX
Runtime then runs the default model 1.6-2.2x faster than torch's float32 at batch 1 and 8
with the same outputs to 1e-4 (docs/benchmarks.md, "ONNX Runtime"). ``onnx`` and
``onnxruntime`` are dependencies of the package; an install without them can still run
backend "torch".
"""

from __future__ import annotations

import importlib
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from its_camera_ai.inference.models._contract import DetectionModel
from its_camera_ai.inference.models._errors import BackendUnavailableError

__all__ = ["import_onnxruntime", "onnxruntime_runner"]

_INSTALL_ONNXRUNTIME = "pip install onnx onnxruntime"


def import_onnxruntime() -> Any:
    try:
        importlib.import_module("onnx")  # torch's ONNX exporter writes through it
        return importlib.import_module("onnxruntime")
    except Exception as e:  # absent or broken: alike for the operator
        raise BackendUnavailableError(
            f"inference.backend='onnxruntime' needs onnx and onnxruntime, which are not "
            f"usable here ({type(e).__name__}: {e}); {_INSTALL_ONNXRUNTIME} (dependencies of "
            "its-camera-ai), or set inference.backend 'torch'"
        ) from e


def onnxruntime_runner(
    net: torch.nn.Module, model: DetectionModel, outputs: int
) -> Callable[[torch.Tensor], Any]:
    """``net`` (``outputs`` flat outputs) exported and loaded in ONNX Runtime, or
    ``BackendUnavailableError`` naming why not."""
    ort = import_onnxruntime()
    w, h = model.input_size
    names = [f"output{i}" for i in range(outputs)]
    try:
        with tempfile.TemporaryDirectory(prefix="its-onnx-") as directory:
            onnx_model = Path(directory) / "network.onnx"
            _export_onnx(net, (h, w), onnx_model, names)
            onnx_bytes = onnx_model.read_bytes()
        options = ort.SessionOptions()
        # torch_threads governs both runtimes; ONNX Runtime's pool would otherwise take
        # every core. Its workers spin while a run lasts (waiting for the next layer's work
        # without sleeping: YOLOX-nano's ~110 small layers made the sleeping pool 1.3x
        # slower at two threads) and stop when it returns, so between batches they leave the
        # cores to the decoder and analytics (docs/benchmarks.md, "Four 720p30 cameras on the
        # Intel kind").
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # exporter and runtime errors have no common type
        raise BackendUnavailableError(
            f"inference.backend='onnxruntime': {model.name} could not be exported to ONNX "
            f"and loaded ({type(e).__name__}: {e}); use backend 'torch' instead"
        ) from e

    def run(x: torch.Tensor) -> Any:
        found = session.run(names, {"images": x.contiguous().numpy()})
        tensors = tuple(torch.from_numpy(o) for o in found)
        return tensors[0] if outputs == 1 else tensors

    return run


def _export_onnx(
    net: torch.nn.Module, size: tuple[int, int], path: Path, outputs: list[str]
) -> None:
    example = torch.zeros(2, 3, *size)
    with warnings.catch_warnings():
        # torch's TorchScript-based exporter is deprecated, but it is the one that takes
        # TorchScript networks (every shipped model); its other warnings are about tracing
        # Python modules, which build_engine's output check covers.
        warnings.simplefilter("ignore")
        if not isinstance(net, torch.jit.ScriptModule):
            # The exporter's own trace refuses a Python wrapper around a loaded TorchScript
            # network (a YOLO adapter's), torch.jit.trace takes it.
            net = torch.jit.trace(net, example, check_trace=False)  # type: ignore[no-untyped-call]
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]},
            opset_version=17,
        )
