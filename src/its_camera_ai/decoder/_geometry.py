"""Plane geometry for scene configuration: why a polygon is not simple.

Pure functions on (x, y) tuples; ``_validation.py`` turns their answers into field
violations. Calibration is checked with analytics' homography (``_validation.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["Point", "polygon_problem", "segments_intersect"]

Point = tuple[float, float]


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _on_segment(p: Point, q: Point, r: Point) -> bool:
    """r, known collinear with p-q, lies within the box of p-q."""
    return min(p[0], q[0]) <= r[0] <= max(p[0], q[0]) and min(p[1], q[1]) <= r[1] <= max(p[1], q[1])


def segments_intersect(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
    """Closed segments p1-p2 and q1-q2 share at least one point (touching counts)."""
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    if d1 * d2 < 0 and d3 * d4 < 0:
        return True
    return (
        (d1 == 0 and _on_segment(q1, q2, p1))
        or (d2 == 0 and _on_segment(q1, q2, p2))
        or (d3 == 0 and _on_segment(p1, p2, q1))
        or (d4 == 0 and _on_segment(p1, p2, q2))
    )


def polygon_problem(vertices: Sequence[Point]) -> str | None:
    """Why ``vertices`` is not a simple polygon (None when it is one)."""
    n = len(vertices)
    if n < 3:
        return "needs at least 3 vertices"
    if vertices[0] == vertices[-1]:
        return "must not repeat the first vertex at the end (the polygon closes itself)"
    for i in range(n):
        if vertices[i] == vertices[(i + 1) % n]:
            return f"vertices {i} and {(i + 1) % n} are the same point"
    edges = [(vertices[i], vertices[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        # Neighbouring edges share a vertex by construction; every other pair must be apart.
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue
            if segments_intersect(*edges[i], *edges[j]):
                return f"intersects itself (edges {i} and {j})"
    # Only now: a self-intersecting bow tie can have zero signed area too.
    area = sum(_cross((0.0, 0.0), vertices[i], vertices[(i + 1) % n]) for i in range(n)) / 2
    return "has zero area" if area == 0 else None
