"""Incidents: each type once with start and end on a constructed scene, none on normal flow."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from its_camera_ai.analytics import (
    CameraAnalytics,
    EventRecord,
    EventType,
    FrameInput,
    ObjectClass,
    Severity,
)
from its_camera_ai.common import AnalyticsEngineSettings
from its_camera_ai.scene import LaneSpec, SceneSpec, ZoneSpec
from tests.analytics import synth

V50 = 50 / 3.6
S = 1e9


def _run(
    agents: Sequence[synth.Agent],
    duration: float,
    fps: float = 10.0,
    engine: CameraAnalytics | None = None,
    **kw: object,
) -> tuple[CameraAnalytics, list[EventRecord]]:
    eng = engine or CameraAnalytics(synth.CAMERA, synth.road_scene(**kw))  # type: ignore[arg-type]
    events: list[EventRecord] = []
    for f in synth.frames(agents, duration, fps=fps):
        events += eng.process(f).events
    return eng, events


def _final(events: list[EventRecord]) -> dict[str, EventRecord]:
    """The latest record of each event id (what storage holds after the upserts)."""
    return {e.event_id: e for e in events}


def _t(ns: int | None) -> float:
    assert ns is not None
    return (ns - synth.T0_NS) / S


def _traffic(
    y: float = -5.25, kmh: float = 60.0, every: float = 3.0, n: int = 40
) -> list[synth.Agent]:
    return [synth.Agent(synth.straight(0.0, y, kmh, t_start=every * i)) for i in range(n)]


def test_stopped_vehicle_once_with_start_and_end() -> None:
    stop_at, go_at = 40 / V50, 40 / V50 + 40.0  # stops at x = 50 m for 40 s
    car = synth.Agent(
        synth.piecewise([(0, 10), (stop_at, 50), (go_at, 50), (go_at + 45 / V50, 95)], -1.75)
    )
    _, events = _run([car, *_traffic()], 60.0)
    final = _final(events)
    assert len(final) == 1
    (ev,) = final.values()
    assert ev.type == EventType.STOPPED_VEHICLE
    assert ev.severity == Severity.HIGH
    assert ev.lane_id == "a1"
    assert ev.object_class == ObjectClass.CAR
    assert ev.track_id == 1
    assert abs(_t(ev.start_time_ns) - stop_at) < 1.5
    assert abs(_t(ev.end_time_ns) - go_at) < 1.5
    assert ev.evidence is not None
    assert ev.evidence.box is not None
    assert ev.evidence.speed_kmh is not None
    assert ev.evidence.speed_kmh < 5.0
    # Opened once, refreshed while it lasted, closed once.
    assert sum(e.end_time_ns is not None for e in events) == 1
    assert events[0].end_time_ns is None


def test_only_the_head_of_a_queue_behind_a_breakdown_is_an_incident() -> None:
    broken = synth.Agent(synth.piecewise([(0, 10), (40 / V50, 50), (45, 50)], -1.75))
    followers = [
        synth.Agent(
            synth.piecewise(
                [(d, 10), (d + (40 - 7 * i) / V50, 50 - 7 * i), (45, 50 - 7 * i)], -1.75
            )
        )
        for i, d in ((1, 2.0), (2, 4.0))
    ]
    _, events = _run([broken, *followers], 45.0)
    assert {e.track_id for e in events} == {1}


def test_red_light_queue_is_not_an_incident() -> None:
    queue = []
    for i, x in enumerate((92, 85, 78, 71, 64)):  # stopped near the lane end (95 m) for ~40 s
        arrive = 2.0 * i + (x - 5) / V50
        queue.append(
            synth.Agent(
                synth.piecewise(
                    [(2.0 * i, 5), (arrive, x), (45, x), (45 + (105 - x) / V50, 105)], -1.75
                )
            )
        )
    _, events = _run([*queue, *_traffic()], 60.0)
    assert events == []


def test_waiting_far_behind_a_standing_vehicle_is_queueing_until_it_leaves() -> None:
    # A bus stops 36 m short of a truck waiting at the lane's end: too far for the gap test,
    # but the vehicle ahead of it stands too. When the truck drives off at 35 s and the bus
    # stays, the bus is a stopped vehicle from then on.
    big = (2.5, 3.2)
    truck = synth.Agent(
        synth.piecewise([(0, 88), (35, 88), (35 + 17 / V50, 105)], -1.75),
        ObjectClass.TRUCK,
        size=big,
    )
    bus = synth.Agent(
        synth.piecewise([(0, 10), (30 / V50, 40), (80, 40)], -1.75), ObjectClass.BUS, size=big
    )
    _, events = _run([truck, bus], 80.0)
    final = _final(events)
    assert [e.type for e in final.values()] == [EventType.STOPPED_VEHICLE]
    (ev,) = final.values()
    assert ev.object_class == ObjectClass.BUS
    assert 35.0 <= _t(ev.start_time_ns) < 38.0


@pytest.mark.parametrize("head", [True, False])
def test_bus_behind_a_queue_head_it_hides_is_not_an_incident(head: bool) -> None:
    # A lane ending at a stop line 60 m out. A bus waits at the line (x 47-59 m); the bus
    # behind it (x 33-45 m) hides its bottom, so the head is seen down to the second bus's
    # roof only and its reference point lands past the stop line, in no lane. The second
    # bus is 27 m from the line, too far for the gap test alone, but it overlaps the head in
    # the image: it is queued. Without the head it is a stopped vehicle.
    lane = LaneSpec(
        "a1",
        synth.lane_polygon(-3.5, 0.0, 5.0, 60.0),
        synth.to_image(5.0, -1.75),
        synth.to_image(60.0, -1.75),
    )
    scene = SceneSpec(lanes=(lane,), calibration=synth.calibration())
    second = synth.box_at(33.0, -1.75, 2.5, 3.2)
    x1, y1, x2, _ = synth.box_at(47.0, -1.75, 2.5, 3.2)
    rows = [[*second, 0.9, ObjectClass.BUS]]
    if head:
        rows.append([x1, y1, x2, second[1] + 2.0, 0.9, ObjectClass.BUS])
    det = synth.to_array(rows)
    eng = CameraAnalytics(synth.CAMERA, scene)
    events: list[EventRecord] = []
    for k in range(400):  # 40 s at 10 fps
        t_ns = synth.T0_NS + k * 100_000_000
        events += eng.process(FrameInput(synth.CAMERA, k + 1, t_ns, synth.W, synth.H, det)).events
    kinds = {e.type for e in events}
    assert kinds == (set() if head else {EventType.STOPPED_VEHICLE})


def test_wrong_way_driver() -> None:
    ghost = synth.Agent(synth.piecewise([(0, 90), (90 / V50, 0)], -1.75))  # towards the camera
    # The event closes once the track has ended and the adoption grace (5 s) has passed.
    _, events = _run([ghost, *_traffic()], 16.0)
    (ev,) = _final(events).values()
    assert ev.type == EventType.WRONG_WAY
    assert ev.severity == Severity.CRITICAL
    assert ev.lane_id == "a1"
    assert ev.track_id == 1
    assert _t(ev.start_time_ns) < 0.5  # from its first position in the lane
    assert abs(_t(ev.end_time_ns) - 85 / V50) < 0.5  # left the lane at x = 5 m


def test_pedestrian_on_roadway_and_exempt_crossing() -> None:
    walker = synth.Agent(
        lambda t: (30.0, -8 + 1.2 * t) if t <= 16 / 1.2 else None,
        cls=ObjectClass.PERSON,
        size=(0.6, 1.7),
    )
    _, events = _run([walker, *_traffic()], 16.0)
    (ev,) = _final(events).values()
    assert ev.type == EventType.PEDESTRIAN_ON_ROADWAY
    assert ev.object_class == ObjectClass.PERSON
    # On the carriageway from y = -7 (t = 0.83 s) to y = 3.5 (t = 9.6 s).
    assert abs(_t(ev.start_time_ns) - 1.0 / 1.2) < 0.5
    assert abs(_t(ev.end_time_ns) - 11.5 / 1.2) < 0.5
    # The same walk on a zebra crossing declared exempt raises nothing.
    crossing = ZoneSpec("zebra", synth.lane_polygon(-8.0, 8.0, 27.0, 33.0))
    cfg = AnalyticsEngineSettings(pedestrian_exempt_zones=("zebra",))
    eng = CameraAnalytics(synth.CAMERA, synth.road_scene(zones=[crossing]), cfg)
    _, events = _run([walker, *_traffic()], 16.0, engine=eng)
    assert events == []


def test_congestion_opens_once_and_clears() -> None:
    v = 8 / 3.6  # a crawling queue, 6 m apart, for 200 s; then the lane drains
    jam = [
        synth.Agent(synth.straight(0.0, -1.75, 8.0, t_start=i * 6 / v, t_end=i * 6 / v + 105 / v))
        for i in range(int(200 * v / 6))
    ]
    _, events = _run(jam, 280.0, fps=5.0)
    final = _final(events)
    assert len(final) == 1
    (ev,) = final.values()
    assert ev.type == EventType.CONGESTION
    assert ev.lane_id == "a1"
    assert ev.track_id is None
    assert ev.object_class == ObjectClass.UNSPECIFIED
    assert _t(ev.start_time_ns) < 15.0  # the lane was full from the first seconds
    first_open = next(e for e in events if e.end_time_ns is None)
    assert 120.0 <= _t(first_open.update_time_ns) < 135.0  # after a full window
    assert 200.0 < _t(ev.end_time_ns) < 250.0
    assert ev.evidence is not None
    assert ev.evidence.speed_kmh == pytest.approx(8.0, abs=1.5)


def _free_flow(duration: float, seed: int) -> list[synth.Agent]:
    rng = np.random.default_rng(seed)
    agents = []
    for y, kmh in ((-1.75, 50.0), (-5.25, 70.0)):
        t = 0.0
        while t < duration:
            agents.append(synth.Agent(synth.straight(0.0, y, kmh + rng.normal(0, 5), t_start=t)))
            t += rng.exponential(3.0) + 0.8
    t = 0.0
    while t < duration:
        agents.append(
            synth.Agent(
                lambda tt, ts=t: (
                    (100 - (tt - ts) * V50, 1.75) if ts <= tt <= ts + 105 / V50 else None
                )
            )
        )
        t += rng.exponential(4.0) + 1.0
    return agents


def test_no_events_on_normal_flow() -> None:
    _, events = _run(_free_flow(120.0, 1), 120.0, fps=5.0, calibrated=True)
    assert events == []


def test_no_events_on_normal_flow_uncalibrated() -> None:
    _, events = _run(_free_flow(120.0, 2), 120.0, fps=5.0, calibrated=False)
    assert events == []


@pytest.mark.benchmark
def test_no_events_on_long_normal_flow() -> None:
    _, events = _run(_free_flow(900.0, 3), 900.0, fps=10.0)
    assert events == []
