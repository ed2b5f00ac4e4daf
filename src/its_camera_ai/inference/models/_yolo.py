"""Adapter for detectors from elsewhere: Ultralytics YOLO (v8/v11) and YOLOX exports.

Operators can bring a model trained on their own cameras, and the product ships a COCO
YOLOX-nano. Two output formats:

* ``ultralytics``: ``[B, 4+nc, N]``, rows 0-3 the box centre x, y, width and height in input
  pixels, the other ``nc`` rows per-class scores (already sigmoid);
* ``yolox``: ``[B, N, 5+nc]`` over the anchor points of each output level (``strides``, a
  row-major grid per level): x, y offsets to add to the grid cell and multiply by the
  stride, log width and height (exp, times the stride), objectness and ``nc`` class scores,
  all probabilities in [0,1] as YOLOX exports them (score = objectness x class score).

The input is letterboxed (grey 114) like every model's; ``channels`` and ``pixel_scale`` say
what the network wants from there (Ultralytics: RGB in [0,1]; YOLOX: BGR in 0-255). There
is no NMS inside, so it runs here, in torch. The model's classes are mapped to ours
(``its.common.v1.ObjectClass``); classes with no mapping (dogs, traffic lights, ...) are
dropped. The output is checked at load on a blank frame: a model that does not emit the
declared format fails then, not at the first frame. ``from_manifest`` loads a model with its
``AdapterManifest`` (sha256 checked before the file is read; TorchScript, or ONNX through
torch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from its_camera_ai.inference.models._contract import Detections, ImageInput, detect_frames
from its_camera_ai.inference.models._errors import (
    ChecksumMismatchError,
    ModelLoadError,
    OutputFormatError,
    WeightsNotFoundError,
)
from its_camera_ai.inference.models._letterbox import PAD_VALUE, Letterbox, unletterbox_boxes
from its_camera_ai.inference.models._manifest import (
    CLASS_IDS,
    read_adapter_manifest,
    sha256_file,
    verified_weights,
)
from its_camera_ai.inference.models._network import set_memory_format
from its_camera_ai.inference.models._onnx import load_onnx

__all__ = ["COCO_TO_ITS", "YoloAdapter", "nms"]

# COCO (80 classes, Ultralytics order) -> its.common.v1.ObjectClass.
COCO_TO_ITS: dict[int, int] = {0: 6, 1: 5, 2: 1, 3: 4, 5: 3, 7: 2}


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS; indices of kept boxes in descending score order."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-9)
    # Greedy in score order: a box is kept unless a kept one above it overlaps it. Row
    # operations in numpy, one per kept box (a Python loop over all pairs took ~1 ms).
    over = (iou > iou_threshold).numpy()
    suppressed = np.zeros(len(over), dtype=bool)
    keep = []
    for i in range(len(over)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]
    return order[torch.tensor(keep, dtype=torch.int64)]


class _Predictions(torch.nn.Module):
    """The export's predictions alone: some exports return (predictions, protos/aux)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> Any:
        out = self.module(x)
        if isinstance(out, list | tuple):
            return out[0] if out else None
        return out


