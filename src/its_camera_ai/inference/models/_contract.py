"""What every detection model offers the service: the ``DetectionModel`` protocol.

Detection is split into three stages so that the service can time them separately, batch
frames of different cameras (and sizes) together, and hand the middle one to a backend
(eager torch, ``torch.compile``, TensorRT) without the model knowing:

1. the caller letterboxes frames into the model's fixed ``input_size`` (float ``[B,3,H,W]``
   in [0,1]) and calls ``normalise`` (in place);
2. ``network`` runs: a plain ``torch.nn.Module`` from that tensor to the raw outputs, the
   only part a backend compiles;
3. ``postprocess`` turns the raw outputs into one ``Detections`` per frame, in the frame's
   own pixels.

``detect`` composes the three for callers that want one call (scripts, evaluation);
``detect_frames`` is that composition with any runner in the middle (the model's own
network, or a backend's engine).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from its_camera_ai.inference.models._letterbox import Letterbox, as_batch, letterbox_any

__all__ = ["DetectionModel", "Detections", "ImageInput", "detect_frames", "frames_of"]

ImageInput = torch.Tensor | np.ndarray[Any, Any] | Sequence[torch.Tensor | np.ndarray[Any, Any]]


class Detections(NamedTuple):
    """One frame's detections, boxes in that frame's pixels (x0, y0, x1, y1)."""

    boxes: torch.Tensor  # float32 [N, 4]
    scores: torch.Tensor  # float32 [N]
    classes: torch.Tensor  # int64 [N], its.common.v1.ObjectClass numbers (CAR=1 ...)


class DetectionModel(Protocol):
    """A loaded, checked detector; see the module docstring for the three stages."""

    @property
    def name(self) -> str:
        """Short name, the {model} of "models/{model}"."""

    @property
    def version(self) -> str:
        """Version of the weights; changes whenever they change."""

    @property
    def digest(self) -> str:
        """sha256 of the weights: the identity compiled engines are cached under."""

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the network input."""

    @property
    def class_ids(self) -> tuple[int, ...]:
        """The its.common.v1.ObjectClass values the model can report."""

    @property
    def default_score_threshold(self) -> float: ...

    @property
    def pad_value(self) -> float:
        """Grey level, in [0,1], of the letterbox padding the model was trained with."""

    @property
    def network(self) -> torch.nn.Module:
        """Normalised float ``[B,3,H,W]`` -> raw outputs (a tensor or a tuple of them)."""

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """Letterboxed ``[B,3,H,W]`` in [0,1] -> network input (in place where possible)."""

    def postprocess(
        self, raw: Any, placements: Sequence[Letterbox], score_thresholds: Sequence[float]
    ) -> list[Detections]:
        """Raw outputs of a batch -> one ``Detections`` per frame, in its own pixels."""

    def detect(self, images: ImageInput, score_threshold: float | None = None) -> list[Detections]:
        """All three stages on frames of any sizes; one ``Detections`` per frame."""


def frames_of(images: ImageInput) -> list[torch.Tensor]:
    """Normalise the accepted inputs to a list of batches of one size each (uint8 NHWC or
    float NCHW, unconverted)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if isinstance(images, torch.Tensor):
        return [as_batch(images)]
    out = []
    for im in images:
        t = torch.from_numpy(np.ascontiguousarray(im)) if isinstance(im, np.ndarray) else im
        out.append(as_batch(t))
    return out


def detect_frames(
    model: DetectionModel,
    run: Callable[[torch.Tensor], Any],
    images: ImageInput,
    score_threshold: float | None = None,
    device: torch.device | str = "cpu",
) -> list[Detections]:
    """The three stages on frames of any sizes, ``run`` (``model.network`` or an engine on
    ``device``) in the middle; one ``Detections`` per frame, in input order."""
    thr = model.default_score_threshold if score_threshold is None else score_threshold
    results: list[Detections] = []
    for batch in frames_of(images):
        x, lb = letterbox_any(batch.to(device), model.input_size, model.pad_value)
        with torch.inference_mode():
            raw = run(model.normalise(x))
        n = x.shape[0]
        results += model.postprocess(raw, [lb] * n, [thr] * n)
    return results
