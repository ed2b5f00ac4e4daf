"""The models shipped in this package, by name, and loading any model from its manifest."""

from __future__ import annotations

from pathlib import Path

from its_camera_ai.inference.models._contract import DetectionModel
from its_camera_ai.inference.models._detector import ITS_DETECTOR_MANIFEST, load_detector
from its_camera_ai.inference.models._errors import ManifestError, ModelLoadError
from its_camera_ai.inference.models._manifest import manifest_format
from its_camera_ai.inference.models._yolo import YoloAdapter

__all__ = ["SHIPPED_MODELS", "load_model"]

_HERE = Path(__file__).parent
SHIPPED_MODELS: dict[str, Path] = {
    # Trained from scratch on the simulator: its six classes, its look (docs/benchmarks.md).
    "its-detector-v1": ITS_DETECTOR_MANIFEST,
    # YOLOX-nano trained on COCO (Apache-2.0, NOTICE): real-world vehicles and people.
    "yolox-nano-coco": _HERE / "yolox-nano-coco.json",
    # That, fine-tuned on simulator shards (scripts/finetune_yolox.py, its manifest's
    # ``training``): the default, the one that counts the real clips (docs/benchmarks.md).
    "yolox-nano-its": _HERE / "yolox-nano-its.json",
}


def load_model(
    manifest: str | Path, *, input_size: tuple[int, int] | None = None
) -> DetectionModel:
    """A shipped model by name, or any model by its manifest's path (its-detector-v1's
    format or an ``AdapterManifest``), checked at load; ``input_size`` (w, h, multiples of
    32): the network's input instead of the manifest's (``inference.input_size``)."""
    if isinstance(manifest, str) and manifest in SHIPPED_MODELS:
        manifest = SHIPPED_MODELS[manifest]
    if input_size is not None and not all(v > 0 and v % 32 == 0 for v in input_size):
        raise ModelLoadError(
            f"input_size {list(input_size)}: width and height must be positive multiples of 32"
        )
    kind = manifest_format(manifest)
    if kind == "its-adapter-manifest":
        return YoloAdapter.from_manifest(manifest, input_size=input_size)
    if kind == "its-detector-manifest":
        return load_detector(manifest, input_size=input_size)
    raise ManifestError(
        f"model manifest {manifest}: format {kind!r} is not its-detector-manifest or"
        f" its-adapter-manifest (shipped models: {sorted(SHIPPED_MODELS)})"
    )
