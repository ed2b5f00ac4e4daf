"""The live terminal view (``its-camera-ai view``; ``up`` shows it unless ``--no-view``).

A client of the public API like any other: cameras with their decoder state and frame
rates (CameraService), live analytics, counts per line, class and direction and the latest
incidents (QueryService), and, where the processes' HTTP ports are known (``up``'s
up.json), p50/p99 latency per pipeline stage from their ``/metrics``.

``ViewFetcher.fetch`` gets a ``ViewSnapshot`` (plain data); ``render_view`` turns it into a
rich renderable without a terminal; ``run_view`` refreshes it in place until ``q`` or
Ctrl-C. ``Endpoints``/``read_up_dir``/``resolve_endpoints`` find the services (one
``HOST:PORT``, or an ``up`` data directory), for the ``cameras`` command too.
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
from its_camera_ai.view._up import (
    DEFAULT_TARGET,
    DEFAULT_UP_DIR,
    Endpoints,
    read_up_dir,
    resolve_endpoints,
)

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_UP_DIR",
    "STAGES",
    "CameraRow",
    "Endpoints",
    "IncidentRow",
    "LineCount",
    "MetricsSample",
    "MetricsWindow",
    "StageLatency",
    "ViewFetcher",
    "ViewSnapshot",
    "histogram_quantile",
    "read_up_dir",
    "render_view",
    "resolve_endpoints",
    "run_view",
    "view_main",
]
