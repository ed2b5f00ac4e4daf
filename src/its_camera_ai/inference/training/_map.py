"""Mean average precision, COCO-style matching with VOC all-point interpolation.

For each IoU threshold (0.50:0.95 step 0.05) and class: detections of each image are taken by
descending score; one matches the unmatched ground-truth box of its class with the highest
IoU >= the threshold (a true positive). Failing that, if it overlaps an *ignored* box
(``difficult`` in the simulator: too small or too hidden to demand) by >= the threshold it is
dropped, neither true nor false; otherwise it is a false positive, duplicates of a matched
object included. Ignored boxes never count as misses. AP is the area under the precision
envelope over all recall points (VOC 2010+), mAP the mean over classes that have at least one
ground-truth box in the evaluated images.

``height_range`` restricts an evaluation to objects of a size, as COCO's area ranges do:
ground truth outside the range is ignored, and so is a detection outside it that matches
nothing, so each bucket's AP says how well objects of that size are found without the others
counting for or against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

__all__ = ["IOU_THRESHOLDS", "ImageRecord", "MapResult", "average_precision", "box_iou", "evaluate"]

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

F32 = NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """Detections and ground truth of one image; classes are indices 0..C-1."""

    det_boxes: F32
    det_scores: F32
    det_classes: NDArray[np.int64]
    gt_boxes: F32
    gt_classes: NDArray[np.int64]
    gt_ignore: NDArray[np.bool_]
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MapResult:
    map50: float
    map50_95: float
    images: int
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)


def box_iou(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    """IoU matrix ``[len(a), len(b)]`` of x0, y0, x1, y1 boxes."""
    a64, b64 = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ix0 = np.maximum(a64[:, None, 0], b64[None, :, 0])
    iy0 = np.maximum(a64[:, None, 1], b64[None, :, 1])
    ix1 = np.minimum(a64[:, None, 2], b64[None, :, 2])
    iy1 = np.minimum(a64[:, None, 3], b64[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a64[:, 2] - a64[:, 0]) * (a64[:, 3] - a64[:, 1])
    area_b = (b64[:, 2] - b64[:, 0]) * (b64[:, 3] - b64[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    out: NDArray[np.float64] = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    return out


def average_precision(tp: NDArray[np.bool_], scores: NDArray[np.floating], n_gt: int) -> float:
    """All-point interpolated AP of scored detections flagged true/false positive."""
    if n_gt == 0:
        return float("nan")
    if tp.size == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = tp[order].astype(np.float64)
    ctp, cfp = np.cumsum(hits), np.cumsum(1.0 - hits)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    # The envelope: precision at recall r is the best precision at any recall >= r.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _outside(boxes: F32, height_range: tuple[float, float] | None) -> NDArray[np.bool_]:
    if height_range is None:
        return np.zeros(len(boxes), bool)
    h = boxes[:, 3] - boxes[:, 1]
    out: NDArray[np.bool_] = (h < height_range[0]) | (h >= height_range[1])
    return out


def _match_image(
    rec: ImageRecord,
    cls: int,
    thresholds: Sequence[float],
    height_range: tuple[float, float] | None = None,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], F32, int]:
    """(tp [T, D], kept [T, D], scores [D], n_gt) for one image and class."""
    dm = rec.det_classes == cls
    gm = rec.gt_classes == cls
    scores = rec.det_scores[dm]
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    dboxes, scores = rec.det_boxes[dm][order], scores[order]
    gboxes = rec.gt_boxes[gm]
    gign = rec.gt_ignore[gm] | _outside(gboxes, height_range)
    n_gt = int((~gign).sum())
    t_n, d_n = len(thresholds), len(dboxes)
    tp = np.zeros((t_n, d_n), bool)
    kept = np.ones((t_n, d_n), bool)
    if d_n == 0:
        return tp, kept, scores, n_gt
    iou = box_iou(dboxes, gboxes)
    for ti, thr in enumerate(thresholds):
        taken = np.zeros(len(gboxes), bool)
        # A detection overlapping no ground truth is a false positive whatever came
        # before it: the greedy pass (in score order) only visits the others, a few per
        # object where the low-score tail kept for mAP holds hundreds per image.
        for d in np.flatnonzero((iou >= thr).any(axis=1)):
            cand = np.where(~gign & ~taken & (iou[d] >= thr), iou[d], -1.0)
            if cand.size and cand.max() >= 0:
                j = int(cand.argmax())
                taken[j] = True
                tp[ti, d] = True
            elif gign.any() and (iou[d][gign] >= thr).any():
                kept[ti, d] = False
    if height_range is not None:
        # Unmatched detections of another size belong to another bucket.
        kept &= tp | ~_outside(dboxes, height_range)[None, :]
    return tp, kept, scores, n_gt


def evaluate(
    records: Iterable[ImageRecord],
    class_names: Sequence[str],
    thresholds: Sequence[float] = IOU_THRESHOLDS,
    height_range: tuple[float, float] | None = None,
) -> MapResult:
    """mAP@0.5 and mAP@0.5:0.95 over ``records`` (the 0.5 threshold must be first), of the
    objects ``height_range[0] <= height < height_range[1]`` pixels tall if given."""
    recs = list(records)
    per_class: dict[str, dict[str, float]] = {}
    ap50s, ap_all = [], []
    for cls, name in enumerate(class_names):
        tps, keeps, scores, n_gt = [], [], [], 0
        for r in recs:
            tp, kept, sc, n = _match_image(r, cls, thresholds, height_range)
            tps.append(tp)
            keeps.append(kept)
            scores.append(sc)
            n_gt += n
        if n_gt == 0:
            continue
        tp_all = np.concatenate(tps, axis=1) if tps else np.zeros((len(thresholds), 0), bool)
        kept_all = np.concatenate(keeps, axis=1) if keeps else tp_all.copy()
        sc_all = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        aps = [
            average_precision(tp_all[t][kept_all[t]], sc_all[kept_all[t]], n_gt)
            for t in range(len(thresholds))
        ]
        per_class[name] = {"ap50": aps[0], "ap50_95": float(np.mean(aps)), "gt": float(n_gt)}
        ap50s.append(aps[0])
        ap_all.append(float(np.mean(aps)))
    return MapResult(
        map50=float(np.mean(ap50s)) if ap50s else float("nan"),
        map50_95=float(np.mean(ap_all)) if ap_all else float("nan"),
        images=len(recs),
        per_class=per_class,
    )
