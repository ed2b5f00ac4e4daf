"""Speeds, speed histograms and percentiles, nested bins, lane and zone statistics."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from its_camera_ai.analytics import (
    SPEED_BINS,
    BinRecord,
    BinStore,
    CameraAnalytics,
    LevelOfService,
    ObjectClass,
    Scope,
    histogram_percentile,
    level_of_service,
)
from its_camera_ai.common import AnalyticsEngineSettings
from its_camera_ai.scene import Direction, ZoneSpec
from tests.analytics import synth

FAR_FUTURE = synth.T0_NS + 10**15


def _records(engine: CameraAnalytics, secs: int = 60) -> list[BinRecord]:
    return [r for r in engine.drain_bins(FAR_FUTURE) if r.key.bin_seconds == secs]


@pytest.mark.parametrize(("speed", "noise"), [(50.0, 0.0), (90.0, 0.0), (30.0, 1.0)])
def test_constant_velocity_speed_within_1_kmh(speed: float, noise: float) -> None:
    eng = CameraAnalytics(synth.CAMERA, synth.road_scene())
    agent = synth.Agent(synth.straight(0.0, -1.75, speed))
    for f in synth.frames([agent], 100.0 / (speed / 3.6) + 1, noise_px=noise):
        eng.process(f)
    recs = _records(eng)
    line = next(r for r in recs if r.key.scope == Scope.LINE and r.key.scope_id == "all")
    assert line.volume == 1
    assert line.mean_speed_kmh is not None
    assert abs(line.mean_speed_kmh - speed) < 1.0
    lane = next(
        r
        for r in recs
        if r.key.scope == Scope.LANE
        and r.key.scope_id == "a1"
        and r.key.object_class == ObjectClass.UNSPECIFIED
    )
    assert lane.space_mean_speed_kmh is not None
    assert abs(lane.space_mean_speed_kmh - speed) < 1.0


def _record_of(speeds: list[float]) -> BinRecord:
    store = BinStore("c", (60,))
    for s in speeds:
        store.count(Scope.LINE, "l", 1, 1, 0, s)
    (rec,) = store.drain(60 * 10**9)
    return rec


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 260.0), min_size=1, max_size=60),
    st.lists(st.floats(0.0, 260.0), min_size=0, max_size=60),
)
def test_p85_of_merged_histograms_equals_p85_of_the_union(a: list[float], b: list[float]) -> None:
    union = _record_of(a + b)
    merged = _record_of(a)
    if b:
        merged = merged.merge(_record_of(b))
    assert merged.speed_hist == union.speed_hist
    assert merged.speed_p85_kmh == union.speed_p85_kmh
    assert merged.volume == len(a) + len(b)
    assert merged.mean_speed_kmh == pytest.approx(float(np.mean(a + b)))


def test_histogram_p85_is_within_one_bin_of_the_sample_percentile() -> None:
    rng = np.random.default_rng(2)
    for mean in (30.0, 60.0, 110.0):
        speeds = rng.normal(mean, 12.0, 3000).clip(0, 199).tolist()
        rec = _record_of(speeds)
        assert rec.speed_p85_kmh is not None
        assert abs(rec.speed_p85_kmh - float(np.percentile(speeds, 85))) < 1.0


def test_histogram_percentile_edges() -> None:
    assert histogram_percentile((0,) * SPEED_BINS, 85) is None
    hist = [0] * SPEED_BINS
    hist[50] = 4
    assert histogram_percentile(hist, 50) == pytest.approx(50.5)


def test_coarse_bins_are_the_merge_of_fine_bins() -> None:
    cfg = AnalyticsEngineSettings(bin_seconds=(60, 300))  # 1 and 5 min keep the test short
    eng = CameraAnalytics(synth.CAMERA, synth.road_scene(), cfg)
    rng = np.random.default_rng(5)
    agents = [
        synth.Agent(
            synth.straight(
                0.0, float(rng.choice([-1.75, -5.25])), float(rng.uniform(30, 90)), t_start=float(t)
            )
        )
        for t in np.cumsum(rng.exponential(4.0, 120))
    ]
    for f in synth.frames(agents, 11 * 60.0, fps=5.0):
        eng.process(f)
    recs = eng.drain_bins(FAR_FUTURE)
    fine = [r for r in recs if r.key.bin_seconds == 60]
    coarse = {
        (r.key.scope, r.key.scope_id, r.key.object_class, r.key.direction, r.key.bin_start_ns): r
        for r in recs
        if r.key.bin_seconds == 300
    }
    rolled: dict[tuple, BinRecord] = {}
    for r in fine:
        start = r.key.bin_start_ns - r.key.bin_start_ns % (300 * 10**9)
        k = (r.key.scope, r.key.scope_id, r.key.object_class, r.key.direction, start)
        up = r.rebinned(start, 300)
        rolled[k] = rolled[k].merge(up) if k in rolled else up
    assert rolled.keys() == coarse.keys()
    assert sum(r.volume for r in fine if r.key.scope == Scope.CAMERA) > 100
    for k, r in rolled.items():
        for f in fields(BinRecord):
            if f.name in ("key", "final"):
                continue
            assert getattr(r, f.name) == pytest.approx(getattr(coarse[k], f.name)), f.name


def test_bins_are_epoch_aligned_and_final_once_passed() -> None:
    eng = CameraAnalytics(synth.CAMERA, synth.road_scene())
    start = synth.T0_NS + 45 * 10**9  # 45 s into a minute
    agent = synth.Agent(synth.straight(30.0, -1.75, 50.0))
    frames = synth.frames([agent], 30.0, start_ns=start)
    for f in frames[:100]:  # up to 49 s: still in the first minute
        eng.process(f)
    first = eng.drain_bins()
    assert first
    assert all(not r.final for r in first)
    assert {r.key.bin_start_ns for r in first if r.key.bin_seconds == 60} == {synth.T0_NS}
    assert eng.drain_bins() == []  # nothing changed since
    for f in frames[100:]:
        eng.process(f)
    second = eng.drain_bins()
    finals = [r for r in second if r.final]
    assert {r.key.bin_start_ns for r in finals} == {synth.T0_NS}
    assert all(r.key.bin_seconds == 60 for r in finals)  # the 15-min bin is still open
    # A frame inside a final bin is now late.
    late = synth.frames([agent], 1.0, start_ns=synth.T0_NS + 59 * 10**9, first_seq=10_000)[0]
    assert eng.process(late).rejected is not None


def _parked(x: float, y: float) -> synth.Agent:
    return synth.Agent(lambda t, x=x, y=y: (x, y))


def test_occupancy_density_level_of_service_and_queue() -> None:
    eng = CameraAnalytics(synth.CAMERA, synth.road_scene())
    # Lane a1 (90 m long): three cars queued at its downstream end (x = 95 m) all minute;
    # lane a2: one car for the first half of the minute only.
    agents = [
        _parked(90.0, -1.75),
        _parked(83.0, -1.75),
        _parked(76.0, -1.75),
        synth.Agent(synth.straight(50.0, -5.25, 0.0, t_end=30.0)),
    ]
    for f in synth.frames(agents, 60.0, fps=10.0):
        eng.process(f)
    frame_rows = {
        r.key.scope_id: r
        for r in _records(eng)
        if r.key.scope == Scope.LANE and r.key.object_class == ObjectClass.UNSPECIFIED
    }
    a1, a2, b1 = frame_rows["a1"], frame_rows["a2"], frame_rows["b1"]
    # The first frames precede track confirmation (3 hits): allow for them.
    assert a1.occupancy == pytest.approx(1.0, abs=0.01)
    assert a2.occupancy == pytest.approx(0.5, abs=0.02)
    assert b1.occupancy == 0.0
    assert a1.density_vehicles_per_km == pytest.approx(3 / 0.09, rel=0.02)
    assert a1.level_of_service == LevelOfService.F
    assert a2.density_vehicles_per_km == pytest.approx(0.5 / 0.09, rel=0.05)
    assert a2.level_of_service == LevelOfService.A
    assert b1.level_of_service == LevelOfService.A  # empty lane: density 0, known
    # Queue from the lane end (95 m) to the last stopped car (76 m).
    assert a1.queue_max_m == pytest.approx(19.0, abs=0.5)
    assert a2.queue_max_m == pytest.approx(0.0)  # alone, 45 m from the end: not a queue


def test_level_of_service_thresholds() -> None:
    assert level_of_service(None) == LevelOfService.UNSPECIFIED
    assert [level_of_service(d) for d in (0, 7, 7.1, 11, 16, 22, 28, 28.1)] == [
        LevelOfService.A,
        LevelOfService.A,
        LevelOfService.B,
        LevelOfService.B,
        LevelOfService.C,
        LevelOfService.D,
        LevelOfService.E,
        LevelOfService.F,
    ]


def test_uncalibrated_camera_reports_no_speed_or_density() -> None:
    eng = CameraAnalytics(synth.CAMERA, synth.road_scene(calibrated=False))
    agent = synth.Agent(synth.straight(0.0, -1.75, 50.0))
    for f in synth.frames([agent], 8.0):
        eng.process(f)
    recs = _records(eng)
    line = next(r for r in recs if r.key.scope == Scope.LINE)
    assert line.volume == 1
    assert line.mean_speed_kmh is None
    assert line.speed_p85_kmh is None
    lane = next(
        r
        for r in recs
        if r.key.scope == Scope.LANE
        and r.key.scope_id == "a1"
        and r.key.object_class == ObjectClass.UNSPECIFIED
    )
    assert lane.occupancy is not None
    assert lane.occupancy > 0
    assert lane.density_vehicles_per_km is None
    assert lane.space_mean_speed_kmh is None
    assert lane.level_of_service == LevelOfService.UNSPECIFIED


def test_zone_entries_dwell_and_occupancy() -> None:
    zone = ZoneSpec("box", synth.lane_polygon(-8.0, 8.0, 20.0, 40.0))  # x in [20, 40] m
    eng = CameraAnalytics(synth.CAMERA, synth.road_scene(zones=[zone]))
    # A car at 36 km/h (10 m/s) crosses the 20 m zone in 2 s; a person stands in it 10 s.
    car = synth.Agent(synth.straight(0.0, -1.75, 36.0))
    person = synth.Agent(
        lambda t: (30.0, 6.0) if 1.0 <= t < 11.0 else None, cls=ObjectClass.PERSON, size=(0.6, 1.7)
    )
    # The standing person's track is kept 30 s after it vanishes (it might only be hidden);
    # its dwell is recorded when the track ends.
    for f in synth.frames([car, person], 45.0, fps=10.0):
        eng.process(f)
    recs = [r for r in _records(eng) if r.key.scope == Scope.ZONE]
    by_class = {r.key.object_class: r for r in recs}
    assert by_class[ObjectClass.CAR].volume == 1
    assert by_class[ObjectClass.CAR].mean_dwell_s == pytest.approx(2.0, abs=0.15)
    assert by_class[ObjectClass.PERSON].volume == 1
    # The person's track ends (lost) after it vanishes; its dwell is up to its last sighting.
    assert by_class[ObjectClass.PERSON].mean_dwell_s == pytest.approx(9.9, abs=0.3)
    occ = by_class[ObjectClass.UNSPECIFIED]
    assert occ.occupancy is not None
    assert 10.2 / 45 < occ.occupancy < 11.0 / 45
    assert occ.key.direction == Direction.NONE
