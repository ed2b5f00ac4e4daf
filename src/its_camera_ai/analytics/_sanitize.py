"""Input hygiene: frames and detections are checked, repaired or dropped, never trusted.

Detectors and producers misbehave in the field: NaN scores after a bad cast, boxes with
x_max < x_min, boxes slightly or entirely off the frame, class ids from another label map,
a frame flooded with thousands of boxes. Each problem is handled with a counted reason
(``DetectionIssue``); nothing raises. The frame-level checks (sequence, time, size) live with
the engine, which owns the stream state they depend on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.analytics._records import NUM_CLASSES, DetectionIssue
from its_camera_ai.common import AnalyticsEngineSettings

__all__ = ["CleanDetections", "as_detection_array", "sanitize_detections"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class CleanDetections:
    boxes: F64  # (M, 4) inside the frame, positive size
    scores: F64  # (M,) in [0, 1]
    classes: I64  # (M,) 1..6
    rows: I64  # (M,) row of each in the input array
    issues: dict[DetectionIssue, int]


def as_detection_array(detections: Any) -> F64 | None:
    """The (N, 6) float array, or None when the input cannot be read as one."""
    try:
        arr = np.asarray(detections, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    if arr.size == 0:
        return np.zeros((0, 6))
    if arr.ndim != 2 or arr.shape[1] != 6:
        return None
    return arr


def _note(
    issues: dict[DetectionIssue, int], issue: DetectionIssue, mask: NDArray[np.bool_]
) -> None:
    n = int(np.count_nonzero(mask))
    if n:
        issues[issue] = issues.get(issue, 0) + n


def _all_good(
    det: F64, width: int, height: int, cfg: AnalyticsEngineSettings
) -> CleanDetections | None:
    """The common case in one pass: every detection valid as is (None otherwise)."""
    if len(det) > cfg.max_detections:
        return None
    x1, y1, x2, y2, score, cls = det.T
    with np.errstate(invalid="ignore", over="ignore"):
        w, h = x2 - x1, y2 - y1
        ok = (
            (x1 >= 0) & (y1 >= 0) & (x2 <= width) & (y2 <= height)
            & (w >= cfg.min_box_px) & (h >= cfg.min_box_px)
            & (w * h <= cfg.max_box_area_fraction * float(width) * float(height))
            & (score >= 0.0) & (score <= 1.0)
            & (cls >= 1) & (cls < NUM_CLASSES) & (cls == np.floor(cls))
        )  # fmt: skip
    # NaN fails every comparison, so ``ok`` also excludes non-finite values.
    if not ok.all():
        return None
    return CleanDetections(
        boxes=det[:, 0:4].copy(),
        scores=det[:, 4].copy(),
        classes=cls.astype(np.int64),
        rows=np.arange(len(det), dtype=np.int64),
        issues={},
    )


def sanitize_detections(
    det: F64, width: int, height: int, cfg: AnalyticsEngineSettings
) -> CleanDetections:
    fast = _all_good(det, width, height, cfg)
    if fast is not None:
        return fast
    issues: dict[DetectionIssue, int] = {}
    n = len(det)
    keep = np.ones(n, dtype=np.bool_)
    box = det[:, 0:4]
    with np.errstate(invalid="ignore", over="ignore"):
        bad_box = ~np.all(np.isfinite(box), axis=1)
        _note(issues, DetectionIssue.DROP_NONFINITE_BOX, bad_box)
        keep &= ~bad_box
        bad_score = keep & ~np.isfinite(det[:, 4])
        _note(issues, DetectionIssue.DROP_NONFINITE_SCORE, bad_score)
        keep &= ~bad_score
        cls = det[:, 5]
        known = np.isfinite(cls) & (cls == np.round(cls)) & (cls >= 1) & (cls < NUM_CLASSES)
        _note(issues, DetectionIssue.DROP_UNKNOWN_CLASS, keep & ~known)
        keep &= known
        nonpos = keep & ~((box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1]))
        _note(issues, DetectionIssue.DROP_NONPOSITIVE_SIZE, nonpos)
        keep &= ~nonpos
        outside = keep & (
            (box[:, 2] <= 0) | (box[:, 3] <= 0) | (box[:, 0] >= width) | (box[:, 1] >= height)
        )
        _note(issues, DetectionIssue.DROP_OUTSIDE_FRAME, outside)
        keep &= ~outside
    rows = np.flatnonzero(keep)
    raw = box[rows]
    clipped = np.empty_like(raw)
    np.clip(raw[:, 0::2], 0.0, float(width), out=clipped[:, 0::2])
    np.clip(raw[:, 1::2], 0.0, float(height), out=clipped[:, 1::2])
    _note(issues, DetectionIssue.CLAMPED_TO_FRAME, np.any(clipped != raw, axis=1))
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    small = (w < cfg.min_box_px) | (h < cfg.min_box_px)
    _note(issues, DetectionIssue.DROP_TOO_SMALL, small)
    absurd = ~small & (w * h > cfg.max_box_area_fraction * float(width) * float(height))
    _note(issues, DetectionIssue.DROP_ABSURD_SIZE, absurd)
    ok = ~(small | absurd)
    rows, clipped = rows[ok], clipped[ok]
    scores = det[rows, 4]
    clamped = np.clip(scores, 0.0, 1.0)
    _note(issues, DetectionIssue.CLAMPED_SCORE, clamped != scores)
    if len(rows) > cfg.max_detections:
        # Keep the most confident; stable sort keeps the choice deterministic among ties.
        order = np.argsort(-clamped, kind="stable")[: cfg.max_detections]
        order.sort()
        _note(issues, DetectionIssue.DROP_OVER_LIMIT, np.ones(len(rows) - len(order), bool))
        rows, clipped, clamped = rows[order], clipped[order], clamped[order]
    return CleanDetections(
        boxes=clipped,
        scores=clamped,
        classes=det[rows, 5].astype(np.int64),
        rows=rows.astype(np.int64),
        issues=issues,
    )
