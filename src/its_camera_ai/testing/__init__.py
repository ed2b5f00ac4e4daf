"""Harnesses shared by the test suite and the benchmarks: in-process service hosts on
loopback (``host_settings``, ``inference_host``, ``metric_value``), a recording
AnalyticsService peer (``recording_analytics``), simulator frames written into a real ring
like a decoder writes them (``RingFeeder``, ``sim_frames``), the (backend, precision) pairs
a benchmark measures (``engines``), ``until`` for polling and a
fault-injecting TCP proxy for chaos tests (``FaultProxy``) and a round-robin TCP balancer
putting several service instances behind one address (``Balancer``), and a JWT issuer
with its JWKS file (``TokenIssuer``, which lives in ``its_camera_ai.security``: ``up``
mints the local instance's development token with it).

Part of the package so that benchmarks run without pytest and import nothing from
``tests/``; never imported by a service.
"""

from __future__ import annotations

from its_camera_ai.security import TokenIssuer
from its_camera_ai.testing._balancer import Balancer, BalancerCounters
from its_camera_ai.testing._hosts import (
    BENCHMARK_BACKENDS,
    engines,
    host_settings,
    inference_host,
    metric_value,
)
from its_camera_ai.testing._inference import (
    SIM_SIZE,
    RecordingAnalytics,
    RingFeeder,
    recording_analytics,
    sim_frames,
    until,
)
from its_camera_ai.testing._proxy import FaultProxy, ProxyCounters

__all__ = [
    "BENCHMARK_BACKENDS",
    "SIM_SIZE",
    "Balancer",
    "BalancerCounters",
    "FaultProxy",
    "ProxyCounters",
    "RecordingAnalytics",
    "RingFeeder",
    "TokenIssuer",
    "engines",
    "host_settings",
    "inference_host",
    "metric_value",
    "recording_analytics",
    "sim_frames",
    "until",
]
