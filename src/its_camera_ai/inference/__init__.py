"""The inference service: frames from the camera rings in, detections out to analytics.

    decoder's WatchCameraStatus ─▶ Feeds (a reader thread per ring) ─▶ DynamicBatcher
        ─▶ BatchRunner (preprocess, model, postprocess) ─▶ FrameSink ─▶ DetectionProducer
        ─▶ AnalyticsService.StreamDetectionBatches

This package is the service runtime: ring feeds (``Feeds``), dynamic batching, the batch
runner, the exactly-once ``DetectionProducer``, decoder discovery (``watch_decoder``), pixel
handling (``decode_image``, ``frame_rgb``), metrics, the ``InferenceService`` servicer, and the
service unit (``inference_unit``; ``server.UNIT`` for ``its-camera-ai serve``). The models it
runs are ``its_camera_ai.inference.models`` (shipped detectors, YOLO adapter, engines); how the
shipped detectors are trained and evaluated is ``its_camera_ai.inference.training``, which the
runtime never imports.
"""

from __future__ import annotations

from its_camera_ai.inference._batching import (
    REQUEST_LANE,
    BatcherClosed,
    DynamicBatcher,
    LaneFull,
    Work,
)
from its_camera_ai.inference._discovery import watch_decoder
from its_camera_ai.inference._feeds import Feeds, FrameSink, to_detection_protos
from its_camera_ai.inference._metrics import InferenceMetrics
from its_camera_ai.inference._pixels import (
    MAX_IMAGE_PIXELS,
    ImageError,
    decode_image,
    frame_rgb,
    image_size,
    letterbox_into,
)
from its_camera_ai.inference._producer import DetectionProducer, new_producer_id
from its_camera_ai.inference._producer_accounting import ProducerMetrics, ProducerStats
from its_camera_ai.inference._runner import BatchRunner
from its_camera_ai.inference._servicer import InferenceServicer, model_resource
from its_camera_ai.inference.server import (
    configured_model,
    feed_score_threshold,
    inference_unit,
)

__all__ = [
    "MAX_IMAGE_PIXELS",
    "REQUEST_LANE",
    "BatchRunner",
    "BatcherClosed",
    "DetectionProducer",
    "DynamicBatcher",
    "Feeds",
    "FrameSink",
    "ImageError",
    "InferenceMetrics",
    "InferenceServicer",
    "LaneFull",
    "ProducerMetrics",
    "ProducerStats",
    "Work",
    "configured_model",
    "decode_image",
    "feed_score_threshold",
    "frame_rgb",
    "image_size",
    "inference_unit",
    "letterbox_into",
    "model_resource",
    "new_producer_id",
    "to_detection_protos",
    "watch_decoder",
]
