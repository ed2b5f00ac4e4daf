"""Counting lines: inside vs outside the segment, directions, jitter, distinct tracks."""

from __future__ import annotations

from collections import Counter

import numpy as np

from services.analytics._engine import CameraAnalytics
from services.analytics._records import Direction, Scope
from services.analytics._scene import LineSpec, SceneSpec
from tests.analytics import synth

LTR, RTL = Direction.LEFT_TO_RIGHT, Direction.RIGHT_TO_LEFT
FAR_FUTURE = synth.T0_NS + 10**15


def _counts(engine: CameraAnalytics) -> Counter[tuple[str, str, Direction]]:
    out: Counter[tuple[str, str, Direction]] = Counter()
    for r in engine.drain_bins(FAR_FUTURE):
        if r.key.bin_seconds == 60 and r.volume:
            out[(r.key.scope.value, r.key.scope_id, r.key.direction)] += r.volume
    return out


def _engine(*lines: LineSpec) -> CameraAnalytics:
    return CameraAnalytics(synth.CAMERA, SceneSpec(lines=lines))


def _run(engine: CameraAnalytics, paths: list[synth.PixelPath], n: int) -> None:
    for f in synth.pixel_frames([(p, 0.9, 1) for p in paths], n):
        assert engine.process(f).accepted


def test_counted_only_within_the_drawn_segment() -> None:
    eng = _engine(LineSpec("l", (500.0, 300.0), (700.0, 300.0)))
    inside = synth.moving_box(600, 200, 0, 5)  # crosses y = 300 at x = 600: inside
    outside = synth.moving_box(900, 200, 0, 5)  # crosses the line's extension at x = 900
    edge = synth.moving_box(699, 200, 0, 5)  # just inside the end point
    _run(eng, [inside, outside, edge], 50)
    assert _counts(eng) == {("line", "l", LTR): 2, ("camera", "", Direction.NONE): 2}


def test_both_directions() -> None:
    eng = _engine(LineSpec("l", (100.0, 300.0), (1100.0, 300.0)))
    down = synth.moving_box(300, 200, 1, 5)  # towards the camera: left to right
    up = synth.moving_box(800, 420, -1, -5)
    _run(eng, [down, up], 50)
    c = _counts(eng)
    assert c[("line", "l", LTR)] == 1
    assert c[("line", "l", RTL)] == 1


def test_direction_filter() -> None:
    eng = _engine(LineSpec("l", (100.0, 300.0), (1100.0, 300.0), Direction.RIGHT_TO_LEFT))
    _run(eng, [synth.moving_box(300, 200, 0, 5), synth.moving_box(800, 420, 0, -5)], 50)
    c = _counts(eng)
    assert c[("line", "l", RTL)] == 1
    assert c[("line", "l", LTR)] == 0


def test_no_double_count_from_jitter_around_the_line() -> None:
    rng = np.random.default_rng(3)
    jitter = rng.uniform(-3.0, 3.0, 400)

    def hovering(k: int) -> tuple[float, float, float, float]:
        # Approach, hover on the line for 200 frames with +-3 px box jitter, then go on.
        y = 250 + 5 * k if k < 10 else (300 + jitter[k] if k < 210 else 300 + 5 * (k - 210))
        return (570.0, y - 40, 630.0, y)

    eng = _engine(LineSpec("l", (400.0, 300.0), (800.0, 300.0)))
    _run(eng, [hovering], 240)
    assert _counts(eng) == {("line", "l", LTR): 1, ("camera", "", Direction.NONE): 1}


def test_true_re_crossing_counts_once_per_direction() -> None:
    def u_turns(k: int) -> tuple[float, float, float, float]:
        # Down across, back up across, down again: the contract counts once per direction.
        y = 250 + 5 * k if k < 30 else (400 - 5 * (k - 30) if k < 60 else 250 + 5 * (k - 60))
        return (570.0, y - 40, 630.0, y)

    eng = _engine(LineSpec("l", (400.0, 300.0), (800.0, 300.0)))
    _run(eng, [u_turns], 90)
    c = _counts(eng)
    assert c[("line", "l", LTR)] == 1
    assert c[("line", "l", RTL)] == 1
    assert c[("camera", "", Direction.NONE)] == 1  # one distinct vehicle


def test_camera_volume_counts_distinct_tracks() -> None:
    eng = _engine(
        LineSpec("a", (100.0, 300.0), (1100.0, 300.0)),
        LineSpec("b", (100.0, 400.0), (1100.0, 400.0)),
    )
    _run(eng, [synth.moving_box(300, 200, 0, 5), synth.moving_box(700, 150, 0, 5)], 80)
    c = _counts(eng)
    assert c[("line", "a", LTR)] == 2
    assert c[("line", "b", LTR)] == 2
    assert c[("camera", "", Direction.NONE)] == 2


def test_dropped_detections_do_not_lose_the_crossing() -> None:
    # Detections missing in 4 frames right at the line: the crossing is seen between the
    # last point before and the first after.
    path = synth.moving_box(600, 200, 0, 5, visible=lambda k: not 18 <= k < 22)
    eng = _engine(LineSpec("l", (500.0, 300.0), (700.0, 300.0)))
    _run(eng, [path], 50)
    assert _counts(eng)[("line", "l", LTR)] == 1


def test_lane_volume_headway_and_gap() -> None:
    eng = CameraAnalytics(synth.CAMERA, synth.road_scene())
    agents = [synth.Agent(synth.straight(0.0, -1.75, 36.0, t_start=2.0 * i)) for i in range(5)]
    for f in synth.frames(agents, 20.0):
        eng.process(f)
    recs = [r for r in eng.drain_bins(FAR_FUTURE) if r.key.bin_seconds == 60]
    line = next(r for r in recs if r.key.scope == Scope.LINE and r.key.scope_id == "all")
    lane = next(
        r for r in recs if r.key.scope == Scope.LANE and r.key.scope_id == "a1" and r.volume
    )
    assert line.volume == 5
    assert lane.volume == 5
    assert line.headway_count == 4
    assert line.mean_headway_s is not None
    assert abs(line.mean_headway_s - 2.0) < 0.05
    # Gap = headway - passing time of a 4.5 m car at 10 m/s = 2.0 - 0.45 s.
    assert line.mean_gap_s is not None
    assert abs(line.mean_gap_s - 1.55) < 0.05
