"""ITS Camera AI: traffic-camera analytics as gRPC services.

One import root. Its packages, one concern each:

``common``     the runtime every service shares (config, gRPC host, errors, storage, backoff)
``scene``      a camera's scene: lines, zones, lanes, calibration, validated one way
``shm``        zero-copy shared-memory frame rings (no gRPC, usable alone)
``decoder``    cameras decoded into rings (``CameraService``)
``inference``  detections from ring frames (``InferenceService``)
``analytics``  tracks, counts, speeds, incidents (``AnalyticsService``)
``query``      the read side (``QueryService``, ``AdminService``)
``sim``        the traffic simulator: synthetic cameras, training data, ground truth
``client``     channel helpers for the generated stubs in the ``its`` namespace

The command line is ``its-camera-ai`` (or ``python -m its_camera_ai``); the design is
``docs/architecture.md``.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

# gRPC's fork handlers run in every child forked while gRPC threads are busy, and such a
# child can crash in them before it reaches exec (grpc/grpc#13998, #13873): a CI run saw
# pg_ctl die with SIGSEGV under a running server. Every fork here is followed by exec
# (pg_ctl, tools) and multiprocessing uses spawn, so no child needs them. Set before any
# module of this package imports grpc, which reads it once.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

try:
    __version__ = version("its-camera-ai")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
