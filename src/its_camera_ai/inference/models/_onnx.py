"""ONNX detectors through torch: an ONNX graph rebuilt as a ``torch.nn.Module``.

Running an ONNX export in torch (instead of onnxruntime) gives it everything the service
does for its own network: the backends (eager, ``torch.compile``, Torch-TensorRT), bf16/fp16,
the dynamic batcher. Detector exports use a small set of operators (convolutions, SiLU as
sigmoid times input, concatenations, the focus slices, pooling, nearest upsampling and the
final reshapes); those are rebuilt here, and a graph with any other operator fails at load
with the operator named, never at the first frame.

Exports are often made for a batch of one: a ``Reshape`` whose constant target shape starts
with 1 keeps the input's batch size instead, so the module runs any batch (checked by the
conversion script, and by ``build_engine`` up to the configured batch size).

Parsing needs the ``onnx`` package; the shipped YOLOX model is converted once, to
TorchScript, by ``scripts/convert_onnx_detector.py``, so loading it needs no ONNX.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from its_camera_ai.inference.models._errors import ModelLoadError, WeightsNotFoundError

__all__ = ["OnnxModule", "load_onnx"]

_Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True, slots=True)
class _Node:
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, Any]


class OnnxModule(torch.nn.Module):
    """An ONNX graph's nodes run in order; convolutions are ``Conv2d`` modules (their weights
    parameters), other constants buffers."""

    def __init__(
        self,
        nodes: Sequence[_Node],
        constants: dict[str, np.ndarray[Any, Any]],
        input_name: str,
        output_names: Sequence[str],
    ) -> None:
        super().__init__()
        self._nodes = list(nodes)
        self._input = input_name
        self._outputs = tuple(output_names)
        self.convs = torch.nn.ModuleDict()
        # Constants other than convolution weights, by a registrable name.
        self._buffer_names: dict[str, str] = {}
        read_as_tensors: set[str] = set()
        for index, node in enumerate(self._nodes):
            if node.op == "Conv":
                self.convs[str(index)] = _conv(node, constants)
            else:
                read_as_tensors.update(node.inputs)
        for number, (name, value) in enumerate(sorted(constants.items())):
            if name not in read_as_tensors:
                continue
            buffer = f"constant_{number}"
            self.register_buffer(buffer, torch.from_numpy(np.array(value)), persistent=True)
            self._buffer_names[name] = buffer

    def _constant(self, name: str) -> torch.Tensor:
        tensor = getattr(self, self._buffer_names[name])
        assert isinstance(tensor, torch.Tensor)
        return tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        values: _Tensors = {self._input: x}
        for index, node in enumerate(self._nodes):
            if node.op == "Conv":
                values[node.outputs[0]] = self.convs[str(index)](values[node.inputs[0]])
                continue
            args = [
                values[name] if name in values else self._constant(name) for name in node.inputs
            ]
            result = _OPS[node.op](args, node.attributes, x.shape[0])
            values[node.outputs[0]] = result
        outputs = tuple(values[name] for name in self._outputs)
        return outputs[0] if len(outputs) == 1 else outputs


def _conv(node: _Node, constants: dict[str, np.ndarray[Any, Any]]) -> torch.nn.Conv2d:
    weight = torch.from_numpy(np.array(constants[node.inputs[1]], dtype=np.float32))
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    attributes = node.attributes
    pads = list(attributes.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:]:
        raise ModelLoadError(f"Conv {node.outputs[0]}: asymmetric pads {pads} are not supported")
    if weight.dim() != 4:
        raise ModelLoadError(f"Conv {node.outputs[0]}: only 2-D convolutions are supported")
    conv = torch.nn.Conv2d(
        weight.shape[1] * int(attributes.get("group", 1)),
        weight.shape[0],
        (weight.shape[2], weight.shape[3]),
        stride=tuple(attributes.get("strides", [1, 1])),
        padding=tuple(pads[:2]),
        dilation=tuple(attributes.get("dilations", [1, 1])),
        groups=int(attributes.get("group", 1)),
        bias=bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            assert conv.bias is not None
            conv.bias.copy_(torch.from_numpy(np.array(constants[bias], dtype=np.float32)))
    return conv


def _slice(args: list[torch.Tensor], attributes: dict[str, Any], batch: int) -> torch.Tensor:
    x, starts, ends = args[0], attributes["starts"], attributes["ends"]
    axes = attributes.get("axes", list(range(len(starts))))
    steps = attributes.get("steps", [1] * len(starts))
    index: list[slice] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        # Python's slicing clips to the size, as ONNX's does: no size is read (a traced
        # module would keep the one it was traced with).
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


def _resize(args: list[torch.Tensor], attributes: dict[str, Any], batch: int) -> torch.Tensor:
    scales = attributes["scales"]
    return F.interpolate(args[0], scale_factor=(scales[2], scales[3]), mode="nearest")


def _max_pool(args: list[torch.Tensor], attributes: dict[str, Any], batch: int) -> torch.Tensor:
    pads = list(attributes.get("pads", [0, 0, 0, 0]))
    return F.max_pool2d(
        args[0],
        kernel_size=tuple(attributes["kernel_shape"]),
        stride=tuple(attributes.get("strides", attributes["kernel_shape"])),
        padding=tuple(pads[:2]),
        ceil_mode=bool(attributes.get("ceil_mode", 0)),
    )


def _reshape(args: list[torch.Tensor], attributes: dict[str, Any], batch: int) -> torch.Tensor:
    x: torch.Tensor = args[0]
    shape = list(attributes["shape"])
    # A batch-of-one export's reshape keeps the batch the module was given.
    if shape and shape[0] == 1:
        shape[0] = batch
    shape = [x.shape[i] if n == 0 else n for i, n in enumerate(shape)]
    return x.reshape(shape)


_Op = Callable[[list[torch.Tensor], dict[str, Any], int], torch.Tensor]
_OPS: dict[str, _Op] = {
    "Add": lambda a, _, __: a[0] + a[1],
    "Sub": lambda a, _, __: a[0] - a[1],
    "Mul": lambda a, _, __: a[0] * a[1],
    "Div": lambda a, _, __: a[0] / a[1],
    "Sigmoid": lambda a, _, __: torch.sigmoid(a[0]),
    "Relu": lambda a, _, __: torch.relu(a[0]),
    "Exp": lambda a, _, __: torch.exp(a[0]),
    "Identity": lambda a, _, __: a[0],
    "Concat": lambda a, attributes, __: torch.cat(a, dim=int(attributes["axis"])),
    "Transpose": lambda a, attributes, __: a[0].permute(*attributes["perm"]),
    "Slice": _slice,
    "Resize": _resize,
    "MaxPool": _max_pool,
    "Reshape": _reshape,
}
# Nodes handled before the run: their outputs become constants.
_CONSTANT_OPS = {"Constant"}
SUPPORTED_OPS = frozenset({*_OPS, *_CONSTANT_OPS, "Conv"})
# Inputs after the first that must be constants, read once at load (as attributes).
_STATIC_INPUTS = {
    "Slice": ("starts", "ends", "axes", "steps"),
    "Reshape": ("shape",),
    "Resize": ("roi", "scales", "sizes"),
}


def load_onnx(path: Path) -> OnnxModule:
    """The ONNX file at ``path`` as a module; ``ModelLoadError`` naming what is wrong (an
    unsupported operator, several inputs, a file that is not ONNX)."""
    try:
        import onnx  # noqa: PLC0415 - a second's import, needed only here
        from onnx import numpy_helper  # noqa: PLC0415
    except ImportError:
        raise ModelLoadError(
            f"{path}: loading ONNX models needs the onnx package (pip install onnx, a"
            " dependency of its-camera-ai), or convert it once with"
            " scripts/convert_onnx_detector.py"
        ) from None
    if not path.is_file():
        raise WeightsNotFoundError(f"ONNX model {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # the parser raises several kinds for a file that is not ONNX
        raise ModelLoadError(f"{path} is not a readable ONNX file: {exc}") from exc
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = []
    unsupported = sorted({n.op_type for n in graph.node} - SUPPORTED_OPS)
    if unsupported:
        raise ModelLoadError(
            f"{path}: operators {unsupported} are not supported by the torch loader"
            f" (supported: {sorted(SUPPORTED_OPS)})"
        )
    for node in graph.node:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attributes = {k: v.decode() if isinstance(v, bytes) else v for k, v in attributes.items()}
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(attributes["value"])
            continue
        inputs = tuple(node.input)
        if node.op_type in _STATIC_INPUTS:
            for key, name in zip(_STATIC_INPUTS[node.op_type], inputs[1:], strict=False):
                if name and name not in constants:
                    raise ModelLoadError(
                        f"{path}: {node.op_type} {node.output[0]} takes its {key} from the"
                        " graph; only constant ones are supported"
                    )
                if name:
                    attributes[key] = constants[name].tolist()
            inputs = inputs[:1]
        nodes.append(_Node(node.op_type, inputs, tuple(node.output), attributes))
    images = [i.name for i in graph.input if i.name not in constants]
    if len(images) != 1:
        raise ModelLoadError(f"{path}: a detector has one image input, this one has {images}")
    _check_nodes(path, nodes, constants)
    return OnnxModule(nodes, constants, images[0], [o.name for o in graph.output]).eval()


def _check_nodes(
    path: Path, nodes: Sequence[_Node], constants: dict[str, np.ndarray[Any, Any]]
) -> None:
    """What the operators here do not implement fails now, not as wrong numbers later."""
    for node in nodes:
        attributes = node.attributes
        if attributes.get("auto_pad", "NOTSET") != "NOTSET":
            raise ModelLoadError(
                f"{path}: {node.op} {node.outputs[0]}: auto_pad {attributes['auto_pad']!r} is"
                " not supported (explicit pads are)"
            )
        if node.op == "Conv" and not all(name in constants for name in node.inputs[1:] if name):
            raise ModelLoadError(
                f"{path}: Conv {node.outputs[0]} takes its weights from the graph; only"
                " constant weights are supported"
            )
        if node.op == "MaxPool" and set(attributes.get("dilations", [1])) != {1}:
            raise ModelLoadError(f"{path}: MaxPool {node.outputs[0]}: dilations unsupported")
        if node.op == "Slice" and min(attributes.get("steps", [1])) <= 0:
            raise ModelLoadError(f"{path}: Slice {node.outputs[0]}: only positive steps")
        if node.op == "Resize" and (
            attributes.get("mode") != "nearest"
            or attributes.get("coordinate_transformation_mode") != "asymmetric"
            or attributes.get("nearest_mode", "round_prefer_floor") != "floor"
            or len(attributes.get("scales", [])) != 4
            or attributes["scales"][:2] != [1.0, 1.0]
        ):
            raise ModelLoadError(
                f"{path}: Resize {node.outputs[0]} is {attributes}; only nearest (asymmetric,"
                " floor) upsampling by constant spatial scales is supported"
            )
