"""How the detection producer accounts for every frame it is handed.

A frame given to ``DetectionProducer.submit()`` ends in exactly one place: acknowledged by
analytics (accepted, or acknowledged again as a ``duplicate``), rejected by analytics for good
(by ``ErrorReason``), or given up without an acknowledgement (by one of the reasons below).
Until then it is pending or in an unacknowledged batch. The producer keeps these figures
twice, for two readers: as Prometheus families (``ProducerMetrics``, ``inference_analytics_*``)
for dashboards and alerts, and as a consistent snapshot (``ProducerStats``) for its own
shutdown log line and for tests that check nothing is lost or counted twice.

Kept apart from the stream so that what is counted, and under which label, reads in one place;
the producer decides when a frame reaches which end.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "BUFFER_FULL",
    "INVALID_BATCH",
    "SHUTDOWN",
    "ProducerLedger",
    "ProducerMetrics",
    "ProducerStats",
]

# Undelivered reasons: the ``reason`` label of ``frames_undelivered``.
# The oldest pending frames, dropped beyond ``max_pending_frames``.
BUFFER_FULL = "buffer_full"
# Submitted after close(), or still pending or unacknowledged when its drain ran out.
SHUTDOWN = "shutdown"
# A camera name that is not "cameras/{id}", or a batch analytics refused as malformed.
INVALID_BATCH = "invalid_batch"

# capture -> sent spans decode, ring hand-off, batching and inference: ~35 ms of the 100 ms
# end-to-end budget when healthy, seconds during an outage.
_CAPTURE_TO_SEND_BUCKETS = (
    0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# One batch made durable by analytics (its write is budgeted at 5 ms p99).
_ACK_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class ProducerMetrics:
    """Producer metrics (``inference_analytics_*``) on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.frames_submitted = Counter(
            "inference_analytics_frames_submitted_total",
            "Frames handed to the producer for delivery to analytics.",
            registry=registry,
        )
        self.frames_acknowledged = Counter(
            "inference_analytics_frames_acknowledged_total",
            "Frames analytics made durable (accepted, or acknowledged again as a duplicate).",
            registry=registry,
        )
        self.frames_rejected = Counter(
            "inference_analytics_frames_rejected_total",
            "Frames analytics refused for good, by ErrorReason (RESOURCE_NOT_FOUND...).",
            ["reason"],
            registry=registry,
        )
        self.frames_undelivered = Counter(
            "inference_analytics_frames_undelivered_total",
            "Frames given up without an acknowledgement, by reason (buffer_full, shutdown,"
            " invalid_batch).",
            ["reason"],
            registry=registry,
        )
        self.batches_sent = Counter(
            "inference_analytics_batches_sent_total",
            "Batches sent for the first time.",
            registry=registry,
        )
        self.batches_resent = Counter(
            "inference_analytics_batches_resent_total",
            "Unacknowledged batches sent again on a new stream.",
            registry=registry,
        )
        self.pending_frames = Gauge(
            "inference_analytics_pending_frames",
            "Frames waiting to be sent (bounded by max_pending_frames).",
            registry=registry,
        )
        self.unacked_batches = Gauge(
            "inference_analytics_unacked_batches",
            "Batches sent and not yet acknowledged (at most 64).",
            registry=registry,
        )
        self.connected = Gauge(
            "inference_analytics_connected",
            "1 while the detection stream to analytics is open.",
            registry=registry,
        )
        self.reconnects = Counter(
            "inference_analytics_reconnects_total",
            "Streams re-established after a broken one.",
            registry=registry,
        )
        self.capture_to_send = Histogram(
            "inference_analytics_capture_to_send_latency_seconds",
            "Per frame: wall-clock time from capture to its batch's first send to analytics.",
            buckets=_CAPTURE_TO_SEND_BUCKETS,
            registry=registry,
        )
        self.ack_latency = Histogram(
            "inference_analytics_ack_latency_seconds",
            "Per batch: time from its (latest) send to its acknowledgement.",
            buckets=_ACK_BUCKETS,
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class ProducerStats:
    """A snapshot of the producer's counters.

    Every submitted frame ends in exactly one of ``frames_acknowledged``, ``frames_rejected``
    or ``frames_undelivered``, or is still ``pending_frames`` or in an unacknowledged batch.
    (A batch acknowledged as a ``duplicate`` counts all its frames as acknowledged: the
    rejections of its first delivery were lost with that delivery's acknowledgement.)
    """

    frames_submitted: int
    frames_acknowledged: int
    frames_rejected: dict[str, int]
    frames_undelivered: dict[str, int]
    batches_sent: int
    batches_resent: int
    batches_acknowledged: int
    reconnects: int
    connected: bool
    pending_frames: int
    unacked_batches: int


class ProducerLedger:
    """Where each frame ended, counted twice: in ``ProducerMetrics`` and in the counters behind
    ``ProducerStats``. Thread-safe: ``submit()`` counts on the batching thread, the stream on
    the event loop. Frames still pending or unacknowledged are counted by their holders (the
    pending-frame queue, the ack window) and handed to ``snapshot``."""

    def __init__(self, metrics: ProducerMetrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._submitted = 0
        self._acknowledged = 0
        self._rejected: Tally[str] = Tally()
        self._undelivered: Tally[str] = Tally()
        self._batches_sent = 0
        self._batches_resent = 0
        self._batches_acknowledged = 0
        self._reconnects = 0
        self._connected = False

    def count_submitted(self) -> None:
        with self._lock:
            self._submitted += 1
        self._metrics.frames_submitted.inc()

    def count_undelivered(self, reason: str, frames: int) -> None:
        """``frames`` given up without an acknowledgement, for ``reason``."""
        with self._lock:
            # Even for none: a clean shutdown reports ``{"shutdown": 0}``, as it always has.
            self._undelivered[reason] += frames
        if frames:
            self._metrics.frames_undelivered.labels(reason).inc(frames)

    def count_settled(self, frames: int, rejected: Tally[str]) -> None:
        """A batch of ``frames`` acknowledged, ``rejected`` of them (by reason) for good."""
        refused = min(sum(rejected.values()), frames)
        with self._lock:
            self._acknowledged += frames - refused
            self._rejected.update(rejected)
            self._batches_acknowledged += 1
        self._metrics.frames_acknowledged.inc(frames - refused)
        for reason, count in rejected.items():
            self._metrics.frames_rejected.labels(reason).inc(count)

    def count_sent(self, *, resent: bool) -> None:
        with self._lock:
            if resent:
                self._batches_resent += 1
            else:
                self._batches_sent += 1
        (self._metrics.batches_resent if resent else self._metrics.batches_sent).inc()

    def count_reconnect(self) -> None:
        with self._lock:
            self._reconnects += 1
        self._metrics.reconnects.inc()

    def set_connected(self, connected: bool) -> None:
        with self._lock:
            self._connected = connected
        self._metrics.connected.set(1 if connected else 0)

    @property
    def batches_acknowledged(self) -> int:
        with self._lock:
            return self._batches_acknowledged

    def snapshot(self, *, pending_frames: int, unacked_batches: int) -> ProducerStats:
        with self._lock:
            return ProducerStats(
                frames_submitted=self._submitted,
                frames_acknowledged=self._acknowledged,
                frames_rejected=dict(self._rejected),
                frames_undelivered=dict(self._undelivered),
                batches_sent=self._batches_sent,
                batches_resent=self._batches_resent,
                batches_acknowledged=self._batches_acknowledged,
                reconnects=self._reconnects,
                connected=self._connected,
                pending_frames=pending_frames,
                unacked_batches=unacked_batches,
            )
