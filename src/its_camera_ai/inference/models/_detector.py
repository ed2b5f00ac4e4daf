"""``Detector``: the shipped model behind one call, loaded and checked from its manifest.

Loading verifies everything before the first frame: the manifest's fields, the weights'
sha256 (before deserialising them), that the weights fit the network the manifest describes,
and that a forward pass on a blank input has the output shapes decoding expects.
``detect`` takes frames of any size, letterboxes them to the fixed input, runs the network,
decodes peaks and maps the boxes back to each frame's own pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from its_camera_ai.inference.models._contract import Detections, ImageInput, detect_frames
from its_camera_ai.inference.models._errors import ManifestError, ModelLoadError, OutputFormatError
from its_camera_ai.inference.models._heatmaps import peak_boxes
from its_camera_ai.inference.models._letterbox import PAD_VALUE, Letterbox, unletterbox_boxes
from its_camera_ai.inference.models._manifest import (
    CLASS_IDS,
    Decoding,
    InputSpec,
    Manifest,
    Normalisation,
    read_manifest,
    sha256_file,
    verified_weights,
    write_manifest,
)
from its_camera_ai.inference.models._network import STRIDE, CenterNet, NetConfig, inference_network

__all__ = ["ITS_DETECTOR_MANIFEST", "Detector", "load_detector"]

ITS_DETECTOR_MANIFEST = Path(__file__).parent / "its-detector-v1.json"


class Detector:
    """The simulator-trained detector, its-detector-v1 (a ``DetectionModel``); build it
    with ``load_detector``."""

    def __init__(self, model: CenterNet, manifest: Manifest, device: str = "cpu") -> None:
        self.manifest = manifest
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # What runs: BatchNorm folded, channels-last; ``model`` keeps the trained layout.
        self._network = inference_network(self.model)
        self.input_size = (manifest.input.width, manifest.input.height)
        self.class_ids = tuple(manifest.class_ids)
        self._class_lut = torch.tensor(manifest.class_ids, dtype=torch.int64)
        norm = manifest.normalisation
        self._mean = torch.tensor(norm.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(norm.std, device=self.device).view(1, 3, 1, 1)
        self._check_output()

    @classmethod
    def load(
        cls,
        manifest_path: str | Path = ITS_DETECTOR_MANIFEST,
        device: str = "cpu",
        input_size: tuple[int, int] | None = None,
    ) -> Detector:
        manifest = read_manifest(manifest_path)
        weights = verified_weights(manifest_path, manifest)
        if input_size is not None:
            # What runs: the manifest as loaded, at this input (the weights fit any).
            w, h = input_size
            placed = manifest.input.model_copy(update={"width": w, "height": h})
            manifest = manifest.model_copy(update={"input": placed})
        try:
            net = NetConfig.from_dict(manifest.net)
            model = CenterNet(net)
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"{manifest_path}: net {manifest.net} is not buildable: {e}") from e
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except (RuntimeError, KeyError, TypeError, ValueError, OSError) as e:
            raise ManifestError(
                f"{weights} does not fit the network {manifest_path} describes: {e}"
            ) from e
        return cls(model, manifest, device)

    # --- DetectionModel ---------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return f"{self.manifest.version}+{self.manifest.sha256[:12]}"

    @property
    def digest(self) -> str:
        return self.manifest.sha256

    @property
    def default_score_threshold(self) -> float:
        return self.manifest.decoding.score_threshold

    @property
    def pad_value(self) -> float:
        return self.manifest.input.letterbox_pad

    @property
    def network(self) -> torch.nn.Module:
        return self._network

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        mean, std = self._mean.to(batch.device), self._std.to(batch.device)
        return batch.sub_(mean).div_(std)

    def postprocess(
        self, raw: Any, placements: Sequence[Letterbox], score_thresholds: Sequence[float]
    ) -> list[Detections]:
        heat, ltrb = raw
        k = self.manifest.decoding.top_k
        boxes, scores, classes = peak_boxes(heat.float(), ltrb.float(), k)
        boxes, scores, classes = boxes.cpu(), scores.cpu(), classes.cpu()
        results = []
        for i, (lb, thr) in enumerate(zip(placements, score_thresholds, strict=True)):
            keep = scores[i] >= thr
            b = unletterbox_boxes(boxes[i][keep], lb)
            # Peaks whose box collapsed after clipping to the frame carry no object.
            ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            results.append(
                Detections(b[ok], scores[i][keep][ok], self._class_lut[classes[i][keep][ok]])
            )
        return results

    def detect(self, images: ImageInput, score_threshold: float | None = None) -> list[Detections]:
        """Frames (uint8 ``[B,H,W,3]`` RGB, float ``[B,3,H,W]`` in [0,1], or a list of
        frames of any sizes) -> one ``Detections`` per frame, in input order."""
        return detect_frames(self, self._network, images, score_threshold, self.device)

    def _check_output(self) -> None:
        w, h = self.input_size
        with torch.inference_mode():
            try:
                heat, ltrb = self._network(torch.zeros(1, 3, h, w, device=self.device))
            except Exception as e:  # any failure here is a broken model, reported at load
                raise ModelLoadError(
                    f"model {self.manifest.name} fails on a blank input: {e}"
                ) from e
        want_heat = (1, len(self.manifest.classes), h // STRIDE, w // STRIDE)
        want_box = (1, 4, h // STRIDE, w // STRIDE)
        if tuple(heat.shape) != want_heat or tuple(ltrb.shape) != want_box:
            raise OutputFormatError(
                f"model {self.manifest.name} outputs {tuple(heat.shape)} and {tuple(ltrb.shape)}, "
                f"its manifest implies {want_heat} and {want_box}"
            )


def load_detector(
    manifest_path: str | Path = ITS_DETECTOR_MANIFEST,
    device: str = "cpu",
    input_size: tuple[int, int] | None = None,
) -> Detector:
    """Load its-detector-v1 (or another its-detector manifest's), checking it fully; see
    ``Detector``. ``input_size`` (w, h): run the network at that size, not the manifest's."""
    return Detector.load(manifest_path, device, input_size)


def save_detector(
    model: CenterNet,
    cfg: Any,
    training: dict[str, Any],
    out_dir: Path,
    name: str,
    version: str,
) -> Manifest:
    """Write ``name.pt`` (state dict) and ``name.json`` (manifest with its sha256)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.pt"
    torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, weights)
    w, h = cfg.input_size
    manifest = Manifest(
        name=name,
        version=version,
        weights=weights.name,
        sha256=sha256_file(weights),
        size_bytes=weights.stat().st_size,
        classes=tuple(CLASS_IDS),  # the simulator's class order: car ... person
        class_ids=tuple(CLASS_IDS.values()),
        input=InputSpec(width=w, height=h, letterbox_pad=PAD_VALUE),
        normalisation=Normalisation(mean=cfg.mean, std=cfg.std),
        decoding=Decoding(stride=STRIDE, top_k=300, score_threshold=0.3),
        net=model.cfg.to_dict(),
        training=training,
    )
    write_manifest(out_dir / f"{name}.json", manifest)
    return manifest
