"""The mAP evaluator on constructed cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from its_camera_ai.inference.training import (
    ImageRecord,
    average_precision,
    box_iou,
    class_agnostic,
    evaluate,
)

NAMES = ("car", "truck")


def rec(
    dets: list[tuple[float, float, float, float, float, int]],
    gts: list[tuple[float, float, float, float, int]],
    ignore: list[bool] | None = None,
) -> ImageRecord:
    d = np.array(dets, np.float32).reshape(-1, 6)
    g = np.array(gts, np.float32).reshape(-1, 5)
    return ImageRecord(
        d[:, :4],
        d[:, 4],
        d[:, 5].astype(np.int64),
        g[:, :4],
        g[:, 4].astype(np.int64),
        np.array(ignore if ignore is not None else [False] * len(g), bool),
    )


def test_iou_basic() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])


def test_perfect_detections_score_one() -> None:
    r = rec(
        [(0, 0, 10, 10, 0.9, 0), (20, 20, 40, 50, 0.8, 1)],
        [(0, 0, 10, 10, 0), (20, 20, 40, 50, 1)],
    )
    res = evaluate([r, r], NAMES)
    assert res.map50 == pytest.approx(1.0)
    assert res.map50_95 == pytest.approx(1.0)


def test_duplicate_is_a_false_positive() -> None:
    # Two detections of one car: the lower-scored one is a FP after the TP -> AP stays 1.0
    # (the FP comes after full recall), but a duplicate scored higher than another TP hurts.
    r1 = rec([(0, 0, 10, 10, 0.9, 0), (0, 0, 10, 10, 0.8, 0)], [(0, 0, 10, 10, 0)])
    assert evaluate([r1], NAMES).map50 == pytest.approx(1.0)
    r2 = rec([(0, 0, 10, 10, 0.7, 0)], [(0, 0, 10, 10, 0)])
    # Order: 0.9 TP, 0.8 FP (duplicate), 0.7 TP -> precision at recall 1 is 2/3.
    res = evaluate([r1, r2], NAMES)
    assert res.map50 == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))


def test_missed_object_halves_recall() -> None:
    r = rec([(0, 0, 10, 10, 0.9, 0)], [(0, 0, 10, 10, 0), (50, 50, 60, 60, 0)])
    assert evaluate([r], NAMES).map50 == pytest.approx(0.5)


def test_ignored_boxes_neither_reward_nor_penalise() -> None:
    gts = [(0, 0, 10, 10, 0), (50, 50, 54, 56, 0)]
    hit_ignored = rec([(0, 0, 10, 10, 0.5, 0), (50, 50, 54, 56, 0.9, 0)], gts, [False, True])
    assert evaluate([hit_ignored], NAMES).map50 == pytest.approx(1.0)
    miss_ignored = rec([(0, 0, 10, 10, 0.5, 0)], gts, [False, True])
    assert evaluate([miss_ignored], NAMES).map50 == pytest.approx(1.0)


def test_wrong_class_and_localisation() -> None:
    wrong_class = rec([(0, 0, 10, 10, 0.9, 1)], [(0, 0, 10, 10, 0)])
    res = evaluate([wrong_class], NAMES)
    assert res.map50 == pytest.approx(0.0)
    assert "truck" not in res.per_class  # no truck ground truth: not averaged
    # IoU 0.6 box: a hit at 0.5..0.6, a miss above -> AP@0.5:0.95 = 3/10.
    shifted = rec([(0, 0, 10, 10, 0.9, 0)], [(0, 0, 10, 6, 0)])
    res = evaluate([shifted], NAMES)
    assert res.map50 == pytest.approx(1.0)
    assert res.map50_95 == pytest.approx(0.3)


def test_average_precision_interpolation() -> None:
    # TP, FP, TP with 3 GT: recall 1/3 @ P1, 2/3 @ P 2/3 -> 1/3 * 1 + 1/3 * 2/3.
    tp = np.array([True, False, True])
    ap = average_precision(tp, np.array([0.9, 0.8, 0.7]), 3)
    assert ap == pytest.approx(1 / 3 + (1 / 3) * (2 / 3))
    assert math.isnan(average_precision(tp, np.array([0.9, 0.8, 0.7]), 0))
    assert average_precision(np.zeros(0, bool), np.zeros(0), 2) == 0.0


def test_height_range_scores_one_size_of_object() -> None:
    # A 10 px car found, a 30 px car missed, and a 10 px false positive scored highest.
    r = rec(
        [(100, 100, 110, 110, 0.95, 0), (0, 0, 10, 10, 0.9, 0)],
        [(0, 0, 10, 10, 0), (20, 20, 30, 50, 0)],
    )
    assert evaluate([r], NAMES).map50 == pytest.approx(0.5 * 0.5)
    # Small objects: the 30 px car is not demanded; the small false positive still counts.
    small = evaluate([r], NAMES, height_range=(0, 20))
    assert small.map50 == pytest.approx(0.5)
    assert small.per_class["car"]["gt"] == 1
    # Large objects: the small detections are another bucket's business, neither true nor
    # false here, and the missed 30 px car is all there is.
    large = evaluate([r], NAMES, height_range=(20, math.inf))
    assert large.map50 == pytest.approx(0.0)
    assert large.per_class["car"]["gt"] == 1


def test_class_agnostic_scores_a_confused_class_as_found() -> None:
    # A truck reported as a car: a miss and a false positive per class, a hit without them.
    r = rec([(0, 0, 10, 20, 0.9, 0)], [(0, 0, 10, 20, 1)])
    assert evaluate([r], NAMES).map50 == pytest.approx(0.0)
    assert evaluate([class_agnostic(r)], ("any",)).map50 == pytest.approx(1.0)
