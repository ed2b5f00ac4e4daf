"""Counts on the simulator's scenes with a real detector in front of the engine.

``test_sim_accuracy`` feeds the engine the simulator's truth boxes: it measures the
analytics alone. Here each shipped model detects the rendered 1280x720 frames and the
engine counts what it found, scored against the same truth (crossings a camera could see;
each detection matched to the truth box it overlaps most, so a track's vehicle is known).
The figures are tabled in docs/benchmarks.md ("Simulator scenes through the detector"):

    .venv/bin/python -m pytest tests/analytics/test_sim_detector_counts.py -m benchmark -s
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from its_camera_ai.inference.models import load_model

sim = pytest.importorskip("its_camera_ai.sim")

from tests.analytics import simbridge  # noqa: E402
from tests.analytics.test_sim_accuracy import SCENES  # noqa: E402

pytestmark = pytest.mark.benchmark

MODELS = ("yolox-nano-its", "its-detector-v1")
RUNS = [(2, "free", "day"), (3, "free", "night"), (1, "signal", "day"), (24, "queue", "day")]
SECONDS = 60.0


@pytest.mark.timeout(900)
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize(("seed", "scene", "condition"), RUNS)
def test_a_detector_counts_the_simulators_scenes(
    model_name: str, seed: int, scene: str, condition: str
) -> None:
    torch.manual_seed(0)
    cfg = sim.SceneConfig(seed=seed, fps=10.0, condition=condition, **SCENES[scene])
    run = simbridge.run_sim(cfg, SECONDS, size=(1280, 720), detector=load_model(model_name))
    scores, _ = simbridge.score_counts(run)
    truth = sum(s.truth for s in scores.values())
    missed = sum(s.missed for s in scores.values())
    extra = sum(s.extra for s in scores.values())
    classes = Counter(c.object_class.name.lower() for c in run.crossings)
    print(
        f"\n| {model_name} | {scene} (seed {seed}) | {condition} | {truth} |"
        f" {truth - missed + extra} | {missed} | {extra} | {(missed + extra) / max(truth, 1):.0%}"
        f" | {dict(classes)} |"
    )
    # The scene had traffic the camera could see, and the detector found some of it.
    assert truth > 0
    assert truth - missed > 0, simbridge.missed_crossings(run)
