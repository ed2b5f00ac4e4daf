"""Vehicle detection for the inference service: the shipped detector and user YOLO models.

    from its_camera_ai.inference import load_detector
    det = load_detector()                       # shipped weights; sha256 checked
    for d in det.detect(frames_uint8_bhwc):      # one Detections per frame
        d.boxes, d.scores, d.classes             # original pixels, [0,1], ObjectClass ids

The shipped model (``models/its-detector-v1.{pt,json}``) is a small anchor-free heatmap
detector trained from scratch on the simulator (``its_camera_ai.sim``); its manifest records the
input size, normalisation, training config, sha256 and evaluation figures. ``YoloAdapter``
runs an Ultralytics YOLO TorchScript export (``[B, 4+nc, N]``) behind the same ``detect``,
COCO classes mapped to ours. Every problem with a model surfaces at load time as a
``ModelLoadError``.
"""

from __future__ import annotations

from its_camera_ai.inference._contract import DetectionModel, Detections
from its_camera_ai.inference._detector import DEFAULT_MANIFEST, Detector, load_detector
from its_camera_ai.inference._errors import (
    ChecksumMismatchError,
    ManifestError,
    ModelLoadError,
    OutputFormatError,
    WeightsNotFoundError,
)
from its_camera_ai.inference._manifest import CLASS_IDS, Manifest, read_manifest
from its_camera_ai.inference._yolo import COCO_TO_ITS, YoloAdapter

__all__ = [
    "CLASS_IDS",
    "COCO_TO_ITS",
    "DEFAULT_MANIFEST",
    "ChecksumMismatchError",
    "DetectionModel",
    "Detections",
    "Detector",
    "Manifest",
    "ManifestError",
    "ModelLoadError",
    "OutputFormatError",
    "WeightsNotFoundError",
    "YoloAdapter",
    "load_detector",
    "read_manifest",
]
