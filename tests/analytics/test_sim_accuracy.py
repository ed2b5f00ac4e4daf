"""Accuracy against the traffic simulator's ground truth (``its_camera_ai.sim``), through the
real service.

The simulator's truth boxes (visible extent, from its id buffer) are the detections of a
camera configured as an operator would (its counting line, lanes split at the stop lines,
calibration from its homography); see ``simbridge``. They are streamed to a real analytics
service (gRPC on loopback, PostgreSQL) in ``DetectionBatch``es, as inference sends them, and
what its tables hold is scored: counts on crossings a camera could see (the vehicle
detectable within 1.5 s before and after), speeds at the counted crossing against the sim's
speed of that vehicle, incidents by type, vehicle and overlap. The same frames also go
through the engine in-process: the sim vehicle behind each track comes from there (the wire
carries no truth ids), and the service must store exactly what the engine computed.

The default run has one short free-flow scene, one short uncalibrated intersection scene,
one short incident scene and a check of the calibration's depths; the sweep over seeds and
kinds of scene (free flow, a signalised intersection, a queue standing on the counting line),
with box noise and missed detections, calibrated and not, is marked ``benchmark``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from its_camera_ai.analytics import EventRecord, LineCrossing
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import AnalyticsEngineSettings, AnalyticsServiceSettings, ServiceHost
from its_camera_ai.scene import CameraScene
from its_camera_ai.testing import host_settings
from tests.analytics.test_service_support import (
    camera_proto,
    recent_start_ns,
    serve_cameras,
    stored,
    stored_records,
    stream,
    to_batches,
)

sim = pytest.importorskip("its_camera_ai.sim")

from tests.analytics import simbridge  # noqa: E402


def _crossing_row(c: LineCrossing) -> tuple[Any, ...]:
    # As stored: microseconds, NaN speeds as NULL.
    speed = c.speed_kmh if c.speed_kmh is not None and np.isfinite(c.speed_kmh) else None
    return (c.line_id, c.track_id, c.object_class, c.direction, c.time_ns // 1000, speed,
            c.lane_id)  # fmt: skip


def _event_row(e: EventRecord) -> tuple[Any, ...]:
    end = None if e.end_time_ns is None else e.end_time_ns // 1000
    return (e.type, e.start_time_ns // 1000, end, e.track_id, e.object_class, e.lane_id)


async def run_service(
    cfg: Any, duration_s: float, dsn: str, spool: Path, **kw: Any
) -> simbridge.SimRun:
    """The scene's frames through the engine and through a real analytics service; the run
    as the service's tables have it."""
    run = simbridge.run_sim(cfg, duration_s, start_ns=recent_start_ns(duration_s), **kw)
    camera = simbridge.CAMERA
    async with serve_cameras({camera: camera_proto(run.spec, run.size)}) as decoder:
        settings = AnalyticsServiceSettings(spool_dir=spool, decoder_target=decoder)
        host = ServiceHost(host_settings(dsn), [analytics_unit(settings)])
        await host.start()
        try:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
            try:
                acks = await stream(channel, to_batches(run.inputs, "sim-0", camera=camera))
            finally:
                await channel.close()
        finally:
            await host.stop()
    assert sum(a.accepted_frames for a in acks) == len(run.inputs)
    crossings, events = await stored_records(dsn, camera)
    # The service stored exactly what the engine computed alone...
    assert Counter(map(_crossing_row, crossings)) == Counter(map(_crossing_row, run.crossings))
    assert {k: _event_row(e) for k, e in events.items()} == {
        k: _event_row(e) for k, e in run.events.items()
    }
    # ...and its line bins (the counts the query service reports) add up to its crossings.
    volumes: Counter[tuple[str, int]] = Counter()
    for key, (volume, _, _) in (await stored(dsn, camera)).bins.items():
        scope, line, _, direction, _, seconds = key
        if scope == "line" and seconds == 60:
            volumes[(line, direction)] += volume
    assert volumes == Counter((c.line_id, int(c.direction)) for c in crossings)
    # Tracks are deterministic, so the engine's map from tracks to sim vehicles holds.
    sim_id = {
        _crossing_row(c)[:5]: sid for c, sid in zip(run.crossings, run.crossing_sid, strict=True)
    }
    return dataclasses.replace(
        run,
        crossings=crossings,
        crossing_sid=[sim_id[_crossing_row(c)[:5]] for c in crossings],
        events=events,
    )


def _totals(scores: dict[Any, simbridge.CountScore]) -> simbridge.CountScore:
    total = simbridge.CountScore()
    for s in scores.values():
        total.truth += s.truth
        total.missed += s.missed
        total.extra += s.extra
    return total


