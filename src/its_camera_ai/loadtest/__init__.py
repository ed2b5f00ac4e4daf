"""Load tests through the public API: ``its-camera-ai loadtest``.

- ``LoadPlan`` / ``run_load``: an asyncio generator of QueryService and CameraService reads
  (``plan_calls`` builds them: ``RPCS``, ``GROUPS``), closed loop at a concurrency or open
  loop at a rate; a ``LoadReport`` with p50/p95/p99/max latency, calls/s, errors by status
  code, as a table or JSON; a ``Progress`` bar with ETA on stderr.
- ``load_ghz_config``: a ghz config of ``loadtest/ghz/`` checked against ghz's options
  (``GHZ_CONFIG_KEYS``) and turned into a ``LoadPlan`` (no ghz binary needed).
- ``PipelineLoad``: simulated cameras added to a running system through its camera API,
  ``PipelineWindow``: capture -> detections percentiles and drops from its ``/metrics``.
"""

from __future__ import annotations

from its_camera_ai.loadtest._cli import loadtest_main
from its_camera_ai.loadtest._generator import LoadPlan, run_load
from its_camera_ai.loadtest._ghz import GHZ_CONFIG_KEYS, GhzConfig, load_ghz_config
from its_camera_ai.loadtest._pipeline import DEFAULT_CAMERA_SOURCE, PipelineLoad, PipelineWindow
from its_camera_ai.loadtest._report import CallStats, LoadReport, Progress, percentile
from its_camera_ai.loadtest._rpcs import GROUPS, RPCS, PlannedCall, plan_calls

__all__ = [
    "DEFAULT_CAMERA_SOURCE",
    "GHZ_CONFIG_KEYS",
    "GROUPS",
    "RPCS",
    "CallStats",
    "GhzConfig",
    "LoadPlan",
    "LoadReport",
    "PipelineLoad",
    "PipelineWindow",
    "PlannedCall",
    "Progress",
    "load_ghz_config",
    "loadtest_main",
    "percentile",
    "plan_calls",
    "run_load",
]
