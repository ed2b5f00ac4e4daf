"""Tracker: assignment optimality, ids through occlusion, blips, two-stage association."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from its_camera_ai.analytics import ByteTracker, assign, hungarian, iou_matrix
from its_camera_ai.common import TrackerSettings


def _lapjv_cost(cost: np.ndarray, limit: float, rows: np.ndarray, cols: np.ndarray) -> float:
    t, d = cost.shape
    return float(cost[rows, cols].sum()) + limit / 2 * (t - len(rows) + d - len(rows))


def _brute(cost: np.ndarray, limit: float) -> float:
    t, d = cost.shape
    best = np.inf

    def rec(i: int, used: frozenset[int], acc: float, n: int) -> None:
        nonlocal best
        if i == t:
            best = min(best, acc + limit / 2 * (t - n + d - n))
            return
        rec(i + 1, used, acc, n)
        for j in range(d):
            if j not in used and cost[i, j] <= limit:
                rec(i + 1, used | {j}, acc + cost[i, j], n + 1)

    rec(0, frozenset(), 0.0, 0)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_assignment_is_optimal_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(60):
        t, d = rng.integers(1, 7, 2)
        cost = rng.random((t, d))
        cost[rng.random((t, d)) < 0.3] = np.inf
        rows, cols = assign(cost, 0.8)
        assert len(set(rows.tolist())) == len(rows)
        assert len(set(cols.tolist())) == len(cols)
        assert np.all(cost[rows, cols] <= 0.8)
        assert _lapjv_cost(cost, 0.8, rows, cols) == pytest.approx(_brute(cost, 0.8))


def test_hungarian_python_and_numpy_paths_agree() -> None:
    rng = np.random.default_rng(1)
    for n, m in ((3, 5), (30, 30), (25, 40)):
        cost = rng.random((n, m))
        cols = hungarian(cost)  # numpy path for the large ones
        best_small = None
        if n <= 3:
            best_small = min(
                sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n)
            )
            assert sum(cost[i, cols[i]] for i in range(n)) == pytest.approx(best_small)
        assert len(set(cols)) == n


def test_iou_matrix() -> None:
    a = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], dtype=float)
    b = np.array([[5, 0, 15, 10]], dtype=float)
    iou = iou_matrix(a, b)
    assert iou[0, 0] == pytest.approx(50 / 150)
    assert iou[1, 0] == 0.0


def _box(cx: float, cy: float, w: float = 60.0, h: float = 40.0) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _step(
    tr: ByteTracker,
    boxes: list[list[float]],
    scores: list[float],
    k: int,
    classes: list[int] | None = None,
):
    b = np.array(boxes, dtype=float).reshape(-1, 4)
    c = np.array(classes if classes is not None else [1] * len(boxes), dtype=np.int64)
    return tr.update(b, np.array(scores, dtype=float), c, k / 25.0)


def test_ids_survive_ten_frames_hidden_behind_another_object() -> None:
    tr = ByteTracker(TrackerSettings())
    ids_a, ids_b, hidden = set(), set(), 0
    for k in range(80):
        xa, xb = 100 + 8 * k, 600 - 4 * k  # A passes in front of B around k = 42
        boxes, scores = [_box(xa, 300)], [0.9]
        b_visible = abs(xa - xb) >= 60  # B fully behind A: no detection
        if b_visible:
            boxes.append(_box(xb, 300))
            scores.append(0.9)
        else:
            hidden += 1
        out = _step(tr, boxes, scores, k)
        tid = dict(zip(out.det_index.tolist(), out.ids.tolist(), strict=True))
        if k >= 3:  # confirmed after min_hits frames
            ids_a.add(tid[0])
            if b_visible:
                ids_b.add(tid[1])
    assert hidden == 10
    assert len(ids_a) == 1
    assert len(ids_b) == 1
    assert ids_a != ids_b


def test_no_track_from_a_single_blip() -> None:
    tr = ByteTracker(TrackerSettings())
    _step(tr, [_box(200, 200)], [0.3], 0)  # low-score blip: never starts a track
    _step(tr, [], [], 1)
    _step(tr, [_box(500, 200)], [0.95], 2)  # one confident blip: tentative, then gone
    for k in range(3, 6):
        out = _step(tr, [], [], k)
        assert len(out.ids) == 0
    assert len(tr) == 0
    # Ids were not spent on blips: the first real track gets id 1.
    for k in range(6, 10):
        out = _step(tr, [_box(300 + 5 * k, 300)], [0.9], k)
    assert out.ids.tolist() == [1]


def test_second_stage_recovers_low_score_detections() -> None:
    def run(cfg: TrackerSettings) -> list[int]:
        tr = ByteTracker(cfg)
        got = []
        for k in range(30):
            score = 0.3 if 10 <= k < 20 else 0.9  # partly occluded: the score drops
            out = _step(tr, [_box(100 + 6 * k, 300)], [score], k)
            got.append(int(out.det_track_ids[0]))
        return got

    two_stage = run(TrackerSettings())
    assert set(two_stage[3:]) == {1}  # the low-score detections stay on track 1
    one_stage = run(TrackerSettings(low_score=0.5))  # low detections ignored
    assert set(one_stage[10:20]) == {-1}


def test_class_vote_and_class_gating() -> None:
    tr = ByteTracker(TrackerSettings())
    for k in range(12):
        cls = 2 if k == 6 else 1  # one frame misclassified as a truck
        out = _step(tr, [_box(100 + 5 * k, 300)], [0.9], k, [cls])
    assert out.ids.tolist() == [1]
    assert out.classes.tolist() == [1]
    # A person at the same place never continues the car's track.
    out = _step(tr, [_box(160, 300)], [0.9], 12, [6])
    assert out.det_track_ids.tolist() == [-1]


def test_lost_track_ends_after_ttl_and_ids_are_not_reused() -> None:
    cfg = TrackerSettings(lost_ttl_s=1.0)
    tr = ByteTracker(cfg)
    for k in range(8):
        _step(tr, [_box(100 + 10 * k, 100)], [0.9], k)  # moving: the short ttl applies
    ended = []
    for k in range(8, 40):
        ended += _step(tr, [], [], k).ended.tolist()
    assert ended == [1]
    for k in range(40, 45):
        out = _step(tr, [_box(100, 100)], [0.9], k)
    assert out.ids.tolist() == [2]


def test_standing_object_keeps_its_id_through_a_long_occlusion() -> None:
    # A stopped car hidden for 10 s by passing traffic: its prediction does not drift, so it
    # is kept (stationary ttl) and picked up again with its id.
    tr = ByteTracker(TrackerSettings())
    for k in range(400):
        boxes, scores = [], []
        if not 50 <= k < 300:
            boxes.append(_box(300, 300))
            scores.append(0.9)
        out = _step(tr, boxes, scores, k)
        if boxes and k > 5:
            assert out.ids.tolist() == [1]
    assert len(out.ended) == 0


def test_partial_views_do_not_collapse_the_track() -> None:
    # An occluder in front (lower in the image) slides over the object's bottom half: the
    # association holds, and the filtered box keeps its size instead of following the cut.
    tr = ByteTracker(TrackerSettings())
    for k in range(60):
        x0 = 500.0 - 10.0 * k  # a 200 px wide vehicle passing in front, right to left
        occluder = [x0, 290.0, x0 + 200.0, 420.0]
        # What stays visible of the object (x 270-330, y 280-320): its top 10 px where the
        # occluder covers its whole width, else the whole box.
        covered = x0 <= 270 and x0 + 200 >= 330
        obj = [270.0, 280.0, 330.0, 290.0 if covered else 320.0]
        out = _step(tr, [obj, occluder], [0.9, 0.9], k)
        if covered:
            row = out.ids.tolist().index(1)
            _x1, y1, _x2, y2 = out.boxes[row]
            assert abs((y2 - y1) - 40) < 4, (k, out.boxes[row])
            assert abs(y2 - 320) < 4, (k, out.boxes[row])
    assert 1 in out.ids.tolist()


def test_foot_seen_only_with_the_bottom_in_sight() -> None:
    # Tracked: a free box, one whose bottom-centre is behind a box reaching lower (in front
    # of it), that box, and one cut by the frame's left border.
    tr = ByteTracker(TrackerSettings())
    behind, front = [400.0, 200.0, 460.0, 240.0], [380.0, 230.0, 520.0, 330.0]
    boxes = [_box(100, 100), behind, front, [0.0, 400.0, 50.0, 440.0]]
    for k in range(4):
        b = np.array(boxes, dtype=float)
        out = tr.update(b, np.full(4, 0.9), np.ones(4, dtype=np.int64), k / 25.0, (1280, 720))
    seen = dict(zip(out.det_index.tolist(), out.foot_seen.tolist(), strict=True))
    assert seen == {0: True, 1: False, 2: True, 3: False}


def test_a_track_leaving_at_the_border_does_not_take_over_one_coming_in() -> None:
    # Two-way traffic at the frame's left edge: a truck drives out of the picture there (the
    # detector loses it with 60 px of it in sight) as another comes in, in the next lane,
    # first detected two frames earlier, so still tentative. The leaving track's box, cut
    # by the border and shrinking in place, overlaps the one coming in; its own truck shows
    # ever less of itself, so a box 1.5 times as wide is another vehicle, not its own.
    tr = ByteTracker(TrackerSettings())
    held: dict[str, set[int]] = {"leaving": set(), "coming": set()}
    for k in range(30):
        x2, x_in = 300.0 - 15.0 * k, 30.0 * (k - 14)  # at 10 frames/s
        boxes = {"leaving": [max(0.0, x2 - 200.0), 100.0, x2, 220.0] if x2 > 50 else None,
                 "coming": [0.0, 120.0, x_in, 270.0] if x_in > 0 else None}  # fmt: skip
        present = {name: box for name, box in boxes.items() if box is not None}
        b = np.array(list(present.values()), dtype=float).reshape(-1, 4)
        out = tr.update(b, np.full(len(b), 0.9), np.ones(len(b), dtype=np.int64), k / 10.0,
                        (1280, 720))  # fmt: skip
        names = list(present)
        for track, d in zip(out.ids.tolist(), out.det_index.tolist(), strict=True):
            if d >= 0 and track > 0:
                held[names[d]].add(track)
    assert held == {"leaving": {1}, "coming": {2}}
