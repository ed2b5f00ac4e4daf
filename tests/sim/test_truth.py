from __future__ import annotations

import numpy as np

from its_camera_ai.sim import (
    CONDITIONS,
    CountingLine,
    CountingLineConfig,
    IncidentConfig,
    ObjectTruth,
    Scene,
    TrafficConfig,
    frame_tags,
    is_difficult,
    random_scene_config,
)

from .helpers import small


def test_line_crossing_geometry() -> None:
    line = CountingLine("l", (0.0, -1.0), (0.0, 1.0))
    assert line.cross((-1.0, 0.0), (1.0, 0.0)) == (1, 0.5)
    assert line.cross((1.0, 0.5), (-1.0, 0.5)) == (-1, 0.5)
    assert line.cross((-1.0, 2.0), (1.0, 2.0)) is None  # beyond the segment
    assert line.cross((-1.0, 0.0), (-0.5, 0.0)) is None
    # Touching then leaving counts once.
    assert line.cross((-1.0, 0.0), (0.0, 0.0)) is not None
    assert line.cross((0.0, 0.0), (1.0, 0.0)) is None


def test_crossings_equal_the_vehicles_that_cross() -> None:
    lines = (
        CountingLineConfig(name="east", a=(30.0, -9.0), b=(30.0, 0.0)),
        CountingLineConfig(name="all", a=(80.0, -9.0), b=(80.0, 9.0)),
    )
    scene = Scene(
        small(
            8,
            counting_lines=lines,
            intersection=None,
            traffic=TrafficConfig(flow_veh_h_per_lane=1200),
        )
    )
    trail: dict[int, list[tuple[float, float]]] = {}
    per_frame = 0
    for i in range(30 * 40):
        if i < 30 * 5:  # per-frame reporting, checked on a stretch (rendering costs time)
            per_frame += len(scene.render((64, 36))[1].crossings)
        for a in scene.agents:
            trail.setdefault(a.id, []).append(a.xy())
        scene.step()
    for a in scene.agents:
        trail.setdefault(a.id, []).append(a.xy())
    # Independent count: tracks whose ground point went from one side of x to the other
    # while inside the segment's y range.
    expected: dict[tuple[str, int], int] = {}
    for _tid, pts in trail.items():
        p = np.array(pts)
        for name, x, y0, y1 in (("east", 30.0, -9.0, 0.0), ("all", 80.0, -9.0, 9.0)):
            side = p[:, 0] > x
            for i in np.flatnonzero(side[1:] != side[:-1]):
                y = p[i, 1] + (p[i + 1, 1] - p[i, 1]) * (x - p[i, 0]) / (p[i + 1, 0] - p[i, 0])
                if y0 <= y <= y1:
                    key = (name, 1 if side[i + 1] else -1)
                    expected[key] = expected.get(key, 0) + 1
    got: dict[tuple[str, int], int] = {}
    for c in scene.crossings:
        got[(c.line, c.direction)] = got.get((c.line, c.direction), 0) + 1
    assert got == expected
    assert got[("east", 1)] > 5
    assert ("east", -1) not in got
    assert got[("all", -1)] > 5
    # Every crossing is reported once, in the frame after it happened.
    assert per_frame == sum(c.frame < 30 * 5 for c in scene.crossings) > 0
    assert len({(c.line, c.track_id) for c in scene.crossings}) == len(scene.crossings)


def test_a_live_scene_keeps_no_history_and_reports_the_same_crossings() -> None:
    # A camera source runs for days: every crossing kept since the start grew its memory.
    config = small(8, intersection=None, traffic=TrafficConfig(flow_veh_h_per_lane=1200))
    scored, live = Scene(config), Scene(config, keep_crossings=False)
    for _ in range(30 * 8):
        assert scored.render((64, 36))[1].crossings == live.render((64, 36))[1].crossings
        scored.step()
        live.step()
    assert len(scored.crossings) > 5
    assert live.crossings == []


