"""One tracker update's association state, and IoU matching within class groups.

ByteTracker's stages (confident, weak and tentative association) each match some track rows
to some detections; ``FrameAssociation`` carries what they find from one stage to the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.analytics._assign import assign, iou_matrix
from its_camera_ai.analytics._occlusion import expand
from its_camera_ai.analytics._records import NUM_CLASSES, ObjectClass

__all__ = [
    "ASSOCIATION_GROUP",
    "BOXED_IN_PARTS",
    "LEAVING_GROWTH",
    "FrameAssociation",
    "leaving_the_picture",
    "match_by_iou",
]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
IntArr = NDArray[np.intp]

# Association groups by class number: motor vehicles may be confused with each other by the
# detector, but not with two-wheelers or people.
ASSOCIATION_GROUP = np.array([0, 1, 1, 1, 1, 2, 3], dtype=np.int8)
# By class: the bodies a detector boxes part of a second time (a cabin, a front half). A
# person inside a person's box is another person (a child in front of an adult), a
# motorcycle inside a lorry's another vehicle.
BOXED_IN_PARTS = np.isin(
    np.arange(NUM_CLASSES), [ObjectClass.CAR, ObjectClass.TRUCK, ObjectClass.BUS]
)
# A track leaving the picture (its box against the left or right border, narrowing) is not
# matched to a detection this many times its width or wider: that is another object coming
# in at the same edge (two-way traffic there), which its box, cut and shrinking in place on
# the border, may still overlap. Its own object shows ever less of itself.
LEAVING_GROWTH = 1.5


@dataclass(slots=True)
class FrameAssociation:
    """One update's detections, and what its stages find out, per track row or detection."""

    boxes: F64  # (N, 4) detections
    scores: F64
    classes: I64
    t: float
    pred: F64  # (T, 4) predicted track boxes
    grounded: NDArray[np.bool_]  # (T,) predicted on the road plane
    track_group: NDArray[np.int8]  # (T,) association group of the voted class
    det_group: NDArray[np.int8]  # (N,)
    high: NDArray[np.bool_]  # (N,) confident detections
    leaving: NDArray[np.bool_]  # (T,) see ``leaving_the_picture``
    row_det: IntArr  # (T,) matched detection, -1 while unmatched
    row_partial: NDArray[np.bool_]  # (T,)
    row_foot: NDArray[np.bool_]  # (T,)
    det_used: NDArray[np.bool_]  # (N,)


def leaving_the_picture(
    pred: F64, width_velocity: F64, frame_size: tuple[int, int] | None
) -> NDArray[np.bool_]:
    """Which predicted track boxes lie against the frame's left or right border and narrow:
    their objects are leaving the picture there (``LEAVING_GROWTH``)."""
    if frame_size is None:
        return np.zeros(len(pred), dtype=np.bool_)
    at_side = (pred[:, 0] <= 1.0) | (pred[:, 2] >= frame_size[0] - 1.0)
    out: NDArray[np.bool_] = at_side & (width_velocity < 0.0)
    return out


def match_by_iou(
    frame: FrameAssociation,
    rows: IntArr,
    dets: IntArr,
    min_iou: float,
    track_boxes: F64,
    det_grow: float = 0.0,
) -> None:
    """Assign detections ``dets`` to track ``rows`` (boxes ``track_boxes``) by IoU, within
    class groups, and record the matches in ``frame``."""
    if len(rows) == 0 or len(dets) == 0:
        return
    det_boxes = frame.boxes[dets]
    if det_grow:
        det_boxes = expand(det_boxes, np.full(len(dets), det_grow))
    iou = iou_matrix(track_boxes, det_boxes)
    cost = 1.0 - iou
    cost[frame.track_group[rows][:, None] != frame.det_group[dets][None, :]] = np.inf
    leaving = frame.leaving[rows]
    if leaving.any():
        track_w = frame.pred[rows, 2] - frame.pred[rows, 0]
        det_w = frame.boxes[dets, 2] - frame.boxes[dets, 0]
        cost[leaving[:, None] & (det_w[None, :] >= LEAVING_GROWTH * track_w[:, None])] = np.inf
    r, c = assign(cost, 1.0 - min_iou)
    frame.row_det[rows[r]] = dets[c]
    frame.det_used[dets[c]] = True