class YoloAdapter:
    """A YOLO-format module as a ``DetectionModel``, with the same ``detect`` as ``Detector``."""

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        input_size: tuple[int, int] = (640, 640),
        num_classes: int = 80,
        class_map: Mapping[int, int] | None = None,
        score_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        nms_groups: Sequence[Sequence[int]] = (),
        max_candidates: int = 3000,
        max_detections: int = 300,
        name: str = "yolo",
        digest: str = "",
        version: str | None = None,
        output: Literal["ultralytics", "yolox"] = "ultralytics",
        strides: Sequence[int] = (),
        channels: Literal["rgb", "bgr"] = "rgb",
        pixel_scale: float = 1.0,
        pad_value: float = PAD_VALUE,
    ) -> None:
        self.module = module.eval()
        # Channels-last weights, as ``inference_network`` lays out its-detector-v1's: oneDNN's
        # convolutions run natively on NHWC, so NCHW weights cost a reorder per layer.
        # YOLOX-nano's detect at 416x288 on CPU: 1.1-1.3x faster (docs/benchmarks.md).
        # The module is the adapter's from here; its values are unchanged.
        set_memory_format(self.module, torch.channels_last)
        self._network = _Predictions(self.module).eval()
        self._digest = digest
        self._version = version
        self.input_size = input_size
        self.num_classes = num_classes
        self.output = output
        self.strides = tuple(strides)
        self.channels = channels
        self.pixel_scale = pixel_scale
        self._pad_value = pad_value
        if (output == "yolox") != bool(self.strides):
            raise ModelLoadError(f"{name}: strides are required for yolox output, and only then")
        self._grid = _anchor_grid(input_size, self.strides) if self.strides else None
        self.class_map = dict(COCO_TO_ITS if class_map is None else class_map)
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_candidates = max_candidates
        self.max_detections = max_detections
        self._name = name
        bad = [c for c in self.class_map if not 0 <= c < num_classes]
        if bad:
            raise ModelLoadError(
                f"{name}: class_map names classes {bad} outside 0..{num_classes - 1}"
            )
        not_ours = sorted({d for d in self.class_map.values() if d not in CLASS_IDS.values()})
        if not_ours:
            raise ModelLoadError(f"{name}: class_map maps to {not_ours}, not our class ids")
        # Model class index -> our id, 0 for classes we drop.
        self._lut = torch.zeros(num_classes, dtype=torch.int64)
        for src, dst in self.class_map.items():
            self._lut[src] = dst
        # Our class id -> its NMS group: the group's least id, or its own in no group.
        self._nms_group = torch.arange(max(CLASS_IDS.values()) + 1)
        for group in nms_groups:
            if not set(group) <= set(CLASS_IDS.values()):
                raise ModelLoadError(f"{name}: nms_groups {list(group)} are not our class ids")
            self._nms_group[list(group)] = min(group)
        self._check_output()

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        sha256: str | None = None,
        input_size: tuple[int, int] = (640, 640),
        num_classes: int = 80,
        class_map: Mapping[int, int] | None = None,
        score_threshold: float = 0.25,
        iou_threshold: float = 0.45,
    ) -> YoloAdapter:
        """Load a TorchScript export (``yolo export format=torchscript``), optionally
        checking its sha256 first."""
        p = Path(path)
        if not p.is_file():
            raise WeightsNotFoundError(f"YOLO model {p} does not exist")
        digest = sha256_file(p)
        if sha256 is not None and digest != sha256.lower():
            raise ChecksumMismatchError(f"YOLO model {p} has sha256 {digest}, expected {sha256}")
        return cls(
            _torchscript(p),
            input_size=input_size,
            num_classes=num_classes,
            class_map=class_map,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            name=p.stem,
            digest=digest,
        )

    # --- DetectionModel ---------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @classmethod
    def from_manifest(
        cls, manifest_path: str | Path, *, input_size: tuple[int, int] | None = None
    ) -> YoloAdapter:
        """The model an ``AdapterManifest`` describes, its weights' sha256 checked first;
        ``input_size`` (w, h): run the network at that size instead of the manifest's."""
        manifest = read_adapter_manifest(manifest_path)
        weights = verified_weights(manifest_path, manifest)
        if manifest.weights_format == "onnx":
            module: torch.nn.Module = load_onnx(weights)
        else:
            module = _torchscript(weights)
        return cls(
            module,
            input_size=input_size or (manifest.input.width, manifest.input.height),
            num_classes=manifest.num_classes,
            class_map={i: CLASS_IDS[c] for i, c in manifest.class_map.items()},
            score_threshold=manifest.score_threshold,
            iou_threshold=manifest.iou_threshold,
            nms_groups=[[CLASS_IDS[c] for c in group] for group in manifest.nms_groups],
            name=manifest.name,
            digest=manifest.sha256,
            version=manifest.version,
            output=manifest.output,
            strides=manifest.strides,
            channels=manifest.input.channels,
            pixel_scale=manifest.input.scale,
            pad_value=manifest.input.letterbox_pad,
        )

    @property
    def version(self) -> str:
        # As its-detector-v1's: the manifest's version names the release, the digest
        # the weights (two files under one version are told apart in what they detected).
        parts = [p for p in (self._version, self._digest[:12]) if p]
        return "+".join(parts) if parts else "unversioned"

    @property
    def digest(self) -> str:
        return self._digest

    @property
    def class_ids(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.class_map.values())))

    @property
    def default_score_threshold(self) -> float:
        return self.score_threshold

    @property
    def pad_value(self) -> float:
        return self._pad_value

    @property
    def network(self) -> torch.nn.Module:
        return self._network

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels == "bgr":
            batch = batch.flip(1)
        return batch.mul_(self.pixel_scale) if self.pixel_scale != 1.0 else batch

    def _predictions(self, raw: Any, batch: int) -> torch.Tensor:
        """Raw outputs, checked, on the CPU, as ``[B, N, C]`` per anchor point: the
        ultralytics rows transposed (a view), yolox's as they are."""
        if not isinstance(raw, torch.Tensor):
            raise OutputFormatError(f"{self.name}: output is {type(raw).__name__}, not a tensor")
        if self._grid is None:
            if raw.dim() != 3 or raw.shape[0] != batch or raw.shape[1] != 4 + self.num_classes:
                raise OutputFormatError(
                    f"{self.name}: output shape {tuple(raw.shape)} is not the YOLO format "
                    f"[B, 4+{self.num_classes}, N] = [{batch}, {4 + self.num_classes}, N]"
                )
            return raw.float().cpu().transpose(1, 2)
        expected = (batch, self._grid.shape[0], 5 + self.num_classes)
        if tuple(raw.shape) != expected:
            raise OutputFormatError(
                f"{self.name}: output shape {tuple(raw.shape)} is not the YOLOX format"
                f" [B, anchor points, 5+{self.num_classes}] = {list(expected)} for input"
                f" {self.input_size} and strides {list(self.strides)}"
            )
        return raw.float().cpu()

    def _candidates(
        self, pred: torch.Tensor, limits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(frame, anchor point, best score, best class) of every anchor point whose best
        class clears its frame's ``limits`` ``[B]``, in frame order."""
        if self._grid is None:
            frame, anchor = (pred[..., 4:].amax(dim=2) >= limits[:, None]).nonzero(as_tuple=True)
            scores, cls = pred[frame, anchor, 4:].max(dim=1)
            return frame, anchor, scores, cls
        # score = objectness x class score, both probabilities: no class of an anchor point
        # scores above its objectness, so only points with objectness over the threshold (a
        # few dozen of the thousands) need their classes multiplied out and compared.
        objectness = pred[..., 4]
        frame, anchor = (objectness >= limits[:, None]).nonzero(as_tuple=True)
        scores, cls = (pred[frame, anchor, 5:] * objectness[frame, anchor, None]).max(dim=1)
        clear = scores >= limits[frame]
        return frame[clear], anchor[clear], scores[clear], cls[clear]

    def _decode(self, boxes: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """Selected raw boxes ``[M, 4]`` (of anchor points ``anchor``) -> x0, y0, x1, y1 in
        input pixels."""
        if self._grid is None:
            centre, size = boxes[:, :2], boxes[:, 2:]
        else:
            grid = self._grid[anchor]
            centre = (boxes[:, :2] + grid[:, :2]) * grid[:, 2:]
            size = boxes[:, 2:].exp() * grid[:, 2:]
        return torch.cat((centre - size / 2, centre + size / 2), 1)

    def _check_output(self) -> None:
        w, h = self.input_size
        try:
            with torch.inference_mode():
                out = self._network(torch.zeros(1, 3, h, w))
        except Exception as e:  # any failure on a blank frame is a broken model
            raise ModelLoadError(f"{self.name}: fails on a blank {w}x{h} input: {e}") from e
        # (Larger batches are checked by build_engine, up to the batch size configured.)
        self._predictions(out, 1)

    def postprocess(
        self, raw: Any, placements: Sequence[Letterbox], score_thresholds: Sequence[float]
    ) -> list[Detections]:
        pred = self._predictions(raw, len(placements))
        # Candidates of the whole batch at once (a few ops, not a few per frame), in frame
        # order; boxes are decoded for them alone. NMS and the mapping back are per frame.
        limits = torch.tensor(score_thresholds, dtype=pred.dtype)
        frame, anchor, scores, cls = self._candidates(pred, limits)
        ours = self._lut[cls]
        mapped = ours > 0
        frame, anchor, scores, ours = frame[mapped], anchor[mapped], scores[mapped], ours[mapped]
        boxes = self._decode(pred[frame, anchor, :4], anchor)
        # NMS per class (or group of classes) in one pass: each to its own region.
        offset = self._nms_group[ours].to(boxes.dtype) * (max(self.input_size) + 1.0)
        separated = boxes + offset[:, None]
        results: list[Detections] = []
        start = 0
        for lb, count in zip(
            placements, torch.bincount(frame, minlength=len(placements)).tolist(), strict=True
        ):
            mine = torch.arange(start, start + count)
            start += count
            if count > self.max_candidates:
                mine = mine[scores[mine].topk(self.max_candidates).indices]
            keep = mine[nms(separated[mine], scores[mine], self.iou_threshold)]
            keep = keep[: self.max_detections]
            results.append(Detections(unletterbox_boxes(boxes[keep], lb), scores[keep], ours[keep]))
        return results

    def detect(self, images: ImageInput, score_threshold: float | None = None) -> list[Detections]:
        return detect_frames(self, self._network, images, score_threshold)


def _torchscript(path: Path) -> torch.nn.Module:
    try:
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except (RuntimeError, ValueError) as e:
        raise ModelLoadError(f"model {path} is not a loadable TorchScript file: {e}") from e
    assert isinstance(module, torch.nn.Module)
    return module


def _anchor_grid(input_size: tuple[int, int], strides: Sequence[int]) -> torch.Tensor:
    """``[N, 4]``: each anchor point's cell (x, y) and its level's stride (twice), levels in
    order, each a row-major grid over the input."""
    width, height = input_size
    levels = []
    for stride in strides:
        ys, xs = torch.meshgrid(
            torch.arange(height // stride), torch.arange(width // stride), indexing="ij"
        )
        cells = torch.stack((xs, ys), dim=2).reshape(-1, 2).float()
        levels.append(torch.cat((cells, torch.full_like(cells, float(stride))), dim=1))
    return torch.cat(levels)
