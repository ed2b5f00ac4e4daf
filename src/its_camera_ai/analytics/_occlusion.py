"""Box geometry of partly hidden road users, for the tracker: how much of a box nearer
traffic covers, whether its bottom edge is hidden, and where a cut box really is.

Occluders stand in front, which in a road camera's image means lower: a detection whose box
reaches lower covers the one behind it, and cuts its visible extent short.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["CUT_FRACTION", "anchored", "expand", "foot_hidden", "occluded"]

F64 = NDArray[np.float64]
IntArr = NDArray[np.intp]

# A box dimension under this fraction of the prediction counts as cut by an occluder.
CUT_FRACTION = 0.9


def occluded(track_boxes: F64, boxes: F64, own: IntArr) -> F64:
    """Fraction of each track box covered by other detections lower in the image."""
    if len(track_boxes) == 0 or len(boxes) < 2:
        return np.zeros(len(track_boxes))
    ix = np.minimum(track_boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(
        track_boxes[:, None, 0], boxes[None, :, 0]
    )
    iy = np.minimum(track_boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(
        track_boxes[:, None, 1], boxes[None, :, 1]
    )
    inter = np.maximum(ix, 0.0) * np.maximum(iy, 0.0)
    in_front = boxes[None, :, 3] > track_boxes[:, None, 3]
    in_front[np.arange(len(own)), own] = False
    wh = track_boxes[:, 2:4] - track_boxes[:, 0:2]
    area = np.maximum(wh[:, 0] * wh[:, 1], 1e-9)
    # Overlaps of several occluders are summed (an upper bound; they rarely overlap each other).
    cover: F64 = np.minimum(np.where(in_front, inter, 0.0).sum(axis=1) / area, 1.0)
    return cover


def foot_hidden(boxes: F64, own: IntArr) -> NDArray[np.bool_]:
    """Whether the bottom-centre of each own box lies inside another box reaching lower in
    the image (standing in front of it), where it may be cut short."""
    if len(own) == 0 or len(boxes) < 2:
        return np.zeros(len(own), dtype=np.bool_)
    me = boxes[own]
    cx, bottom = (me[:, 0:1] + me[:, 2:3]) * 0.5, me[:, 3:4]
    b = boxes[None, :, :]
    inside = (b[..., 0] <= cx) & (cx <= b[..., 2]) & (b[..., 1] <= bottom) & (bottom < b[..., 3])
    inside[np.arange(len(own)), own] = False
    out: NDArray[np.bool_] = np.any(inside, axis=1)
    return out


def anchored(pred_xywh: F64, det: F64) -> F64:
    """Measurements (cx, cy, w, h) of partial views: a dimension the occluder cut (clearly
    smaller than predicted) keeps its predicted size, placed from the visible edge (the top
    for the height: occluders stand in front, lower in the image); an uncut one is taken as
    seen."""
    dw, dh = det[:, 2] - det[:, 0], det[:, 3] - det[:, 1]
    pw, ph = pred_xywh[:, 2], pred_xywh[:, 3]
    cut_w, cut_h = dw < CUT_FRACTION * pw, dh < CUT_FRACTION * ph
    left = np.abs(det[:, 0] - (pred_xywh[:, 0] - pw / 2)) <= np.abs(
        det[:, 2] - (pred_xywh[:, 0] + pw / 2))  # fmt: skip
    cx = np.where(cut_w, np.where(left, det[:, 0] + pw / 2, det[:, 2] - pw / 2),
                  (det[:, 0] + det[:, 2]) / 2)  # fmt: skip
    cy = np.where(cut_h, det[:, 1] + ph / 2, (det[:, 1] + det[:, 3]) / 2)
    out: F64 = np.column_stack([cx, cy, np.where(cut_w, pw, dw), np.where(cut_h, ph, dh)])
    return out


def expand(boxes: F64, grow: F64) -> F64:
    """Boxes scaled about their centres by (1 + grow)."""
    if len(boxes) == 0:
        return boxes
    half = 0.5 * (boxes[:, 2:4] - boxes[:, 0:2]) * (1.0 + grow)[:, None]
    centre = 0.5 * (boxes[:, 2:4] + boxes[:, 0:2])
    out = np.empty_like(boxes)
    np.subtract(centre, half, out=out[:, 0:2])
    np.add(centre, half, out=out[:, 2:4])
    return out
