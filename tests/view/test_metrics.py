"""Latency per stage and detections/s from real Prometheus exposition text: quantiles
interpolated as Prometheus does, over the difference of the scrapes in the window."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from its_camera_ai.view import MetricsSample, MetricsWindow, histogram_quantile

INF = float("inf")


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {0.01: 50, 0.1: 100, INF: 100}, 0.01),
        (0.75, {0.01: 50, 0.1: 100, INF: 100}, 0.055),  # a quarter into (0.01, 0.1]
        (0.99, {0.1: 90, INF: 100}, 0.1),  # in +Inf: the highest finite bound
        (0.5, {0.01: 0, INF: 0}, None),
        (0.5, {}, None),
    ],
)
def test_histogram_quantile(q: float, buckets: dict[float, float], expected: float | None) -> None:
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


class Process:
    """A process's registry with two of the series the view reads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.model = Histogram(
            "inference_model_seconds", "", buckets=(0.01, 0.1, 1.0), registry=self.registry
        )
        self.detections = Counter("inference_detections", "", registry=self.registry)

    def scrape(self, taken: float) -> MetricsSample:
        return MetricsSample.parse([generate_latest(self.registry).decode()], taken)


def test_the_window_reads_only_what_happened_since_its_oldest_scrape() -> None:
    process = Process()
    for _ in range(100):
        process.model.observe(0.5)  # slow, before the window
    window = MetricsWindow(window_seconds=60.0)
    window.add(process.scrape(0.0))
    # One scrape: everything since the process started, and no rate yet.
    (model,) = window.stages()
    assert (model.stage, model.observations) == ("model", 100)
    assert model.p50_ms == pytest.approx(550.0)
    assert window.detections_per_second() is None

    for _ in range(40):
        process.model.observe(0.005)
    process.detections.inc(300)
    window.add(process.scrape(10.0))
    (model,) = window.stages()
    assert model.observations == 40
    assert model.p99_ms == pytest.approx(9.9)
    assert window.detections_per_second() == pytest.approx(30.0)

    # 70 s on, the first scrape falls out: the baseline is the one at 10 s.
    window.add(process.scrape(70.0))
    assert window.stages()[0].observations == 0
    assert window.stages()[0].p50_ms is None
    assert window.detections_per_second() == pytest.approx(0.0)


def test_a_restarted_process_starts_its_counts_again() -> None:
    before, after = Process(), Process()
    for _ in range(50):
        before.model.observe(0.05)
    before.detections.inc(100)
    after.model.observe(0.005)
    after.detections.inc(3)
    window = MetricsWindow()
    window.add(before.scrape(0.0))
    window.add(after.scrape(5.0))
    (model,) = window.stages()
    assert model.observations == 1
    assert model.p50_ms == pytest.approx(5.0)
    assert window.detections_per_second() is None  # not a negative rate
