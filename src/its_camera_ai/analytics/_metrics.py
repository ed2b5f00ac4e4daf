"""Analytics service metrics (``analytics_*`` on the runtime's registry).

The circuit breakers export their own state (``circuit_breaker_state{dependency}``); the
engine's per-camera figures are read from the engines at batch time, not double-counted.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from its_camera_ai.analytics._records import CameraStats

__all__ = ["AnalyticsMetrics"]

# One batch's transaction (or spool fsync); the to-analytics budget is 5 ms p99.
_WRITE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


def _spool_gauges(registry: CollectorRegistry) -> tuple[Gauge, Gauge, Gauge]:
    """The spool's size, entries and capacity: the spool alerts divide the first by the last."""
    return (
        Gauge("analytics_spool_bytes", "Size of the local spool file.", registry=registry),
        Gauge(
            "analytics_spool_entries",
            "Batches in the local spool waiting for PostgreSQL.",
            registry=registry,
        ),
        Gauge(
            "analytics_spool_max_bytes",
            "The spool's capacity (analytics.spool_max_bytes): past it, batches are refused.",
            registry=registry,
        ),
    )


class AnalyticsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.detections = Counter(
            "analytics_detections_total", "Detections received in frames.", registry=registry
        )
        self.frames = Counter(
            "analytics_frames_total",
            "Frames received, by result (accepted, rejected) and rejection reason.",
            ["result", "reason"],
            registry=registry,
        )
        self.detection_issues = Counter(
            "analytics_detection_issues_total",
            "Detections repaired or dropped (NaN scores, boxes outside the frame...).",
            ["issue"],
            registry=registry,
        )
        self.tracks_active = Gauge(
            "analytics_tracks_active",
            "Tracks present in the camera's latest frame.",
            ["camera"],
            registry=registry,
        )
        self.events = Counter(
            "analytics_events_total",
            "Event records written (opened, updated, closed), by type.",
            ["type"],
            registry=registry,
        )
        self.write_latency = Histogram(
            "analytics_write_latency_seconds",
            "Time to make one batch durable, by target (postgres, spool).",
            ["target"],
            buckets=_WRITE_BUCKETS,
            registry=registry,
        )
        self.batches = Counter(
            "analytics_batches_total",
            "Batches acknowledged, by outcome (applied, duplicate).",
            ["outcome"],
            registry=registry,
        )
        self.spool_bytes, self.spool_entries, self.spool_max_bytes = _spool_gauges(registry)
        self.drift_kl = Gauge(
            "analytics_drift_kl",
            "KL divergence of the detector's recent output from its baseline, by camera and"
            " distribution (class mix, score); absent until the drift window first fills.",
            ["camera", "distribution"],
            registry=registry,
        )
        self.replayed = Counter(
            "analytics_spool_replayed_total",
            "Spooled batches replayed, by result (applied, already_applied).",
            ["result"],
            registry=registry,
        )
        self.fanout = Counter(
            "analytics_fanout_total",
            "Live fan-out messages to Redis, by result (published, dropped_queue_full,"
            " dropped_redis_unavailable).",
            ["result"],
            registry=registry,
        )
        self.camera_resets = Counter(
            "analytics_camera_resets_total",
            "Camera engine states discarded by AnalyticsService.ResetCameraState.",
            registry=registry,
        )
        self.state_conflicts = Counter(
            "analytics_state_conflicts_total",
            "Batches whose camera state another analytics instance had moved on: applied"
            " again on the stored state, by path (live, replay). Steady growth means two"
            " instances keep taking one camera's stream from each other.",
            ["path"],
            registry=registry,
        )
        self.retention_deleted = Counter(
            "analytics_retention_deleted_rows_total",
            "Rows deleted by retention.",
            registry=registry,
        )

    def camera_changed(self, stats: CameraStats) -> None:
        """The per-camera gauges, from the statistics a batch left its engine with."""
        self.tracks_active.labels(stats.camera).set(stats.active_tracks)
        for distribution, kl in (("class", stats.drift_kl_class), ("score", stats.drift_kl_score)):
            if kl is not None:
                self.drift_kl.labels(stats.camera, distribution).set(kl)

    def spool_changed(self, entries: int, size: int) -> None:
        self.spool_entries.set(entries)
        self.spool_bytes.set(size)
