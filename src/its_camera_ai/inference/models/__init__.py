"""The detection models the inference service runs: the shipped detector and user YOLO models.

    from its_camera_ai.inference.models import load_detector
    det = load_detector()                       # shipped weights; sha256 checked
    for d in det.detect(frames_uint8_bhwc):      # one Detections per frame
        d.boxes, d.scores, d.classes             # original pixels, [0,1], ObjectClass ids

The shipped model (``its-detector-v1.{pt,json}``, in this package's folder) is a small
anchor-free heatmap detector trained from scratch on the simulator (``its_camera_ai.sim``; see
``its_camera_ai.inference.training``); its manifest records the input size, normalisation,
training config, sha256 and evaluation figures. ``YoloAdapter`` runs an Ultralytics YOLO
TorchScript export (``[B, 4+nc, N]``) behind the same ``detect``, COCO classes mapped to ours.
``build_engine`` places a model's network on a backend (eager torch, ``torch.compile``,
TensorRT), device and precision. Every problem with a model surfaces at load time as a
``ModelLoadError``.

Needs torch and pydantic only (no gRPC service code): ``scripts/gpu_check.py`` imports it on a
bare GPU machine.
"""

from __future__ import annotations

from its_camera_ai.inference.models._backends import Engine, EngineSpec, build_engine
from its_camera_ai.inference.models._contract import (
    DetectionModel,
    Detections,
    ImageInput,
    detect_frames,
)
from its_camera_ai.inference.models._detector import (
    DEFAULT_MANIFEST,
    Detector,
    load_detector,
    save_detector,
)
from its_camera_ai.inference.models._errors import (
    BackendUnavailableError,
    ChecksumMismatchError,
    ManifestError,
    ModelLoadError,
    OutputFormatError,
    WeightsNotFoundError,
)
from its_camera_ai.inference.models._heatmaps import max_filter_3x3, peak_boxes
from its_camera_ai.inference.models._letterbox import (
    PAD_VALUE,
    Letterbox,
    letterbox,
    letterbox_any,
    to_float_batch,
    unletterbox_boxes,
)
from its_camera_ai.inference.models._manifest import (
    CLASS_IDS,
    Manifest,
    read_manifest,
    write_manifest,
)
from its_camera_ai.inference.models._network import (
    STRIDE,
    CenterNet,
    NetConfig,
    count_gflops,
    inference_network,
    set_memory_format,
)
from its_camera_ai.inference.models._yolo import COCO_TO_ITS, YoloAdapter, nms

__all__ = [
    "CLASS_IDS",
    "COCO_TO_ITS",
    "DEFAULT_MANIFEST",
    "PAD_VALUE",
    "STRIDE",
    "BackendUnavailableError",
    "CenterNet",
    "ChecksumMismatchError",
    "DetectionModel",
    "Detections",
    "Detector",
    "Engine",
    "EngineSpec",
    "ImageInput",
    "Letterbox",
    "Manifest",
    "ManifestError",
    "ModelLoadError",
    "NetConfig",
    "OutputFormatError",
    "WeightsNotFoundError",
    "YoloAdapter",
    "build_engine",
    "count_gflops",
    "detect_frames",
    "inference_network",
    "letterbox",
    "letterbox_any",
    "load_detector",
    "max_filter_3x3",
    "nms",
    "peak_boxes",
    "read_manifest",
    "save_detector",
    "set_memory_format",
    "to_float_batch",
    "unletterbox_boxes",
    "write_manifest",
]
