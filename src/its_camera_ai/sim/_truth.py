"""Ground truth records: per-frame objects, line crossings and incidents, JSON-ready.

Boxes are in pixels of the rendered frame as (x0, y0, x1, y1) with x1/y1 exclusive, so a box
covering pixel columns 10..19 is (10, y0, 20, y1). ``box`` is the visible extent taken from
the id buffer (what a detector can see); ``full_box`` is the whole projected object clipped to
the frame (what it would be without occluders).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "CountingLine",
    "Crossing",
    "FrameTruth",
    "IncidentTruth",
    "ObjectTruth",
    "frame_tags",
]

Box = tuple[float, float, float, float]
# Below these an object is labelled ``difficult``: too small or too hidden to demand it.
MIN_BOX_H, MIN_BOX_W, MIN_VISIBLE_PX, MAX_OCCLUSION = 8.0, 4.0, 24, 0.8
HEAVY_OCCLUSION = 0.5
SMALL_AREA = 32.0 * 32.0


@dataclass(frozen=True, slots=True)
class ObjectTruth:
    track_id: int
    cls: str
    class_id: int
    box: Box
    full_box: Box
    visible_px: int
    occlusion: float
    truncation: float
    difficult: bool
    world_xy: tuple[float, float]
    heading_deg: float
    speed_mps: float
    speed_kmh: float
    dims_m: tuple[float, float, float]
    lane: str
    incident: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Crossing:
    """A track's ground point passing a counting line; direction +1 is left-to-right of a->b."""

    line: str
    track_id: int
    cls: str
    direction: int
    time_s: float
    frame: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class IncidentTruth:
    kind: str
    track_id: int
    start_s: float
    end_s: float | None  # None: still going on
    lane: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FrameTruth:
    frame: int
    time_s: float
    width: int
    height: int
    condition: str
    objects: tuple[ObjectTruth, ...]
    crossings: tuple[Crossing, ...]
    incidents: tuple[IncidentTruth, ...]
    signals: dict[str, str]
    tags: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "time_s": self.time_s,
            "width": self.width,
            "height": self.height,
            "condition": self.condition,
            "objects": [o.to_dict() for o in self.objects],
            "crossings": [c.to_dict() for c in self.crossings],
            "incidents": [i.to_dict() for i in self.incidents],
            "signals": dict(self.signals),
            "tags": list(self.tags),
        }


def is_difficult(box: Box, visible_px: int, occlusion: float) -> bool:
    w, h = box[2] - box[0], box[3] - box[1]
    return (
        h < MIN_BOX_H or w < MIN_BOX_W or visible_px < MIN_VISIBLE_PX or occlusion >= MAX_OCCLUSION
    )


def frame_tags(condition: str, objects: tuple[ObjectTruth, ...]) -> tuple[str, ...]:
    """Condition plus ``heavy_occlusion`` / ``small_objects`` for per-condition evaluation."""
    tags = [condition]
    easy = [o for o in objects if not o.difficult]
    if any(o.occlusion >= HEAVY_OCCLUSION for o in easy):
        tags.append("heavy_occlusion")
    small = [o for o in easy if (o.box[2] - o.box[0]) * (o.box[3] - o.box[1]) < SMALL_AREA]
    if easy and 2 * len(small) >= len(easy):
        tags.append("small_objects")
    return tuple(tags)


@dataclass(frozen=True, slots=True)
class CountingLine:
    """A world segment; ``cross`` finds where a ground-point move passes it."""

    name: str
    a: tuple[float, float]
    b: tuple[float, float]

    def cross(self, p: tuple[float, float], q: tuple[float, float]) -> tuple[int, float] | None:
        """(direction, fraction of the move) when p->q passes the segment, else None."""
        ax, ay = self.a
        ex, ey = self.b[0] - ax, self.b[1] - ay
        d1 = ex * (p[1] - ay) - ey * (p[0] - ax)
        d2 = ex * (q[1] - ay) - ey * (q[0] - ax)
        # Strict on one side, inclusive on the other: touching the line counts exactly once.
        if (d1 > 0) == (d2 > 0):
            return None
        u = d1 / (d1 - d2)
        cx, cy = p[0] + u * (q[0] - p[0]), p[1] + u * (q[1] - p[1])
        lam = ((cx - ax) * ex + (cy - ay) * ey) / (ex * ex + ey * ey)
        if not 0.0 <= lam <= 1.0:
            return None
        return (1 if d1 > 0 else -1), u

    def to_dict(self, image_a: tuple[float, float], image_b: tuple[float, float]) -> dict[str, Any]:
        return {
            "name": self.name,
            "a": list(self.a),
            "b": list(self.b),
            "image_a": [_finite(v) for v in image_a],
            "image_b": [_finite(v) for v in image_b],
        }


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None
