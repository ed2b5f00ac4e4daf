from __future__ import annotations

import numpy as np

from its_camera_ai.sim import (
    Agent,
    IncidentConfig,
    RoadConfig,
    Scene,
    SceneConfig,
    TrafficConfig,
)

from .helpers import small


def _overlaps(agents: list[Agent]) -> list[tuple[int, int]]:
    """Pairs of road vehicles whose footprints (as axis-aligned extents) intersect."""
    ags = [a for a in agents if a.cls != "person"]
    if len(ags) < 2:
        return []
    p = np.array([a.xy() for a in ags])
    length = np.array([a.length for a in ags])
    width = np.array([a.model.width for a in ags])
    h = np.array([a.heading() for a in ags])
    ex = np.abs(np.cos(h)) * length / 2 + np.abs(np.sin(h)) * width / 2
    ey = np.abs(np.sin(h)) * length / 2 + np.abs(np.cos(h)) * width / 2
    dx = np.abs(p[:, None, 0] - p[None, :, 0]) - (ex[:, None] + ex[None, :])
    dy = np.abs(p[:, None, 1] - p[None, :, 1]) - (ey[:, None] + ey[None, :])
    hit = (dx < -0.05) & (dy < -0.05)
    np.fill_diagonal(hit, False)
    return [(ags[i].id, ags[j].id) for i, j in np.argwhere(hit) if i < j]


def test_dense_traffic_with_incidents_never_collides() -> None:
    cfg = small(
        7,
        traffic=TrafficConfig(flow_veh_h_per_lane=1100, pedestrian_flow_h=300),
        incidents=(
            IncidentConfig(kind="stopped_vehicle", start_s=2, duration_s=15),
            IncidentConfig(kind="wrong_way", start_s=5),
            IncidentConfig(kind="pedestrian_on_road", start_s=8, duration_s=4),
        ),
    )
    scene = Scene(cfg)
    changes = 0
    lanes = {a.id: a.lane.id for a in scene.agents}
    for i in range(40 * 30):
        scene.step()
        for a in scene.agents:
            if a.id in lanes and lanes[a.id] != a.lane.id and a.lane.kind == "vehicle":
                changes += 1
            lanes[a.id] = a.lane.id
        if i % 3 == 0:
            assert _overlaps(scene.agents) == [], f"collision at t={scene.time_s:.2f}"
    assert changes > 0  # blocked lanes are left


def _stop_line_queue(scene: Scene) -> list[Agent]:
    lane = scene.world.lane("main+0")
    assert lane.stop_s is not None
    return [
        a
        for a in scene.agents
        if a.lane is lane and a.v < 0.3 and lane.stop_s - 80.0 < a.front() <= lane.stop_s
    ]


def test_queue_forms_at_red_and_discharges_on_green() -> None:
    scene = Scene(small(2, traffic=TrafficConfig(flow_veh_h_per_lane=900, pedestrian_flow_h=0)))
    plan = scene.world.signals
    assert plan is not None
    # Run to the end of a red phase: the longest queue is just before green.
    while not (
        plan.state("main", scene.sim.t) == "red"
        and plan.state("main", scene.sim.t + 1 / scene.fps) == "green"
    ):
        scene.step()
    queued = _stop_line_queue(scene)
    assert len(queued) >= 3
    lane = scene.world.lane("main+0")
    for _ in range(int(20 * scene.fps)):  # the green lasts 22 s
        scene.step()
    passed = [a for a in queued if a not in scene.agents or a.front() > (lane.stop_s or 0)]
    assert len(passed) == len(queued)


def test_stopped_vehicle_builds_a_queue_that_clears() -> None:
    cfg = small(
        4,
        road=RoadConfig(lanes_per_direction=1),
        intersection=None,
        traffic=TrafficConfig(flow_veh_h_per_lane=1600, pedestrian_flow_h=0, bicycle_flow_h=0),
        incidents=(IncidentConfig(kind="stopped_vehicle", start_s=0, duration_s=25, x_m=60.0),),
    )
    scene = Scene(cfg)
    while not scene.incident_truths():
        scene.step()
    inc = scene.incident_truths()[0]
    stopper = next(a for a in scene.agents if a.id == inc.track_id)
    for _ in range(int(20 * scene.fps)):
        scene.step()
    behind = [
        a
        for a in scene.agents
        if a.lane is stopper.lane and a.s < stopper.s and a.v < 0.3 and stopper.s - a.s < 150
    ]
    assert len(behind) >= 2
    assert abs(stopper.v) < 1e-6
    for _ in range(int(25 * scene.fps)):
        scene.step()
    inc = scene.incident_truths()[0]
    assert inc.end_s is not None
    assert abs(inc.end_s - inc.start_s - 25.0) < 0.1
    assert all(a not in scene.agents or a.v > 1.0 or a.front() > stopper.s for a in behind)


def test_speeds_follow_class_distributions() -> None:
    scene = Scene(SceneConfig(seed=11, warmup_s=20, intersection=None))
    by_cls: dict[str, list[float]] = {}
    for a in scene.agents:
        by_cls.setdefault(a.cls, []).append(a.v0)
    limit = 50 / 3.6
    assert 0.8 * limit < np.mean(by_cls["car"]) < 1.2 * limit
    assert np.mean(by_cls["person"]) < 2.0
    assert 3.0 < np.mean(by_cls["bicycle"]) < 7.5
