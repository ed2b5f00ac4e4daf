"""Adapter for user detectors in the Ultralytics YOLO export format (v8/v11 TorchScript).

Operators can bring a model trained on their own cameras. The format: input float
``[B,3,H,W]`` RGB in [0,1], letterboxed with grey 114 padding; output ``[B, 4+nc, N]`` where
rows 0-3 are the box centre x, y, width and height in input pixels and the other ``nc`` rows
are per-class scores (already sigmoid). There is no NMS inside, so it runs here, in torch.
COCO class ids are mapped to ours (``its.common.v1.ObjectClass``); classes with no mapping
(dogs, traffic lights, ...) are dropped. The output shape is checked at load on a blank
frame: a model that does not emit the declared format fails then, not at the first frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from its_camera_ai.inference.models._contract import Detections, ImageInput, detect_frames
from its_camera_ai.inference.models._errors import (
    ChecksumMismatchError,
    ModelLoadError,
    OutputFormatError,
    WeightsNotFoundError,
)
from its_camera_ai.inference.models._letterbox import PAD_VALUE, Letterbox, unletterbox_boxes
from its_camera_ai.inference.models._manifest import sha256_file

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
    over = (iou > iou_threshold).tolist()
    suppressed = [False] * len(over)
    keep = []
    for i, row in enumerate(over):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in range(i + 1, len(row)):
            if row[j]:
                suppressed[j] = True
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
        max_candidates: int = 3000,
        max_detections: int = 300,
        name: str = "yolo",
        digest: str = "",
    ) -> None:
        self.module = module.eval()
        self._network = _Predictions(self.module).eval()
        self._digest = digest
        self.input_size = input_size
        self.num_classes = num_classes
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
        # Model class index -> our id, 0 for classes we drop.
        self._lut = torch.zeros(num_classes, dtype=torch.int64)
        for src, dst in self.class_map.items():
            self._lut[src] = dst
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
        try:
            module = torch.jit.load(str(p), map_location="cpu")  # type: ignore[no-untyped-call]
        except (RuntimeError, ValueError) as e:
            raise ModelLoadError(f"YOLO model {p} is not a loadable TorchScript file: {e}") from e
        return cls(
            module,
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

    @property
    def version(self) -> str:
        return self._digest[:12] if self._digest else "unversioned"

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
        return PAD_VALUE

    @property
    def network(self) -> torch.nn.Module:
        return self._network

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        return batch  # YOLO exports take [0,1] RGB as it is

    def _predictions(self, raw: Any, batch: int) -> torch.Tensor:
        if not isinstance(raw, torch.Tensor):
            raise OutputFormatError(f"{self.name}: output is {type(raw).__name__}, not a tensor")
        if raw.dim() != 3 or raw.shape[0] != batch or raw.shape[1] != 4 + self.num_classes:
            raise OutputFormatError(
                f"{self.name}: output shape {tuple(raw.shape)} is not the YOLO format "
                f"[B, 4+{self.num_classes}, N] = [{batch}, {4 + self.num_classes}, N]"
            )
        return raw.float()

    def _check_output(self) -> None:
        w, h = self.input_size
        try:
            with torch.inference_mode():
                out = self._network(torch.zeros(1, 3, h, w))
        except Exception as e:  # any failure on a blank frame is a broken model
            raise ModelLoadError(f"{self.name}: fails on a blank {w}x{h} input: {e}") from e
        self._predictions(out, 1)

    def postprocess(
        self, raw: Any, placements: Sequence[Letterbox], score_thresholds: Sequence[float]
    ) -> list[Detections]:
        out = self._predictions(raw, len(placements)).cpu()
        results: list[Detections] = []
        for pred, lb, thr in zip(out.transpose(1, 2), placements, score_thresholds, strict=True):
            scores, cls = pred[:, 4:].max(dim=1)  # pred: [N, 4+nc]
            ours = self._lut[cls]
            m = (scores >= thr) & (ours > 0)
            scores, ours, xywh = scores[m], ours[m], pred[m, :4]
            if scores.numel() > self.max_candidates:
                top = scores.topk(self.max_candidates).indices
                scores, ours, xywh = scores[top], ours[top], xywh[top]
            boxes = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
            # Class-aware NMS in one pass: shift each class to its own region.
            offset = ours.to(boxes.dtype)[:, None] * (max(self.input_size) + 1.0)
            keep = nms(boxes + offset, scores, self.iou_threshold)[: self.max_detections]
            b = unletterbox_boxes(boxes[keep], lb)
            results.append(Detections(b, scores[keep], ours[keep]))
        return results

    def detect(self, images: ImageInput, score_threshold: float | None = None) -> list[Detections]:
        return detect_frames(self, self._network, images, score_threshold)
