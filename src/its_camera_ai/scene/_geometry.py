"""Plane geometry for scenes: directed segments, polygons and the ground-plane homography.

Everything used per frame is vectorised over points because it runs on every track. Sides
follow ``its.common.v1.CrossingDirection``: with y pointing down, a point p is on the right
of the directed segment a->b when (b - a) x (p - a) = dx * (p.y - a.y) - dy * (p.x - a.x) > 0.

The rules for degenerate cases, one set for configuration and one for run time:

- Configuration (``polygon_problem``): a polygon must be simple in the strict sense. Two
  non-adjacent edges that share any point, by crossing, by a vertex touching an edge or by
  overlapping collinearly, make it not simple; so do repeated vertices, fewer than 3, and
  zero area. (Touching edges make the even-odd inside test ambiguous along the contact.)
- Run time (counting): a track crosses a line when its side changes by more than the
  hysteresis margin and its move meets the drawn segment, ends included
  (``segment_crossing``'s fraction along the segment in 0..1). Touching the line without
  changing sides is no crossing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "GeometryError",
    "Homography",
    "PolygonSet",
    "distance_to_boundary",
    "fit_homography",
    "inside_frame",
    "points_in_polygon",
    "polygon_area",
    "polygon_problem",
    "segment_crossing",
    "signed_distances",
]

F64 = NDArray[np.float64]

# Triangles whose area, in Hartley-normalised coordinates (mean distance sqrt(2) from the
# centroid), is below this are collinear for the purpose of fitting: the fit would be
# ill-conditioned there even if the points are a hair off a line.
_COLLINEAR_AREA = 1e-4


class GeometryError(ValueError):
    """Unusable geometry. ``field`` is relative to the input (e.g. ``points``)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def signed_distances(points: F64, segments: F64) -> F64:
    """Signed distance (pixels, + on the right) of (P, 2) points to (L, 4) segment lines."""
    ax, ay = segments[:, 0], segments[:, 1]
    dx, dy = segments[:, 2] - ax, segments[:, 3] - ay
    norm = np.hypot(dx, dy)
    px, py = points[:, 0:1], points[:, 1:2]
    out: F64 = (dx * (py - ay) - dy * (px - ax)) / norm
    return out


def segment_crossing(
    p: tuple[float, float], q: tuple[float, float], seg: tuple[float, float, float, float]
) -> tuple[float, float] | None:
    """Where the move p->q meets the segment's line: (fraction along p->q, along the segment).

    None when the move is parallel to the line. The caller decides what range of the second
    value is "within the segment" (0..1 inclusive for counting lines).
    """
    ax, ay, bx, by = seg
    ex, ey = bx - ax, by - ay
    d1 = ex * (p[1] - ay) - ey * (p[0] - ax)
    d2 = ex * (q[1] - ay) - ey * (q[0] - ax)
    if d1 == d2:
        return None
    u = d1 / (d1 - d2)
    cx, cy = p[0] + u * (q[0] - p[0]), p[1] + u * (q[1] - p[1])
    lam = ((cx - ax) * ex + (cy - ay) * ey) / (ex * ex + ey * ey)
    return u, lam


def inside_frame(boxes: F64, width: float, height: float) -> NDArray[np.bool_]:
    """Which (N, 4) boxes stay more than a pixel clear of the frame's border (are not cut by
    it: a box's bottom-centre is on the road under the object only then)."""
    out: NDArray[np.bool_] = (
        (boxes[:, 0] > 1) & (boxes[:, 1] > 1) & (boxes[:, 2] < width - 1)
        & (boxes[:, 3] < height - 1)
    )  # fmt: skip
    return out


