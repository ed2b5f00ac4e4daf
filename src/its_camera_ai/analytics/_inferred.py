"""Line crossings that no single view shows, inferred from a track's motion.

A counting line near the frame's edge, a long vehicle whose rear is the last of it to come
into the picture, a vehicle the detector finds only once it is past the line (small, far,
against the light): each gives a track whose whole observed life lies on one side of the
line, though the vehicle crossed it. Its motion says so:

- first seen just past: a track whose first full view (bottom in sight, clear of the
  frame's border), within twice ``line_infer_s`` of its birth, is on one side of a line,
  and which then moves away from it, came across it if that move, extended backwards,
  meets the drawn segment at most ``line_infer_s`` before the first full view;
- last seen just before: a track whose last view was cut by the frame's border, heading for
  a line, crossed it out of sight if its reference point's velocity at its last full view
  carries it over the drawn segment within ``line_infer_s`` (a segment drawn beyond the
  picture says crossings there count). Only tracks that left the picture: one that ends
  anywhere else was lost (hidden, missed), and its vehicle may yet stop short of the line.

Both are timed on the road plane where the scene has one (a calibrated camera's, or the
lane plane of an uncalibrated one: ``CameraScene.road_plane``), on which a vehicle moves at
a constant velocity. In the image it speeds up as it nears the camera, so image motion
extrapolated in a straight line timed a crossing beside the camera too early (first seen
past) or too late (leaving the picture), and long vehicles, which take longest to come
clear, fell outside ``line_infer_s``. The geometry stays in the image (a homography maps the
move's straight line to a straight line, so where it meets the drawn segment is the same
either way); only the time along it is measured on the plane.

An inferred crossing may be one the service counted already: a vehicle whose track was lost
at the line and taken up past it by a new track. A crossing of the same line and direction
within ``line_infer_s`` and half the vehicle's box width of an inferred one is the same
vehicle, and only the first of the two is counted. Two crossings counted the usual way are
never merged: each was seen on both sides of the line.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.analytics._tracks import TrackTable, true_cells
from its_camera_ai.scene import Homography, segment_crossing, signed_distances

__all__ = ["LineInference", "RecentCrossings"]

F64 = NDArray[np.float64]
IntArr = NDArray[np.intp]
Bool = NDArray[np.bool_]

# Views further apart than this start the velocity again (the track was hidden between).
_MAX_VIEW_GAP_S = 0.5
# ...on the road plane, where a vehicle hidden for a while kept its velocity (in the image
# it changed, with the distance): an oncoming truck in traffic may show its bottom twice.
_MAX_PLANE_GAP_S = 1.5
# Smoothing of the velocity between views: a time constant, so it does not depend on fps.
_SMOOTHING_S = 0.25
# A crossing is remembered this long beyond the window it can be merged in.
_KEEP_EXTRA_S = 2.0
# A track first seen past a line may have its first full view this many ``line_infer_s``
# after its birth: a long vehicle entering beside the camera is cut by the frame's border,
# or its bottom hidden by the one behind it, for longer than it takes to cross.
_FIRST_VIEW_WITHIN = 2.0
# The image direction of a road-plane velocity: the image of this short a move along it (a
# second's move may pass under the camera, where the image wraps round).
_DIRECTION_STEP_S = 0.05


class LineInference:
    """The per-track memory both inferences need, and the inferences themselves.

    Columns: when the track was born; the reference point and time of its first full view
    (``b_xy``, ``b_t``) and which lines that view was clear of while the track's motion
    has not yet decided about them (``l_pend``); its reference point at the last full view
    (``f_xy``, ``f_t``) and that point's velocity over the recent full views on the plane
    crossings are timed on (``f_pv``: the road plane's units, or pixels without one, per
    second; NaN until two views); its box width; whether its last view was cut by the
    frame's border."""

    def __init__(
        self, table: TrackTable, segments: F64, infer_s: float, plane: Homography | None
    ) -> None:
        self.table, self.segments, self.infer_s, self.plane = table, segments, infer_s, plane
        self.max_gap_s = _MAX_VIEW_GAP_S if plane is None else _MAX_PLANE_GAP_S
        table.add("born", (), np.float64, np.nan)
        table.add("b_xy", (2,), np.float64, np.nan)
        table.add("b_t", (), np.float64, np.nan)
        table.add("l_pend", (len(segments),), np.bool_, False)
        table.add("f_xy", (2,), np.float64, np.nan)
        table.add("f_t", (), np.float64, np.nan)
        table.add("f_pv", (2,), np.float64, np.nan)
        table.add("width", (), np.float64, np.nan)
        table.add("cut", (), np.bool_, False)

    def start(self, slots: IntArr, born: F64) -> None:
        """New tracks, born (first detected) at ``born``."""
        tab = self.table
        tab["born"][slots] = born
        tab["b_t"][slots] = np.nan
        tab["l_pend"][slots] = False

    def observe(self, slots: IntArr, ref: F64, width: F64, t: float, full: Bool, cut: Bool) -> None:
        """Observed tracks' views; ``full`` ones (bottom in sight) move the velocity."""
        tab = self.table
        tab["cut"][slots] = cut
        tab["width"][slots] = width
        s, p = slots[full], ref[full]
        dt = t - tab["f_t"][s]
        fresh = (dt > 0) & (dt <= self.max_gap_s)  # NaN (no earlier view) -> False
        before, now = self._on_plane(tab["f_xy"][s]), self._on_plane(p)
        step = np.full_like(now, np.nan)
        step[fresh] = (now[fresh] - before[fresh]) / dt[fresh, None]
        old = tab["f_pv"][s]
        weight = (dt / (dt + _SMOOTHING_S))[:, None]
        smoothed = np.where(np.isnan(old), step, old + weight * (step - old))
        tab["f_pv"][s] = np.where(fresh[:, None], smoothed, np.nan)
        tab["f_xy"][s] = p
        tab["f_t"][s] = t

    def first_seen_past(
        self, slots: IntArr, ref: F64, t: float, full: Bool, side: NDArray[np.int8], margin: F64
    ) -> list[tuple[int, int, int, float, tuple[float, float]]]:
        """Observed tracks first seen clear of a line: those whose motion now shows they
        came across it, as (row, line, new side, crossing instant, crossing point).

        Judged on full views only (a box cut by the frame's border grows or shrinks as the
        vehicle comes into the picture, which is not its motion): from the first, if it
        came within twice ``line_infer_s`` of the track's birth, on the side ``side`` says
        it is on. A track moving towards a line, or not moving clearly, is decided for good."""
        tab = self.table
        b_t = tab["b_t"][slots]
        first = full & np.isnan(b_t)
        if first.any():
            s = slots[first]
            tab["b_xy"][s], tab["b_t"][s] = ref[first], t
            early = (t - tab["born"][s] <= _FIRST_VIEW_WITHIN * self.infer_s) & (self.infer_s > 0)
            tab["l_pend"][s] = (side[first] != 0) & early[:, None]
        pend = tab["l_pend"][slots] & (full & ~first)[:, None]
        if not pend.any():
            return []
        birth, seen_first = tab["b_xy"][slots], tab["b_t"][slots]
        d_birth = signed_distances(birth, self.segments)
        away = np.sign(d_birth) * (signed_distances(ref, self.segments) - d_birth)
        moved = pend & (np.abs(away) >= margin)
        late = (t - seen_first > 2 * self.infer_s)[:, None]
        tab["l_pend"][slots] &= ~(moved | (pend & late))
        out = []
        for i, li in true_cells(moved & (away > 0)):
            p, q = (float(birth[i, 0]), float(birth[i, 1])), (float(ref[i, 0]), float(ref[i, 1]))
            hit = segment_crossing(p, q, self._segment(li))
            if hit is None or not 0.0 <= hit[1] <= 1.0:
                continue
            u, b = hit[0], float(seen_first[i])
            point = (p[0] + u * (q[0] - p[0]), p[1] + u * (q[1] - p[1]))
            t_cross = b + self._plane_fraction(p, q, point, u) * (t - b)
            if b - t_cross <= self.infer_s:
                out.append((i, li, int(np.sign(d_birth[i, li])), t_cross, point))
        return out

    def left_the_picture(
        self, slots: IntArr
    ) -> list[tuple[int, int, int, float, tuple[float, float]]]:
        """Ending tracks that left the picture heading for a line they crossed unseen, as
        (row, line, new side, crossing instant, crossing point). The side they came from is
        that of their last full view: views cut by the border, after it, may have put the
        (cut) reference point across the line already, off the vehicle's path."""
        tab = self.table
        if self.infer_s <= 0:
            return []
        at, xy = tab["f_t"][slots], tab["f_xy"][slots]
        rows, ahead, step_s = self._heading(slots)
        from_side = np.sign(signed_distances(xy[rows], self.segments)).astype(np.int8)
        out = []
        for k, li in true_cells(from_side != 0):
            i = int(rows[k])
            p = (float(xy[i, 0]), float(xy[i, 1]))
            q = (float(ahead[k, 0]), float(ahead[k, 1]))  # ``step_s`` on
            hit = segment_crossing(p, q, self._segment(li))
            if hit is None or not 0.0 <= hit[1] <= 1.0 or hit[0] < 0.0:
                continue
            point = (p[0] + hit[0] * (q[0] - p[0]), p[1] + hit[0] * (q[1] - p[1]))
            after = self._plane_fraction(p, q, point, hit[0]) * step_s
            if after <= self.infer_s:
                out.append((i, li, -int(from_side[k, li]), float(at[i]) + after, point))
        return out

    def _heading(self, slots: IntArr) -> tuple[IntArr, F64, float]:
        """The rows of ending tracks cut by the border whose velocity at the last full view
        is known, where in the image that velocity carries each a step on, and the step's
        length in seconds: on the road plane where there is one, else in the image."""
        tab = self.table
        xy, v = tab["f_xy"][slots], tab["f_pv"][slots]
        rows = (tab["cut"][slots] & np.isfinite(v).all(axis=1)).nonzero()[0]
        if self.plane is None:
            return rows, xy[rows] + v[rows], 1.0
        ground = self.plane.to_ground(xy[rows])
        ahead: F64 = self.plane.to_image(ground + _DIRECTION_STEP_S * v[rows])
        return rows, ahead, _DIRECTION_STEP_S

    def _on_plane(self, pts: F64) -> F64:
        return pts if self.plane is None else self.plane.to_ground(pts)

    def _plane_fraction(
        self, p: tuple[float, float], q: tuple[float, float], x: tuple[float, float], u: float
    ) -> float:
        """How far along the move p->q the point x (on its line, ``u`` of the way in the
        image) lies on the road plane, where motion is uniform; ``u`` without a plane, or
        where a point maps beyond the horizon."""
        if self.plane is None:
            return u
        gp, gq, gx = self.plane.to_ground(np.array([p, q, x], dtype=np.float64))
        move = gq - gp
        length2 = float(move @ move)
        if not np.isfinite(length2) or length2 == 0.0 or not np.isfinite(gx).all():
            return u
        return float((gx - gp) @ move) / length2

    def _segment(self, li: int) -> tuple[float, float, float, float]:
        ax, ay, bx, by = (float(x) for x in self.segments[li])
        return ax, ay, bx, by


