"""Per-stage latency and detections/s from the services' Prometheus ``/metrics``.

The API reports one latency (capture to analysed, per camera: CameraStats); the stages in
between are histograms on each process's HTTP port (docs/architecture.md, "Where each
stage's latency is measured"). Histograms are cumulative since a process started, so the
view keeps the scrapes of the last ``window_seconds`` and reads quantiles from the
difference, like Prometheus' ``histogram_quantile`` over a ``rate``.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.request
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from its_camera_ai.view._model import StageLatency

__all__ = ["STAGES", "MetricsSample", "MetricsWindow", "histogram_quantile", "scrape"]

# (stage shown, histogram), in pipeline order.
STAGES = (
    ("decode", "decoder_decode_latency_seconds"),
    ("batch wait", "inference_queue_wait_seconds"),
    ("preprocess", "inference_preprocess_seconds"),
    ("model", "inference_model_seconds"),
    ("postprocess", "inference_postprocess_seconds"),
    ("capture → detections", "latency_capture_to_detections_seconds"),
    ("capture → sent to analytics", "inference_analytics_capture_to_send_latency_seconds"),
    ("analytics ack", "inference_analytics_ack_latency_seconds"),
    ("analytics write", "analytics_write_latency_seconds"),
)
DETECTIONS_COUNTER = "inference_detections_total"
_HISTOGRAMS = frozenset(metric for _, metric in STAGES)
_SCRAPE_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class MetricsSample:
    """One scrape of every process, summed over labels and processes: histogram ->
    upper bound -> cumulative count, and the detections counter."""

    taken: float  # time.monotonic()
    buckets: Mapping[str, Mapping[float, float]] = field(default_factory=dict)
    detections: float | None = None

    @classmethod
    def parse(cls, texts: list[str], taken: float) -> MetricsSample:
        buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        detections: float | None = None
        for text in texts:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if family.name in _HISTOGRAMS and sample.name.endswith("_bucket"):
                        buckets[family.name][float(sample.labels["le"])] += sample.value
                    elif sample.name == DETECTIONS_COUNTER:
                        detections = (detections or 0.0) + sample.value
        return cls(taken, {name: dict(b) for name, b in buckets.items()}, detections)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of a cumulative histogram (upper bound -> count), interpolated
    linearly inside its bucket as Prometheus does; ``None`` with no observations. A rank in
    the +Inf bucket gives the highest finite bound."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _difference(
    latest: Mapping[float, float], baseline: Mapping[float, float] | None
) -> Mapping[float, float]:
    if baseline is None:
        return latest
    delta = {bound: count - baseline.get(bound, 0.0) for bound, count in latest.items()}
    # A process restarted since the baseline: its counts began again from zero.
    return latest if any(count < 0 for count in delta.values()) else delta


class MetricsWindow:
    """The scrapes of the last ``window_seconds``; quantiles and rates over them."""

    def __init__(self, window_seconds: float = 60.0) -> None:
        self.window_seconds = window_seconds
        self._samples: deque[MetricsSample] = deque()

    def add(self, sample: MetricsSample) -> None:
        self._samples.append(sample)
        # Keep one sample at or before the window's start as the baseline.
        horizon = sample.taken - self.window_seconds
        while len(self._samples) > 2 and self._samples[1].taken <= horizon:
            self._samples.popleft()

    def stages(self) -> tuple[StageLatency, ...]:
        if not self._samples:
            return ()
        latest = self._samples[-1]
        baseline = self._samples[0] if len(self._samples) > 1 else None
        rows = []
        for stage, metric in STAGES:
            if metric not in latest.buckets:
                continue  # no process here exports it (e.g. no inference running)
            previous = baseline.buckets.get(metric) if baseline is not None else None
            counts = _difference(latest.buckets[metric], previous)
            p50, p99 = histogram_quantile(0.5, counts), histogram_quantile(0.99, counts)
            rows.append(
                StageLatency(
                    stage,
                    None if p50 is None else p50 * 1000,
                    None if p99 is None else p99 * 1000,
                    int(max(counts.values(), default=0.0)),
                )
            )
        return tuple(rows)

    def detections_per_second(self) -> float | None:
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        if first.detections is None or last.detections is None or last.taken <= first.taken:
            return None
        added = last.detections - first.detections
        if added < 0:  # the process restarted
            return None
        return added / (last.taken - first.taken)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=_SCRAPE_TIMEOUT_SECONDS) as response:  # noqa: S310 - http:// built here
        body: bytes = response.read()
    return body.decode()


async def scrape(http_targets: Mapping[str, str]) -> tuple[MetricsSample, list[str]]:
    """Every process's ``/metrics`` at once, and a problem line per one that failed."""
    names = sorted(http_targets)
    answers = await asyncio.gather(
        *(asyncio.to_thread(_get, f"http://{http_targets[name]}/metrics") for name in names),
        return_exceptions=True,
    )
    texts, problems = [], []
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, BaseException):
            problems.append(f"{name} /metrics at {http_targets[name]}: {answer}")
        else:
            texts.append(answer)
    try:
        return MetricsSample.parse(texts, time.monotonic()), problems
    except ValueError as exc:  # a body that is not the Prometheus text format
        return MetricsSample(time.monotonic()), [*problems, f"/metrics: {exc}"]
