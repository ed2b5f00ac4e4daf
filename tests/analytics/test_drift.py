"""Model drift: KL divergence of class mix and scores against a baseline, and its event."""

from __future__ import annotations

import numpy as np
import pytest

from its_camera_ai.analytics import (
    CameraAnalytics,
    DriftMonitor,
    EventBook,
    EventType,
    FrameInput,
    kl_divergence,
)
from its_camera_ai.common import AnalyticsEngineSettings
from its_camera_ai.scene import SceneSpec
from tests.analytics import synth

MIX = np.array([0.0, 0.7, 0.1, 0.05, 0.05, 0.03, 0.07])
SMALL = AnalyticsEngineSettings(
    drift_baseline_detections=2000, drift_window_detections=2000, drift_chunk_detections=250
)
SHIFTED = np.array([0.0, 0.35, 0.45, 0.05, 0.05, 0.03, 0.07])


def _draw(
    rng: np.random.Generator, n: int, mix: np.ndarray, score_mean: float = 0.75
) -> tuple[np.ndarray, np.ndarray]:
    classes = rng.choice(7, size=n, p=mix).astype(np.int64)
    scores = np.clip(rng.normal(score_mean, 0.12, n), 0.0, 1.0)
    return classes, scores


def test_kl_is_finite_with_empty_cells_and_zero_for_equal() -> None:
    a = np.array([10.0, 0.0, 5.0])
    assert kl_divergence(a, a, 0.5) == pytest.approx(0.0)
    assert np.isfinite(kl_divergence(np.array([0.0, 0.0, 9.0]), np.array([9.0, 0.0, 0.0]), 0.5))
    assert np.isfinite(kl_divergence(np.zeros(3), np.zeros(3), 0.5))


def test_same_distribution_has_kl_near_zero() -> None:
    rng = np.random.default_rng(0)
    mon = DriftMonitor(SMALL)
    for _ in range(40):
        mon.observe(*_draw(rng, 250, MIX))
    assert mon.kl_class is not None
    assert mon.kl_score is not None
    assert mon.kl_class < 0.02
    assert mon.kl_score < 0.03


def test_shifted_class_mix_exceeds_threshold_and_raises_one_event() -> None:
    rng = np.random.default_rng(1)
    mon = DriftMonitor(SMALL)
    book = EventBook("cam", update_s=5.0)
    events = []
    t = 0
    for mix in (MIX,) * 20 + (SHIFTED,) * 20 + (MIX,) * 20:
        t += 10**9
        if mon.observe(*_draw(rng, 250, mix)):
            events += mon.events(book, 1, t)
        if mix is SHIFTED and mon.kl_class is not None and len(events):
            assert mon.kl_class > 0.1
    ids = {e.event_id for e in events}
    assert len(ids) == 1
    assert events[0].type == EventType.MODEL_DRIFT
    assert events[0].end_time_ns is None
    assert events[-1].end_time_ns is not None  # back to normal: closed
    assert dict(events[0].details)["kl_class"] > 0.1


def test_score_shift_is_drift_too() -> None:
    rng = np.random.default_rng(2)
    mon = DriftMonitor(SMALL)
    for _ in range(10):
        mon.observe(*_draw(rng, 250, MIX, 0.8))
    for _ in range(10):
        mon.observe(*_draw(rng, 250, MIX, 0.45))
    assert mon.kl_score is not None
    assert mon.kl_score > 0.1
    assert mon.kl_class is not None
    assert mon.kl_class < 0.05


def test_configured_baseline_and_model_version_change() -> None:
    cfg = AnalyticsEngineSettings(
        drift_baseline_detections=500,
        drift_window_detections=500,
        drift_chunk_detections=250,
        drift_sample_interval_s=0.0,
    )
    eng = CameraAnalytics(synth.CAMERA, SceneSpec(), cfg)
    rng = np.random.default_rng(3)
    seq, kinds = 0, []

    def feed(mix: np.ndarray, version: str, n_frames: int) -> None:
        nonlocal seq
        for _ in range(n_frames):
            seq += 1
            classes, scores = _draw(rng, 25, mix)
            x = rng.uniform(0, 1200, 25)
            y = rng.uniform(50, 700, 25)
            det = np.column_stack([x, y - 30, x + 40, y, scores, classes.astype(float)])
            det = det[classes > 0]
            out = eng.process(
                FrameInput(
                    synth.CAMERA, seq, synth.T0_NS + seq * 10**8, synth.W, synth.H, det, version
                )
            )
            kinds.extend((e.type, e.end_time_ns is None) for e in out.events)

    feed(MIX, "v1", 60)
    assert eng.snapshot().drift_kl_class is not None
    feed(SHIFTED, "v1", 60)
    assert (EventType.MODEL_DRIFT, True) in kinds
    feed(SHIFTED, "v2", 5)  # a new model: the drift event of the old one is closed
    assert kinds[-1] == (EventType.MODEL_DRIFT, False) or (EventType.MODEL_DRIFT, False) in kinds
    assert eng.drift.model_version == "v2"
    assert eng.snapshot().open_events == 0
