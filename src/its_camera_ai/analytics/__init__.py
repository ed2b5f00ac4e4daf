"""The analytics service's engine and records: tracks, counts, speeds, queues, incidents.

``CameraAnalytics`` is one camera's engine (detections in, records out); the records are
plain dataclasses whose enums equal the wire enums. The service itself is
``its_camera_ai.analytics.server``; the scene model is ``its_camera_ai.scene``, the engine's
tunables ``its_camera_ai.common.AnalyticsEngineSettings``.
"""

from __future__ import annotations

from its_camera_ai.analytics._assign import assign, hungarian, iou_matrix
from its_camera_ai.analytics._bins import BinStore
from its_camera_ai.analytics._drift import DriftMonitor, kl_divergence
from its_camera_ai.analytics._engine import CameraAnalytics
from its_camera_ai.analytics._events import EventBook
from its_camera_ai.analytics._fanout import commit_json, stats_json
from its_camera_ai.analytics._measures import SceneMeasures
from its_camera_ai.analytics._records import (
    MOTOR_CLASSES,
    SPEED_BINS,
    BinKey,
    BinRecord,
    DetectionIssue,
    EventEvidence,
    EventRecord,
    EventType,
    FrameInput,
    FrameOutcome,
    FrameReject,
    LevelOfService,
    LineCrossing,
    ObjectClass,
    Scope,
    Severity,
    histogram_percentile,
    level_of_service,
)
from its_camera_ai.analytics._store import (
    INSERT_CROSSING,
    UPSERT_BIN,
    UPSERT_EVENT,
    bin_row,
    event_row,
)
from its_camera_ai.analytics._tracker import ByteTracker
from its_camera_ai.analytics._tracks import TrackTable

__all__ = [
    "INSERT_CROSSING",
    "MOTOR_CLASSES",
    "SPEED_BINS",
    "UPSERT_BIN",
    "UPSERT_EVENT",
    "BinKey",
    "BinRecord",
    "BinStore",
    "ByteTracker",
    "CameraAnalytics",
    "DetectionIssue",
    "DriftMonitor",
    "EventBook",
    "EventEvidence",
    "EventRecord",
    "EventType",
    "FrameInput",
    "FrameOutcome",
    "FrameReject",
    "LevelOfService",
    "LineCrossing",
    "ObjectClass",
    "SceneMeasures",
    "Scope",
    "Severity",
    "TrackTable",
    "assign",
    "bin_row",
    "commit_json",
    "event_row",
    "histogram_percentile",
    "hungarian",
    "iou_matrix",
    "kl_divergence",
    "level_of_service",
    "stats_json",
]
