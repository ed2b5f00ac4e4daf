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

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("its-camera-ai")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
