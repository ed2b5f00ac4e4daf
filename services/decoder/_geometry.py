"""Plane geometry for scene configuration: simple polygons, collinearity, the homography.

Pure functions on (x, y) tuples; ``_validation.py`` turns their answers into field
violations. The homography maps the road plane (metres) to the image (pixels), the
direction analytics projects in, and is fitted by the normalised DLT (Hartley & Zisserman,
algorithm 4.2), which is exact for 4 points and least-squares beyond.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Point",
    "any_three_collinear",
    "fit_homography",
    "polygon_problem",
    "reprojection_rms",
]

Point = tuple[float, float]

# sin of the smallest angle at which three points still count as spanning a triangle.
_COLLINEAR_SIN = 1e-3


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


def any_three_collinear(points: Sequence[Point]) -> tuple[int, int, int] | None:
    """The first triple of (nearly) collinear points, by index, or None."""
    n = len(points)
    for i in range(n):
        for j in range(i + 1, n):
            for k in range(j + 1, n):
                a, b, c = points[i], points[j], points[k]
                scale = math.dist(a, b) * math.dist(a, c)
                if scale == 0 or abs(_cross(a, b, c)) <= _COLLINEAR_SIN * scale:
                    return i, j, k
    return None


def _normaliser(points: NDArray[np.float64]) -> NDArray[np.float64]:
    """Similarity moving the centroid to 0 and the mean distance to sqrt(2)."""
    centre = points.mean(axis=0)
    spread = np.sqrt(((points - centre) ** 2).sum(axis=1)).mean()
    s = math.sqrt(2) / spread if spread > 0 else 1.0
    return np.array([[s, 0, -s * centre[0]], [0, s, -s * centre[1]], [0, 0, 1]])


def fit_homography(source: Sequence[Point], target: Sequence[Point]) -> NDArray[np.float64]:
    """H (3x3, H[2,2] = 1) with target ~ H source, from at least 4 correspondences."""
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    t_src, t_dst = _normaliser(src), _normaliser(dst)
    ones = np.ones((len(src), 1))
    s = (t_src @ np.hstack([src, ones]).T).T
    d = (t_dst @ np.hstack([dst, ones]).T).T
    rows = []
    for (x, y, w), (u, v, z) in zip(s, d, strict=True):
        rows.append([0, 0, 0, -z * x, -z * y, -z * w, v * x, v * y, v * w])
        rows.append([z * x, z * y, z * w, 0, 0, 0, -u * x, -u * y, -u * w])
    _, _, vt = np.linalg.svd(np.asarray(rows))
    h: NDArray[np.float64] = np.linalg.inv(t_dst) @ vt[-1].reshape(3, 3) @ t_src
    h /= h[2, 2]
    return h


def reprojection_rms(
    h: NDArray[np.float64], source: Sequence[Point], target: Sequence[Point]
) -> float:
    """Root-mean-square distance between each target point and its source mapped by h."""
    src = np.asarray(source, dtype=np.float64)
    projected = np.hstack([src, np.ones((len(src), 1))]) @ h.T
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = projected[:, :2] / projected[:, 2:3]
    error = ((xy - np.asarray(target, dtype=np.float64)) ** 2).sum(axis=1)
    return float(math.sqrt(error.mean()))