async def test_free_flow_counts_are_exact_and_speeds_within_3_kmh(
    postgres_dsn: str, tmp_path: Path
) -> None:
    cfg = sim.SceneConfig(seed=2, fps=10.0, intersection=None)
    run = await run_service(cfg, 40.0, postgres_dsn, tmp_path)
    scores, errors = simbridge.score_counts(run)
    total = _totals(scores)
    assert total.truth >= 20
    assert (total.missed, total.extra) == (0, 0), simbridge.missed_crossings(run)
    assert len(errors) >= 15
    assert float(np.mean(errors)) <= 3.0
    assert run.events == {}


async def test_uncalibrated_camera_counts_vehicles_hidden_while_crossing(
    postgres_dsn: str, tmp_path: Path
) -> None:
    # Oncoming cars hidden behind nearer traffic as they cross (at 58, 71 and 75 s): with
    # prediction in the image they came back as new tracks past the line, uncounted.
    cfg = sim.SceneConfig(seed=1, fps=10.0)
    run = await run_service(cfg, 80.0, postgres_dsn, tmp_path, calibrated=False)
    total = _totals(simbridge.score_counts(run)[0])
    assert total.truth >= 40
    assert (total.missed, total.extra) == (0, 0), simbridge.missed_crossings(run)
    assert all(c.speed_kmh is None for c in run.crossings)


async def test_incidents_are_detected_once_and_nothing_else(
    postgres_dsn: str, tmp_path: Path
) -> None:
    incidents = (
        sim.IncidentConfig(kind="stopped_vehicle", start_s=3.0, duration_s=40.0),
        sim.IncidentConfig(kind="pedestrian_on_road", start_s=6.0, duration_s=15.0),
        sim.IncidentConfig(kind="wrong_way", start_s=2.0),
    )
    cfg = sim.SceneConfig(seed=1, fps=10.0, incidents=incidents)
    run = await run_service(cfg, 60.0, postgres_dsn, tmp_path, noise_px=0.5, dropout=0.03)
    assert len(run.incidents) >= 2
    missed, false, delays = simbridge.score_incidents(run)
    assert missed == []
    assert false == []
    assert max(delays) <= 5.0
    total = _totals(simbridge.score_counts(run)[0])
    assert (total.missed, total.extra) == (0, 0), simbridge.missed_crossings(run)


def test_calibration_depth_is_the_camera_depth() -> None:
    # Lost tracks are sized by the ratio of depths from the calibration homography: that is
    # the ratio of the camera's own depths (the sim camera is a pinhole camera).
    scene = sim.Scene(sim.SceneConfig(seed=2, fps=10.0, intersection=None), size=(640, 360))
    h = CameraScene.build(simbridge.analytics_scene(scene)).homography
    assert h is not None
    ground = np.array([[15.0, -5.0], [30.0, 2.0], [80.0, 6.0]])
    depth = h.image_motion(ground, np.zeros_like(ground))[2]
    _, z = scene.camera.project(np.column_stack([ground, np.zeros(3)]))
    assert np.allclose(depth / depth[0], z / z[0], rtol=1e-3)


SCENES: dict[str, dict[str, object]] = {
    "free": {"intersection": None},
    # The default: a signalised intersection at 70 m, its stop line 30 m past the counting
    # line; red-light queues reach back across the line.
    "signal": {},
    # The intersection moved so its stop line is at the counting line, under heavy demand:
    # queues stand and creep on the line itself (stop-and-go).
    "queue": {
        "intersection": sim.IntersectionConfig(x_m=40.0),
        "traffic": sim.TrafficConfig(flow_veh_h_per_lane=1000.0),
    },
}
SWEEP = [
    # seed, scene, box noise (px) and missed-detection rate
    (2, "free", 0.0, 0.0),
    (3, "free", 0.5, 0.05),
    (7, "free", 0.5, 0.05),
    (1, "signal", 0.0, 0.0),
    (5, "signal", 0.0, 0.0),
    (4, "signal", 0.5, 0.05),
    (6, "signal", 0.5, 0.05),
    (8, "signal", 0.5, 0.05),
    (24, "queue", 0.0, 0.0),
    (25, "queue", 0.5, 0.05),
]


@pytest.mark.benchmark
@pytest.mark.parametrize(("seed", "scene", "noise", "dropout"), SWEEP)
async def test_accuracy_sweep(
    seed: int, scene: str, noise: float, dropout: float, postgres_dsn: str, tmp_path: Path
) -> None:
    cfg = sim.SceneConfig(seed=seed, fps=10.0, **SCENES[scene])
    run = await run_service(cfg, 120.0, postgres_dsn, tmp_path, noise_px=noise, dropout=dropout)
    scores, errors = simbridge.score_counts(run)
    total = _totals(scores)
    mae = float(np.mean(errors))
    print(
        f"seed {seed}: {total}, error {total.error:.1%}, speed MAE {mae:.2f} km/h "
        f"(p95 {np.percentile(errors, 95):.1f}), events {len(run.events)}"
    )
    # Exact in free flow; within 1 % with queues, whose vehicles hide one another. Nothing
    # is ever counted that did not cross, and nothing is an incident.
    if scene == "free":
        assert total.missed == 0, simbridge.missed_crossings(run)
    assert total.error <= 0.01, simbridge.missed_crossings(run)
    assert total.extra == 0
    assert mae <= 3.0
    _, false, _ = simbridge.score_incidents(run)
    assert false == []


