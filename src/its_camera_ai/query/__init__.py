"""The query service: the read side (``QueryService``) and administration (``AdminService``).

``UNIT`` is what ``its-camera-ai serve query`` runs. ``AnswerCache`` (with ``CacheKey``) is
its two-level answer cache, ``EventReader`` and ``TrafficReader`` its SQL readers: public for
the tests and benchmarks that measure them. AdminService answers UNIMPLEMENTED until the
security issue lands; health and reflection work.
"""

from __future__ import annotations

from its_camera_ai.query._cache import END_OF_TIME_NS, AnswerCache, CacheKey, HitRatios, Kind
from its_camera_ai.query._events import EventReader
from its_camera_ai.query._traffic import TrafficReader
from its_camera_ai.query.server import UNIT

__all__ = [
    "END_OF_TIME_NS",
    "UNIT",
    "AnswerCache",
    "CacheKey",
    "EventReader",
    "HitRatios",
    "Kind",
    "TrafficReader",
]
