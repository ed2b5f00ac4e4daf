"""Training and evaluation of the shipped detectors (``its_camera_ai.inference.models``).

``train`` fits the heatmap network on simulator shards (``load_trainset``, ``augment``,
``build_targets``); ``finetune_yolox`` fine-tunes the shipped YOLOX-nano (COCO) on the same
shards (``yolox_loss``: SimOTA); ``evaluate_detector`` scores a detector on held-out
simulator scenes, mAP overall and per condition tag (``evaluate``: COCO-style mAP@0.5 and
mAP@0.5:0.95), and holds the accuracy gate the shipped weights are checked against. Used by
``scripts/train_detector.py``, ``scripts/finetune_yolox.py``, ``scripts/evaluate_detector.py``
and the tests; never imported by the serving runtime.
"""

from __future__ import annotations

from its_camera_ai.inference.training._data import (
    TrainSet,
    augment,
    build_targets,
    crop_size_argument,
    jitter_colour,
    load_trainset,
    parse_size,
    render_missing,
    shard_files,
    size_argument,
)
from its_camera_ai.inference.training._evaluate import (
    CI_SEEDS,
    CI_TOLERANCE,
    EVAL_SCORE_THRESHOLD,
    GATE_CONDITION_MAP50,
    GATE_OVERALL_MAP50,
    HEIGHT_BUCKETS,
    HELD_OUT_SEEDS,
    REPORTED_TAGS,
    Sample,
    class_agnostic,
    evaluate_detector,
    format_table,
)
from its_camera_ai.inference.training._map import (
    IOU_THRESHOLDS,
    ImageRecord,
    MapResult,
    average_precision,
    box_iou,
    evaluate,
)
from its_camera_ai.inference.training._train import (
    TrainConfig,
    WeightAverage,
    class_weights,
    focal_loss,
    giou_loss,
    train,
)
from its_camera_ai.inference.training._yolox import (
    SIM_TO_COCO,
    FinetuneConfig,
    anchor_points,
    finetune_yolox,
    yolox_loss,
)

__all__ = [
    "CI_SEEDS",
    "CI_TOLERANCE",
    "EVAL_SCORE_THRESHOLD",
    "GATE_CONDITION_MAP50",
    "GATE_OVERALL_MAP50",
    "HEIGHT_BUCKETS",
    "HELD_OUT_SEEDS",
    "IOU_THRESHOLDS",
    "REPORTED_TAGS",
    "SIM_TO_COCO",
    "FinetuneConfig",
    "ImageRecord",
    "MapResult",
    "Sample",
    "TrainConfig",
    "TrainSet",
    "WeightAverage",
    "anchor_points",
    "augment",
    "average_precision",
    "box_iou",
    "build_targets",
    "class_agnostic",
    "class_weights",
    "crop_size_argument",
    "evaluate",
    "evaluate_detector",
    "finetune_yolox",
    "focal_loss",
    "format_table",
    "giou_loss",
    "jitter_colour",
    "load_trainset",
    "parse_size",
    "render_missing",
    "shard_files",
    "size_argument",
    "train",
    "yolox_loss",
]
