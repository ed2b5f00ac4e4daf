"""The models shipped in this package, by name, and loading any model from its manifest."""

from __future__ import annotations

from pathlib import Path

from its_camera_ai.inference.models._contract import DetectionModel
from its_camera_ai.inference.models._detector import ITS_DETECTOR_MANIFEST, load_detector
from its_camera_ai.inference.models._errors import ManifestError
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
    # ``training``): counts the real clips, calls their cars trucks (docs/benchmarks.md).
    "yolox-nano-its": _HERE / "yolox-nano-its.json",
}


def load_model(manifest: str | Path) -> DetectionModel:
    """A shipped model by name, or any model by its manifest's path (its-detector-v1's
    format or an ``AdapterManifest``), checked at load."""
    if isinstance(manifest, str) and manifest in SHIPPED_MODELS:
        manifest = SHIPPED_MODELS[manifest]
    kind = manifest_format(manifest)
    if kind == "its-adapter-manifest":
        return YoloAdapter.from_manifest(manifest)
    if kind == "its-detector-manifest":
        return load_detector(manifest)
    raise ManifestError(
        f"model manifest {manifest}: format {kind!r} is not its-detector-manifest or"
        f" its-adapter-manifest (shipped models: {sorted(SHIPPED_MODELS)})"
    )
