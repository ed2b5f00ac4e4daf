"""Decoder metrics (``decoder_*`` on the runtime's registry) and the per-frame trace span.

Only the decode latency is observed per frame (a histogram child bound once per camera).
Everything the status trackers already count (frames, drops, reconnects, FPS, states) is
read from them at scrape time by a collector, so the hot path does no double bookkeeping
and the figures in /metrics and in CameraStatus can never disagree.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from its.camera.v1 import camera_status_pb2
from its_camera_ai import shm
from its_camera_ai.decoder._status import StatusBoard

__all__ = ["CameraMetrics", "DecoderMetrics"]

# From packet arrival to the frame committed in the ring; the budget is 10 ms p99.
_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)
_tracer = trace.get_tracer("its_camera_ai.decoder")


class _StatusCollector(Collector):
    def __init__(self, board: StatusBoard) -> None:
        self._board = board

    def collect(self) -> Iterator[Metric]:
        fps = GaugeMetricFamily(
            "decoder_fps",
            "Frames written to the ring per second (10 s average).",
            labels=["camera"],
        )
        decoded = CounterMetricFamily(
            "decoder_frames_decoded", "Frames decoded and written to the ring.", labels=["camera"]
        )
        dropped = CounterMetricFamily(
            "decoder_frames_dropped",
            "Frames lost: corrupt or undecodable packets, or late (decoding fell behind).",
            labels=["camera"],
        )
        reconnects = CounterMetricFamily(
            "decoder_reconnects",
            "Times the source was re-opened after a failure.",
            labels=["camera"],
        )
        states = GaugeMetricFamily("decoder_cameras", "Cameras by decoder state.", labels=["state"])
        by_state: collections.Counter[str] = collections.Counter()
        for tracker in self._board.trackers():
            camera = tracker.camera_id
            fps.add_metric([camera], tracker.measured_fps())
            decoded.add_metric([camera], tracker.frames_decoded)
            dropped.add_metric([camera], tracker.frames_dropped)
            reconnects.add_metric([camera], tracker.reconnects)
            by_state[camera_status_pb2.CameraState.Name(tracker.state)] += 1  # type: ignore[arg-type]
        for state in camera_status_pb2.CameraState.keys()[1:]:
            states.add_metric([state.removeprefix("CAMERA_STATE_").lower()], by_state[state])
        yield from (fps, decoded, dropped, reconnects, states)


class CameraMetrics:
    """What one camera's worker records per frame."""

    def __init__(self, latency: Histogram, camera_id: str) -> None:
        self._latency = latency.labels(camera_id)
        self._camera_id = camera_id

    def observe_latency(self, seconds: float) -> None:
        self._latency.observe(seconds)

    def frame_span(self) -> tuple[trace.Span, shm.TraceContext]:
        """A span for one frame and its context, to ride in the frame's slot so the
        detector's and analytics' spans join the same trace. End it after the commit."""
        span = _tracer.start_span(
            "decoder.frame",
            kind=trace.SpanKind.PRODUCER,
            attributes={"camera": self._camera_id},
        )
        context = span.get_span_context()
        return span, shm.TraceContext(
            context.trace_id.to_bytes(16, "big"),
            context.span_id.to_bytes(8, "big"),
            int(context.trace_flags),
        )


class DecoderMetrics:
    def __init__(self, registry: CollectorRegistry, board: StatusBoard) -> None:
        self._latency = Histogram(
            "decoder_decode_latency_seconds",
            "Time from a packet's arrival to its frame committed in the ring.",
            ["camera"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        registry.register(_StatusCollector(board))

    def camera(self, camera_id: str) -> CameraMetrics:
        return CameraMetrics(self._latency, camera_id)

    def forget(self, camera_id: str) -> None:
        """Drop a deleted camera's series (its counters live on in the trackers' place)."""
        with contextlib.suppress(KeyError):  # it never produced a frame
            self._latency.remove(camera_id)