class RecentCrossings:
    """Crossings counted over the last few seconds: line, direction, instant, point, and
    whether each was inferred. ``same_vehicle`` says whether a new one repeats one of them."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.rows: list[tuple[int, int, float, float, float, bool]] = []

    def same_vehicle(
        self, line: int, direction: int, t: float, point: tuple[float, float], width: float,
        inferred: bool,
    ) -> bool:  # fmt: skip
        near = 0.5 * width
        return any(
            li == line and d == direction and (inferred or was_inferred)
            and abs(tc - t) <= self.window_s and math.dist(point, (x, y)) <= near
            for li, d, tc, x, y, was_inferred in self.rows
        )  # fmt: skip

    def add(
        self, line: int, direction: int, t: float, point: tuple[float, float], inferred: bool
    ) -> None:
        horizon = t - self.window_s - _KEEP_EXTRA_S
        self.rows = [r for r in self.rows if r[2] >= horizon]
        self.rows.append((line, direction, t, point[0], point[1], inferred))

    def state(self) -> list[list[Any]]:
        return [list(r) for r in self.rows]

    def restore(self, rows: list[list[Any]]) -> None:
        self.rows = [
            (int(li), int(d), float(t), float(x), float(y), bool(inf))
            for li, d, t, x, y, inf in rows
        ]