def points_in_polygon(points: F64, vertices: F64) -> NDArray[np.bool_]:
    """Even-odd rule: which of (P, 2) points are inside the (V, 2) polygon."""
    if len(points) == 0:
        return np.zeros(0, dtype=np.bool_)
    px, py = points[:, 0:1], points[:, 1:2]
    x0, y0 = vertices[:, 0], vertices[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    # Half-open in y, so a vertex exactly at a point's height counts for one edge only.
    straddles = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    hits = straddles & (px < x_at)
    inside: NDArray[np.bool_] = (np.count_nonzero(hits, axis=1) % 2) == 1
    return inside


class PolygonSet:
    """Many polygons tested in one pass: ``contains`` gives (P, K) membership.

    Edges of all polygons are concatenated once at configuration time, so a frame costs a
    handful of array operations whatever the number of lanes and zones.
    """

    def __init__(self, polygons: tuple[F64, ...]) -> None:
        self.count = len(polygons)
        if not polygons:
            polygons = (np.zeros((3, 2)),)
        x0 = np.concatenate([p[:, 0] for p in polygons])
        y0 = np.concatenate([p[:, 1] for p in polygons])
        x1 = np.concatenate([np.roll(p[:, 0], -1) for p in polygons])
        y1 = np.concatenate([np.roll(p[:, 1], -1) for p in polygons])
        self.y0, self.y1, self.x0 = y0, y1, x0
        dy = y1 - y0
        # Horizontal edges never straddle a point's height; their slope is never used.
        self.inv_slope = np.where(dy != 0, (x1 - x0) / np.where(dy != 0, dy, 1.0), 0.0)
        self.starts = np.cumsum([0] + [len(p) for p in polygons[:-1]])

    def contains(self, points: F64) -> NDArray[np.bool_]:
        if self.count == 0 or len(points) == 0:
            return np.zeros((len(points), self.count), dtype=np.bool_)
        px, py = points[:, 0:1], points[:, 1:2]
        straddles = (self.y0 > py) != (self.y1 > py)
        hits = straddles & (px < self.x0 + (py - self.y0) * self.inv_slope)
        counts = np.add.reduceat(hits.view(np.int8), self.starts, axis=1)
        inside: NDArray[np.bool_] = (counts & 1).astype(np.bool_)
        return inside


def distance_to_boundary(points: F64, vertices: F64) -> F64:
    """Distance from each of (P, 2) points to the nearest edge of a polygon."""
    a = vertices
    b = np.roll(vertices, -1, axis=0)
    e = b - a  # (V, 2)
    rel = points[:, None, :] - a[None, :, :]  # (P, V, 2)
    denom = np.maximum(np.einsum("ij,ij->i", e, e), 1e-12)
    u = np.clip(np.einsum("pvj,vj->pv", rel, e) / denom, 0.0, 1.0)
    closest = a[None] + u[..., None] * e[None]
    d: F64 = np.hypot(*(points[:, None, :] - closest).transpose(2, 0, 1)).min(axis=1)
    return d


def polygon_area(vertices: F64) -> float:
    """Unsigned shoelace area."""
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


Point = tuple[float, float]


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _on_segment(p: Point, q: Point, r: Point) -> bool:
    """r, known collinear with p-q, lies within the box of p-q."""
    return min(p[0], q[0]) <= r[0] <= max(p[0], q[0]) and min(p[1], q[1]) <= r[1] <= max(p[1], q[1])


def _segments_touch(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
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
    """Why ``vertices`` is not a simple polygon (None when it is one); configs are small,
    so O(V^2) is fine."""
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
            if _segments_touch(*edges[i], *edges[j]):
                return f"intersects itself (edges {i} and {j})"
    # Only now: a self-intersecting bow tie can have zero signed area too.
    area = sum(_cross((0.0, 0.0), vertices[i], vertices[(i + 1) % n]) for i in range(n)) / 2
    return "has zero area" if area == 0 else None


def _normaliser(pts: F64) -> F64:
    """Hartley: move the centroid to the origin and scale the mean distance to sqrt(2)."""
    centre = pts.mean(axis=0)
    mean_dist = float(np.mean(np.hypot(*(pts - centre).T)))
    s = math.sqrt(2.0) / mean_dist if mean_dist > 0 else 1.0
    return np.array([[s, 0.0, -s * centre[0]], [0.0, s, -s * centre[1]], [0.0, 0.0, 1.0]])


def _apply(h: F64, pts: F64) -> F64:
    w = pts @ h[:, :2].T + h[:, 2]
    out: F64 = w[:, :2] / w[:, 2:3]
    return out


def _collinear_triple(pts: F64) -> tuple[int, int, int] | None:
    norm = _apply(_normaliser(pts), pts)
    idx = np.array(list(itertools.combinations(range(len(pts)), 3)), dtype=np.intp)
    a, b, c = norm[idx[:, 0]], norm[idx[:, 1]], norm[idx[:, 2]]
    area = 0.5 * np.abs(
        (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    )
    bad = np.flatnonzero(area < _COLLINEAR_AREA)
    if len(bad) == 0:
        return None
    i, j, k = idx[bad[0]]
    return int(i), int(j), int(k)


@dataclass(frozen=True, slots=True)
class Homography:
    """Image pixels <-> ground metres. ``to_ground`` gives NaN beyond the horizon."""

    image_to_ground: F64
    ground_to_image: F64
    # Sign of the homogeneous w of image points on the ground side of the horizon.
    ground_side: float
    rms_reprojection_error_px: float

    def to_ground(self, pts: F64) -> F64:
        """(N, 2) pixels to (N, 2) metres; NaN for points at or above the horizon."""
        h = self.image_to_ground
        w = pts @ h[:, :2].T + h[:, 2]
        valid = (w[:, 2] * self.ground_side) > 1e-12
        with np.errstate(divide="ignore", invalid="ignore"):
            out: F64 = np.where(valid[:, None], w[:, :2] / w[:, 2:3], np.nan)
        return out

    def to_image(self, pts: F64) -> F64:
        return _apply(self.ground_to_image, pts)

    def image_motion(self, pts: F64, vel: F64) -> tuple[F64, F64, F64, F64]:
        """Ground points (N, 2) moving at (N, 2) m/s: their image positions and velocities,
        and their depth and its rate. The depth is the distance along the camera's axis times
        a factor common to all points (sign included), so only ratios of depths mean
        anything: a pinhole camera draws an object at a size inversely proportional to it."""
        h = self.ground_to_image
        n = pts @ h[:, :2].T + h[:, 2]  # homogeneous image points; the third is the depth
        dn = vel @ h[:, :2].T
        depth, depth_v = n[:, 2], dn[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            pos: F64 = n[:, :2] / depth[:, None]
            pos_v: F64 = (dn[:, :2] - pos * depth_v[:, None]) / depth[:, None]
        return pos, pos_v, depth, depth_v

    def to_state(self) -> dict[str, Any]:
        return {
            "image_to_ground": self.image_to_ground.tolist(),
            "ground_to_image": self.ground_to_image.tolist(),
            "ground_side": self.ground_side,
            "rms": self.rms_reprojection_error_px,
        }


def _dlt(src: F64, dst: F64) -> F64:
    """Normalised DLT (Hartley & Zisserman, alg. 4.2): H with dst ~ H src."""
    ts, td = _normaliser(src), _normaliser(dst)
    s, d = _apply(ts, src), _apply(td, dst)
    n = len(s)
    a = np.zeros((2 * n, 9))
    x, y, u, v = s[:, 0], s[:, 1], d[:, 0], d[:, 1]
    a[0::2, 0:3] = np.column_stack([-x, -y, -np.ones(n)])
    a[0::2, 6:9] = np.column_stack([u * x, u * y, u])
    a[1::2, 3:6] = np.column_stack([-x, -y, -np.ones(n)])
    a[1::2, 6:9] = np.column_stack([v * x, v * y, v])
    _, sv, vt = np.linalg.svd(a)
    # A unique solution needs a one-dimensional null space: the second smallest singular
    # value must be clearly non-zero (it is zero for degenerate configurations).
    if len(sv) >= 8 and sv[7] < 1e-9 * max(sv[0], 1e-300):
        raise GeometryError("points", "the points do not determine a unique homography")
    hn = vt[-1].reshape(3, 3)
    h: F64 = np.linalg.inv(td) @ hn @ ts
    scale = h[2, 2] if abs(h[2, 2]) > 1e-12 else np.linalg.norm(h)
    out: F64 = h / scale
    return out


def fit_homography(image_points: F64, world_points: F64) -> Homography:
    """Fit the ground-plane homography from >= 4 correspondences.

    Raises ``GeometryError`` naming ``points`` (or ``points[i]``) when the input is unusable:
    too few points, non-finite or repeated points, three points collinear in the image or on
    the ground, or points on both sides of the horizon.
    """
    img = np.asarray(image_points, dtype=np.float64).reshape(-1, 2)
    wld = np.asarray(world_points, dtype=np.float64).reshape(-1, 2)
    if len(img) != len(wld):
        raise GeometryError("points", "image and world point counts differ")
    if len(img) < 4:
        raise GeometryError("points", f"at least 4 points are needed, got {len(img)}")
    for i in range(len(img)):
        if not (np.all(np.isfinite(img[i])) and np.all(np.isfinite(wld[i]))):
            raise GeometryError(f"points[{i}]", "coordinates must be finite numbers")
    for name, pts in (("image_point", img), ("world_point", wld)):
        for i, j in itertools.combinations(range(len(pts)), 2):
            if np.array_equal(pts[i], pts[j]):
                raise GeometryError(f"points[{j}].{name}", f"repeats points[{i}].{name}")
        triple = _collinear_triple(pts)
        if triple is not None:
            i, j, k = triple
            raise GeometryError(
                "points",
                f"{name}s of points {i}, {j} and {k} are collinear; no 3 points may lie on a line",
            )
    g2i = _dlt(wld, img)
    i2g = _dlt(img, wld)
    w = img @ i2g[:, :2].T + i2g[:, 2]
    signs = np.sign(w[:, 2])
    if np.any(signs == 0) or np.any(signs != signs[0]):
        raise GeometryError("points", "points lie on both sides of the horizon")
    reproj = _apply(g2i, wld)
    rms = float(np.sqrt(np.mean(np.sum((reproj - img) ** 2, axis=1))))
    if not (np.all(np.isfinite(g2i)) and np.all(np.isfinite(i2g)) and math.isfinite(rms)):
        raise GeometryError("points", "the points do not determine a homography")
    return Homography(i2g, g2i, float(signs[0]), rms)
