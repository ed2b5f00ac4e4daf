"""The frame-pipeline load: simulated cameras added through the camera API of a running
system (``up`` or ``serve all``), measured from the services' own ``/metrics``.

Figures per window, as deltas between two scrapes: capture -> detections latency
(``latency_capture_to_detections_seconds``, percentiles interpolated inside its histogram
buckets, and the share within 100 ms, the checklist's p99 figure), frames through the model,
frames inference skipped by reason (the newest-frame policy's sheds), frames analytics
accepted and rejected (by reason).
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.loadtest._report import Progress
from its_camera_ai_client import TlsOptions, aio_channel

__all__ = ["DEFAULT_CAMERA_SOURCE", "PipelineLoad", "PipelineWindow"]

# 640x360: the simulator renders one 720p camera at most in real time on two busy cores
# (docs/benchmarks.md, Load tests); smaller frames measure the pipeline, not the renderer.
DEFAULT_CAMERA_SOURCE = "sim://road?width=640&height=360&fps=30"
_LATENCY = "latency_capture_to_detections_seconds"
_Sample = tuple[str, frozenset[tuple[str, str]]]
_Samples = dict[_Sample, float]


def _scrape(urls: Sequence[str]) -> _Samples:
    """Every sample of every URL, summed over processes (``up`` runs one per service)."""
    samples: _Samples = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - operator's URL
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def _by_label(delta: _Samples, name: str, *labels: str) -> dict[str, float]:
    grouped: dict[str, float] = {}
    for (sample, pairs), value in delta.items():
        if sample == name and value:
            found = dict(pairs)
            key = "/".join(found.get(label, "") for label in labels)
            grouped[key] = grouped.get(key, 0.0) + value
    return dict(sorted(grouped.items()))


def _buckets(delta: _Samples) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of the latency histogram, ascending."""
    cumulative: dict[float, float] = {}
    for (sample, pairs), value in delta.items():
        if sample == f"{_LATENCY}_bucket":
            bound = float(dict(pairs)["le"])
            cumulative[bound] = cumulative.get(bound, 0.0) + value
    return sorted(cumulative.items())


