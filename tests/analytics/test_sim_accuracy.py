"""Accuracy against the traffic simulator's ground truth (``services.sim``).

The simulator's truth boxes (visible extent, from its id buffer) are fed as detections of a
camera configured as an operator would (its counting line, lanes split at the stop lines,
calibration from its homography); see ``simbridge``. Counts are scored on crossings a camera
could see (the vehicle detectable within 1.5 s before and after), speeds at the counted
crossing against the sim's speed of that vehicle, incidents by type, vehicle and overlap.

The default run has one short free-flow scene and one short incident scene; the sweep over
seeds, with box noise and missed detections, is marked ``benchmark``.
"""

from __future__ import annotations

import numpy as np
import pytest

sim = pytest.importorskip("services.sim")

from tests.analytics import simbridge  # noqa: E402


def _totals(scores: dict[tuple[str, int], simbridge.CountScore]) -> simbridge.CountScore:
    total = simbridge.CountScore()
    for s in scores.values():
        total.truth += s.truth
        total.missed += s.missed
        total.extra += s.extra
    return total


def test_free_flow_counts_are_exact_and_speeds_within_3_kmh() -> None:
    cfg = sim.SceneConfig(seed=2, fps=10.0, intersection=None)
    run = simbridge.run_sim(cfg, 40.0)
    scores, errors = simbridge.score_counts(run)
    total = _totals(scores)
    assert total.truth >= 20
    assert (total.missed, total.extra) == (0, 0), simbridge.missed_crossings(run)
    assert len(errors) >= 15
    assert float(np.mean(errors)) <= 3.0
    assert run.events == {}


def test_incidents_are_detected_once_and_nothing_else() -> None:
    incidents = (
        sim.IncidentConfig(kind="stopped_vehicle", start_s=3.0, duration_s=40.0),
        sim.IncidentConfig(kind="pedestrian_on_road", start_s=6.0, duration_s=15.0),
        sim.IncidentConfig(kind="wrong_way", start_s=2.0),
    )
    cfg = sim.SceneConfig(seed=1, fps=10.0, incidents=incidents)
    run = simbridge.run_sim(cfg, 60.0, noise_px=0.5, dropout=0.03)
    assert len(run.incidents) >= 2
    missed, false, delays = simbridge.score_incidents(run)
    assert missed == []
    assert false == []
    assert max(delays) <= 5.0
    total = _totals(simbridge.score_counts(run)[0])
    assert total.error <= 0.05


SWEEP = [
    # seed, intersection, box noise (px) and missed-detection rate
    (2, False, 0.0, 0.0),
    (3, False, 0.5, 0.05),
    (7, False, 0.5, 0.05),
    (1, True, 0.0, 0.0),
    (5, True, 0.0, 0.0),
    (4, True, 0.5, 0.05),
    (6, True, 0.5, 0.05),
    (8, True, 0.5, 0.05),
]


@pytest.mark.benchmark
@pytest.mark.parametrize(("seed", "intersection", "noise", "dropout"), SWEEP)
def test_accuracy_sweep(seed: int, intersection: bool, noise: float, dropout: float) -> None:
    kw = {} if intersection else {"intersection": None}
    cfg = sim.SceneConfig(seed=seed, fps=10.0, **kw)
    run = simbridge.run_sim(cfg, 120.0, noise_px=noise, dropout=dropout)
    scores, errors = simbridge.score_counts(run)
    total = _totals(scores)
    mae = float(np.mean(errors))
    print(
        f"seed {seed}: {total}, error {total.error:.1%}, speed MAE {mae:.2f} km/h "
        f"(p95 {np.percentile(errors, 95):.1f}), events {len(run.events)}"
    )
    # Misses are oncoming vehicles hidden behind near-lane traffic across the line (and, at
    # the intersection, queues); measured 0-3 % free flow, 0-5.3 % at the intersection with
    # noise. Nothing is ever counted that did not cross.
    limit = 0.035 if not intersection else 0.06
    assert total.error <= limit, simbridge.missed_crossings(run)
    assert total.extra == 0
    assert mae <= 3.0
    _, false, _ = simbridge.score_incidents(run)
    if not intersection:
        assert false == []


@pytest.mark.benchmark
def test_incident_scene_long() -> None:
    incidents = (
        sim.IncidentConfig(kind="stopped_vehicle", start_s=5.0, duration_s=60.0),
        sim.IncidentConfig(kind="pedestrian_on_road", start_s=30.0, duration_s=20.0),
        sim.IncidentConfig(kind="wrong_way", start_s=70.0),
    )
    cfg = sim.SceneConfig(seed=1, fps=10.0, incidents=incidents)
    run = simbridge.run_sim(cfg, 130.0)
    assert len(run.incidents) == 3
    missed, false, delays = simbridge.score_incidents(run)
    assert missed == []
    assert false == []
    assert max(delays) <= 5.0
