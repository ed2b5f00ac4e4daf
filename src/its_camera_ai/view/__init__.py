"""The live terminal view (``its-camera-ai view``; ``up`` shows it unless ``--no-view``).

A client of the public API like any other: cameras with their decoder state and frame
rates (CameraService), live analytics, counts per line, class and direction and the latest
incidents (QueryService), and, where the processes' HTTP ports are known (``up``'s
up.json), p50/p99 latency per pipeline stage from their ``/metrics``.

``ViewFetcher.fetch`` gets a ``ViewSnapshot`` (plain data); ``render_view`` turns it into a
rich renderable without a terminal; ``run_view`` refreshes it in place until ``q`` or
Ctrl-C. The services are found by ``its_camera_ai.client.resolve_endpoints`` (one
``HOST:PORT``, or an ``up`` data directory), as every command does.
"""

from __future__ import annotations

from its_camera_ai.view._fetch import ViewFetcher
from its_camera_ai.view._metrics import (
    STAGES,
    MetricsSample,
    MetricsWindow,
    histogram_quantile,
)
from its_camera_ai.view._model import (
    CameraRow,
    IncidentRow,
    LineCount,
    StageLatency,
    ViewSnapshot,
)
from its_camera_ai.view._render import render_view
from its_camera_ai.view._run import run_view, view_main

__all__ = [
    "STAGES",
    "CameraRow",
    "IncidentRow",
    "LineCount",
    "MetricsSample",
    "MetricsWindow",
    "StageLatency",
    "ViewFetcher",
    "ViewSnapshot",
    "histogram_quantile",
    "render_view",
    "run_view",
    "view_main",
]