def _quantile(buckets: list[tuple[float, float]], fraction: float) -> float:
    """Prometheus' histogram_quantile: linear inside the bucket holding the rank."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return math.nan
    rank, lower, below = fraction * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: all that can be said
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


@dataclass(frozen=True)
class PipelineWindow:
    """What one measured window saw (counts are deltas over ``seconds``)."""

    seconds: float
    cameras: int
    latency_buckets: list[tuple[float, float]]
    frames_detected: float
    skipped: dict[str, float] = field(default_factory=dict)
    analytics_frames: dict[str, float] = field(default_factory=dict)

    def latency_s(self, fraction: float) -> float:
        return _quantile(self.latency_buckets, fraction)

    @property
    def within_100ms(self) -> float:
        """Share of frames whose capture -> detections took at most 100 ms."""
        counts = dict(self.latency_buckets)
        total = self.latency_buckets[-1][1] if self.latency_buckets else 0.0
        return counts.get(0.1, math.nan) / total if total else math.nan

    @property
    def skip_share(self) -> float:
        skipped = sum(self.skipped.values())
        offered = skipped + self.frames_detected
        return skipped / offered if offered else 0.0

    def as_dict(self) -> dict[str, Any]:
        def ms(fraction: float) -> float | None:
            value = self.latency_s(fraction)
            return None if math.isnan(value) else round(value * 1e3, 1)

        return {
            "cameras": self.cameras,
            "seconds": round(self.seconds, 2),
            "frames_detected_per_second": round(self.frames_detected / self.seconds, 2),
            "capture_to_detections_ms": {"p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99)},
            "share_within_100ms": round(self.within_100ms, 4),
            "skipped_by_reason": self.skipped,
            "skip_share": round(self.skip_share, 4),
            "analytics_frames_by_result": self.analytics_frames,
        }

    def line(self) -> str:
        p = self.as_dict()
        lat = p["capture_to_detections_ms"]
        return (
            f"{self.cameras} cameras: {p['frames_detected_per_second']} frames/s detected,"
            f" capture->detections p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']} ms"
            f" ({p['share_within_100ms']:.1%} within 100 ms), skipped {p['skip_share']:.1%}"
            f" {p['skipped_by_reason'] or ''}, analytics {p['analytics_frames_by_result']}"
        )


class PipelineLoad:
    """Simulated cameras on a running system: ``add``/``remove`` them through its camera API
    (``target``: the decoder's), ``measure`` windows from ``metrics_urls`` (the inference and
    analytics ``/metrics``; one URL for ``serve all``). ``async with`` deletes every camera it
    added on the way out."""

    def __init__(
        self,
        target: str,
        metrics_urls: Sequence[str],
        *,
        source: str = DEFAULT_CAMERA_SOURCE,
        token: str | None = None,
        api_key: str | None = None,
        tls: TlsOptions | None = None,
    ) -> None:
        if not metrics_urls:
            raise ValueError("metrics: at least one /metrics URL to measure from")
        self._metrics_urls = list(metrics_urls)
        self._source = source
        self._channel = aio_channel(target, token=token, api_key=api_key, tls=tls)
        self._stub = camera_service_pb2_grpc.CameraServiceStub(self._channel)
        self._prefix = f"load-{secrets.token_hex(3)}"
        self.cameras: list[str] = []

    async def __aenter__(self) -> PipelineLoad:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.remove(len(self.cameras))
        finally:
            await self._channel.close()

    async def add(self, count: int) -> None:
        for _ in range(count):
            camera_id = f"{self._prefix}-{len(self.cameras) + 1}"
            await self._stub.CreateCamera(
                camera_service_pb2.CreateCameraRequest(
                    camera_id=camera_id,
                    camera=camera_pb2.Camera(source_uri=self._source, enabled=True),
                )
            )
            self.cameras.append(camera_id)

    async def remove(self, count: int) -> None:
        """Delete the ``count`` cameras added last."""
        for _ in range(min(count, len(self.cameras))):
            name = f"cameras/{self.cameras.pop()}"
            await self._stub.DeleteCamera(camera_service_pb2.DeleteCameraRequest(name=name))

    async def scrape(self) -> _Samples:
        return await asyncio.to_thread(_scrape, self._metrics_urls)

    async def wait_attached(self, timeout_s: float = 60.0) -> None:
        """Until inference reads a ring of every camera added (``inference_cameras_attached``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            samples = await self.scrape()
            attached = sum(v for (n, _), v in samples.items() if n == "inference_cameras_attached")
            if attached >= len(self.cameras):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"inference reads {attached:g} of {len(self.cameras)} cameras"
                    f" after {timeout_s:g} s"
                )
            await asyncio.sleep(0.5)

    async def measure(self, seconds: float, label: str = "pipeline") -> PipelineWindow:
        before = await self.scrape()
        started = time.monotonic()
        progress = Progress(seconds, label)
        while (left := seconds - (time.monotonic() - started)) > 0:
            await asyncio.sleep(min(0.5, left))
            progress.update(f"{len(self.cameras)} cameras")
        progress.close()
        after = await self.scrape()
        elapsed = time.monotonic() - started
        delta = {key: value - before.get(key, 0.0) for key, value in after.items()}
        return PipelineWindow(
            seconds=elapsed,
            cameras=len(self.cameras),
            latency_buckets=_buckets(delta),
            frames_detected=_by_label(delta, "inference_frames_total", "source").get("ring", 0.0),
            skipped=_by_label(delta, "inference_frames_skipped_total", "reason"),
            analytics_frames=_by_label(delta, "analytics_frames_total", "result", "reason"),
        )
