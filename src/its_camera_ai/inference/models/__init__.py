"""The detection models the inference service runs: the shipped detectors and user models.

    from its_camera_ai.inference.models import load_model
    det = load_model("yolox-nano-coco")          # a shipped model, or a manifest's path
    for d in det.detect(frames_uint8_bhwc):      # one Detections per frame
        d.boxes, d.scores, d.classes             # original pixels, [0,1], ObjectClass ids

Three models ship in this package's folder (``SHIPPED_MODELS``), each a weights file with
its manifest (sha256 checked before the file is read): ``its-detector-v1``, a small
anchor-free heatmap detector trained from scratch on the simulator (``its_camera_ai.sim``; see
``its_camera_ai.inference.training``); ``yolox-nano-coco``, YOLOX-nano trained on COCO
(Apache-2.0, see NOTICE), converted from its ONNX export once by
``scripts/convert_onnx_detector.py``; and ``yolox-nano-its``, that network fine-tuned on the
simulator by ``scripts/finetune_yolox.py``. ``YoloAdapter`` runs Ultralytics and YOLOX exports
(TorchScript, or ONNX rebuilt in torch by ``load_onnx``) behind the same ``detect``, their
classes mapped to ours; an ``AdapterManifest`` declares a model's format and preprocessing.
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
    ITS_DETECTOR_MANIFEST,
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
    letterbox_into,
    to_float_batch,
    unletterbox_boxes,
)
from its_camera_ai.inference.models._manifest import (
    CLASS_IDS,
    AdapterInput,
    AdapterManifest,
    Manifest,
    read_adapter_manifest,
    read_manifest,
    sha256_file,
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
from its_camera_ai.inference.models._onnx import load_onnx
from its_camera_ai.inference.models._shipped import SHIPPED_MODELS, load_model
from its_camera_ai.inference.models._yolo import COCO_TO_ITS, YoloAdapter, nms

__all__ = [
    "CLASS_IDS",
    "COCO_TO_ITS",
    "ITS_DETECTOR_MANIFEST",
    "PAD_VALUE",
    "SHIPPED_MODELS",
    "STRIDE",
    "AdapterInput",
    "AdapterManifest",
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
    "letterbox_into",
    "load_detector",
    "load_model",
    "load_onnx",
    "max_filter_3x3",
    "nms",
    "peak_boxes",
    "read_adapter_manifest",
    "read_manifest",
    "save_detector",
    "set_memory_format",
    "sha256_file",
    "to_float_batch",
    "unletterbox_boxes",
    "write_manifest",
]