def test_incidents_appear_in_the_truth() -> None:
    # No junction: its red-light queues would keep the walker waiting for a gap for long.
    cfg = small(
        9,
        intersection=None,
        incidents=(
            IncidentConfig(kind="stopped_vehicle", start_s=0.0, duration_s=8.0, x_m=45.0),
            IncidentConfig(kind="wrong_way", start_s=0.0),
            IncidentConfig(kind="pedestrian_on_road", start_s=0.0, duration_s=3.0, x_m=100.0),
        ),
    )
    scene = Scene(cfg)
    seen: dict[str, set[int]] = {}
    flagged: dict[str, set[int]] = {}
    for i in range(30 * 45):
        scene.step()
        if i % 15 == 0:
            _, truth = scene.render()
            for inc in truth.incidents:
                seen.setdefault(inc.kind, set()).add(inc.track_id)
            for o in truth.objects:
                if o.incident:
                    flagged.setdefault(o.incident, set()).add(o.track_id)
                    if o.incident == "stopped_vehicle":
                        assert o.speed_kmh < 1.0
    kinds = {i.kind: i for i in scene.incident_truths()}
    assert set(kinds) == {"stopped_vehicle", "wrong_way", "pedestrian_on_road"}
    sv = kinds["stopped_vehicle"]
    assert sv.end_s is not None
    assert abs(sv.end_s - sv.start_s - 8.0) < 0.1
    ped = kinds["pedestrian_on_road"]
    assert ped.end_s is not None
    assert ped.end_s - ped.start_s > 3.0
    for kind, inc in kinds.items():
        assert seen[kind] == {inc.track_id}
    # The objects themselves carry the flag while it lasts (when visible).
    assert flagged.get("stopped_vehicle") == {sv.track_id}
    assert flagged.get("pedestrian_on_road") == {ped.track_id}


def test_truth_serialises_and_speeds_match_units() -> None:
    scene = Scene(small(1))
    _, truth = scene.render()
    d = truth.to_dict()
    assert d["frame"] == 0
    assert d["objects"]
    for o in truth.objects:
        assert abs(o.speed_kmh - o.speed_mps * 3.6) < 0.01
        x0, y0, x1, y1 = o.box
        assert 0 <= x0 < x1 <= 320
        assert 0 <= y0 < y1 <= 180
        f = o.full_box
        assert f[0] <= x0
        assert f[1] <= y0
        assert x1 <= f[2]
        assert y1 <= f[3]
        assert 0.0 <= o.occlusion <= 1.0
    summary = scene.summary()
    assert summary["counting_lines"][0]["image_a"][0] is not None
    assert summary["calibration"]["width"] == 320


def _obj(box: tuple[float, float, float, float], occ: float) -> ObjectTruth:
    vpx = int((box[2] - box[0]) * (box[3] - box[1]) * (1 - occ))
    return ObjectTruth(
        track_id=1, cls="car", class_id=0, box=box, full_box=box, visible_px=vpx,
        occlusion=occ, truncation=0.0, difficult=is_difficult(box, vpx, occ),
        world_xy=(0.0, 0.0), heading_deg=0.0, speed_mps=0.0, speed_kmh=0.0,
        dims_m=(4.0, 1.8, 1.5), lane="main+0", incident=None,
    )  # fmt: skip


def test_tags_and_difficult_rules() -> None:
    big, small_box = (0.0, 0.0, 100.0, 60.0), (0.0, 0.0, 20.0, 12.0)
    assert frame_tags("fog", (_obj(big, 0.0),)) == ("fog",)
    assert "heavy_occlusion" in frame_tags("day", (_obj(big, 0.6),))
    assert "small_objects" in frame_tags("day", (_obj(small_box, 0.0), _obj(big, 0.0)))
    assert _obj((0.0, 0.0, 3.0, 3.0), 0.0).difficult  # too small to demand
    assert _obj(big, 0.85).difficult  # too hidden to demand
    # Difficult objects do not make a frame "heavy occlusion".
    assert frame_tags("day", (_obj(big, 0.85),)) == ("day",)


def test_random_scene_configs_are_valid_for_every_condition() -> None:
    for seed in range(60):
        cfg = random_scene_config(seed, CONDITIONS[seed % len(CONDITIONS)], 640, 384)
        assert cfg.camera.width == 640
        assert cfg.seed == seed