@pytest.mark.benchmark
@pytest.mark.parametrize(("seed", "scene", "noise", "dropout"), SWEEP)
async def test_uncalibrated_accuracy_sweep(
    seed: int, scene: str, noise: float, dropout: float, postgres_dsn: str, tmp_path: Path
) -> None:
    """The same scenes without calibration: no speeds, and the tracker predicts hidden
    vehicles on the plane of a lane drawn as a rectangle (see ``CameraScene.road_plane``). The
    same count figures must hold."""
    cfg = sim.SceneConfig(seed=seed, fps=10.0, **SCENES[scene])
    run = await run_service(
        cfg, 120.0, postgres_dsn, tmp_path, noise_px=noise, dropout=dropout, calibrated=False
    )
    total = _totals(simbridge.score_counts(run)[0])
    print(f"uncalibrated seed {seed}: {total}, error {total.error:.1%}")
    if scene == "free":
        assert total.missed == 0, simbridge.missed_crossings(run)
    assert total.error <= 0.01, simbridge.missed_crossings(run)
    assert total.extra == 0
    assert all(c.speed_kmh is None for c in run.crossings)


@pytest.mark.benchmark
async def test_incident_scene_long(postgres_dsn: str, tmp_path: Path) -> None:
    incidents = (
        sim.IncidentConfig(kind="stopped_vehicle", start_s=5.0, duration_s=60.0),
        sim.IncidentConfig(kind="pedestrian_on_road", start_s=30.0, duration_s=20.0),
        sim.IncidentConfig(kind="wrong_way", start_s=70.0),
    )
    cfg = sim.SceneConfig(seed=1, fps=10.0, incidents=incidents)
    run = await run_service(cfg, 130.0, postgres_dsn, tmp_path)
    assert len(run.incidents) == 3
    missed, false, delays = simbridge.score_incidents(run)
    assert missed == []
    assert false == []
    assert max(delays) <= 5.0


# Trucks and buses only, a counting line 12-20 m from the camera: there a long vehicle is cut
# by the frame's border for much of its crossing, or hidden behind another one, and its
# box's bottom-centre (the reference point) is never seen on both sides of the line.
NEAR_LINE = [
    # seed, the line's distance from the camera (m), camera
    (1, 14.0, {"height_m": 6.0, "tilt_deg": 20.0}),
    (1, 12.0, {"height_m": 9.0, "tilt_deg": 25.0, "pan_deg": 0.0}),
    (1, 20.0, {"height_m": 5.0, "tilt_deg": 10.0}),
    (2, 14.0, {"height_m": 6.0, "tilt_deg": 20.0}),
    (2, 12.0, {"height_m": 9.0, "tilt_deg": 25.0, "pan_deg": 0.0}),
    (2, 20.0, {"height_m": 5.0, "tilt_deg": 10.0}),
]


@pytest.mark.benchmark
def test_long_vehicles_near_the_camera_are_counted_from_their_motion() -> None:
    """Crossings inferred from motion (``line_infer_s``; analytics ``_inferred``) recover
    long vehicles first seen past the line or leaving the picture before it, and count
    nothing that did not cross."""
    totals = {}
    for infer_s in (0.0, AnalyticsEngineSettings().line_infer_s):
        scores: dict[tuple[Any, ...], simbridge.CountScore] = {}
        for n, (seed, line_x, camera) in enumerate(NEAR_LINE):
            line = sim.CountingLineConfig(name="near", a=(line_x, -12.0), b=(line_x, 12.0))
            cfg = sim.SceneConfig(
                seed=seed,
                fps=10.0,
                intersection=None,
                counting_lines=(line,),
                camera=sim.CameraConfig(**camera),
                traffic=sim.TrafficConfig(
                    class_mix={"bus": 0.5, "truck": 0.5}, flow_veh_h_per_lane=500.0
                ),
            )
            settings = AnalyticsEngineSettings(line_infer_s=infer_s)
            run = simbridge.run_sim(cfg, 40.0, settings=settings)
            scene = simbridge.score_counts(run)[0]
            print(f"line_infer_s {infer_s}: seed {seed}, line at {line_x} m: {_totals(scene)}")
            scores.update({(n, *key): score for key, score in scene.items()})
        totals[infer_s] = _totals(scores)
    without, inferred = totals.values()
    print(f"without: {without}; inferred: {inferred}")
    assert inferred.truth == without.truth
    # 25 missed without, 2 with: two buses whose bottom the next bus hides in every view.
    assert inferred.missed <= 2
    assert inferred.extra <= without.extra
