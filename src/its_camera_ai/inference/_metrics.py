"""Inference service metrics: ``inference_*`` per stage, ``gpu_*`` from NVML, ``latency_*``.

Every stage of a frame's way through the service has its own histogram (queue wait,
preprocess, model, postprocess) so that a latency regression names its stage; the
end-to-end figure is measured from the frame's capture time (wall clock, from the slot).
GPU figures are read from NVML (``nvidia-ml-py``) at scrape time, when it and a GPU are
present; without them the ``gpu_*`` families are simply absent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["InferenceMetrics"]

_log = logging.getLogger(__name__)

# Stage budgets are a few milliseconds (batching wait <= 10 ms, model <= 10 ms on a GPU);
# the CPU model takes tens.
_STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_E2E_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def stage(name: str, what: str) -> Histogram:
            return Histogram(
                f"inference_{name}_seconds", what, buckets=_STAGE_BUCKETS, registry=registry
            )

        self.queue_wait = stage("queue_wait", "Time a frame waited for its batch to start.")
        self.preprocess = stage(
            "preprocess", "Reading, converting and letterboxing a batch's frames."
        )
        self.model = stage("model", "The model's forward pass for one batch (device synced).")
        self.postprocess = stage(
            "postprocess", "Decoding a batch's outputs into detections in frame pixels."
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "Frames per model batch.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.frames = Counter(
            "inference_frames_total",
            "Frames run through the model, by source (ring, request).",
            ["source"],
            registry=registry,
        )
        self.skipped = Counter(
            "inference_frames_skipped_total",
            "Ring frames not run through the model, by camera and reason (superseded: a "
            "newer frame of the camera replaced it while queued; overrun: the ring lapped the "
            "reader; overwritten: the slot changed while being read; failed: the batch failed).",
            ["camera", "reason"],
            registry=registry,
        )
        self.detections = Counter(
            "inference_detections_total", "Detections produced.", registry=registry
        )
        self.cameras = Gauge(
            "inference_cameras_attached", "Camera rings being read.", registry=registry
        )
        self.batch_failures = Counter(
            "inference_batch_failures_total",
            "Batches whose preprocessing, model or postprocessing raised.",
            registry=registry,
        )
        self.capture_to_detections = Histogram(
            "latency_capture_to_detections_seconds",
            "From a frame's capture (its slot's wall-clock time) to its detections being "
            "ready to send.",
            buckets=_E2E_BUCKETS,
            registry=registry,
        )
        registry.register(_GpuCollector())


class _GpuCollector(Collector):
    """``gpu_*`` gauges read from NVML on every scrape."""

    def __init__(self) -> None:
        self._nvml: Any = None
        try:
            import pynvml  # type: ignore[import-not-found]  # noqa: PLC0415 - optional

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:  # not installed, no driver, no device: no gpu_* metrics
            self._nvml = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nv = self._nvml
        if nv is None:
            return
        util = GaugeMetricFamily(
            "gpu_utilization_ratio", "Fraction of time the GPU was busy.", labels=["gpu"]
        )
        used = GaugeMetricFamily("gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"])
        total = GaugeMetricFamily("gpu_memory_total_bytes", "GPU memory.", labels=["gpu"])
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                memory = nv.nvmlDeviceGetMemoryInfo(handle)
                util.add_metric([str(i)], nv.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
                used.add_metric([str(i)], float(memory.used))
                total.add_metric([str(i)], float(memory.total))
        except Exception as exc:  # a scrape must not fail because NVML did
            _log.warning("NVML read failed", extra={"error": str(exc)})
            return
        yield from (util, used, total)
