"""The static world: lanes, signals, road surface layout and scenery, all in metres.

The main road runs along x with right-hand traffic: lanes heading +x lie at y < 0, lanes
heading -x at y > 0, lane 0 of each direction next to the centre line. The optional cross
street runs along y at ``intersection.x_m``; a zebra crossing spans the main road just before
it. Everything here is fixed for the life of a scene; only signal states change with time.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from its_camera_ai.sim._config import SceneConfig
from its_camera_ai.sim._scenery import Scenery, place_scenery, signal_posts

__all__ = ["Lane", "LaneKind", "Rect", "Scenery", "SignalPlan", "World", "build_world"]

LaneKind = Literal["vehicle", "bike", "walk", "crossing"]
SignalState = Literal["green", "amber", "red"]
_KERB = 0.25  # kerb stone width between carriageway and sidewalk


@dataclass(slots=True, eq=False)
class Lane:
    """A straight directed path; ``s`` runs from 0 at ``origin`` to ``length`` along ``d``."""

    id: int
    name: str
    kind: LaneKind
    ox: float
    oy: float
    dx: float
    dy: float
    length: float
    width: float
    speed_limit: float
    group: str  # which signal group governs the stop line
    # Where the front of an agent waits when its signal is not green.
    stop_s: float | None = None
    left: Lane | None = None  # same-direction neighbour towards the centre line
    right: Lane | None = None
    spawn: bool = True
    # Flow in agents per hour at the lane entry.
    flow_h: float = 0.0

    def point(self, s: float, lat: float = 0.0) -> tuple[float, float]:
        # Left normal of (dx, dy) is (-dy, dx).
        return (self.ox + s * self.dx - lat * self.dy, self.oy + s * self.dy + lat * self.dx)

    def coords(self, x: float, y: float) -> tuple[float, float]:
        """(s, lateral-left) of a world point relative to this lane."""
        rx, ry = x - self.ox, y - self.oy
        return rx * self.dx + ry * self.dy, -rx * self.dy + ry * self.dx

    @property
    def heading(self) -> float:
        return math.atan2(self.dy, self.dx)


@dataclass(frozen=True, slots=True)
class SignalPlan:
    """Fixed-time two-phase plan: main street, then cross street (pedestrians with it)."""

    main_green: float
    cross_green: float
    amber: float
    all_red: float
    offset: float

    @property
    def cycle(self) -> float:
        return self.main_green + self.cross_green + 2.0 * (self.amber + self.all_red)

    def state(self, group: str, t: float) -> SignalState:
        if group == "free":
            return "green"
        c = (t + self.offset) % self.cycle
        a_end = self.main_green + self.amber
        cross_start = a_end + self.all_red
        if group in ("main", "bike"):
            return "green" if c < self.main_green else "amber" if c < a_end else "red"
        if group == "cross":
            if cross_start <= c < cross_start + self.cross_green:
                return "green"
            return "amber" if 0 <= c - cross_start - self.cross_green < self.amber else "red"
        if group == "walk":
            return "green" if cross_start <= c < cross_start + self.cross_green else "red"
        raise ValueError(f"unknown signal group {group!r}")

    def green_left(self, group: str, t: float) -> float:
        """Seconds of green left for a group (0 when not green); pedestrians check it."""
        if self.state(group, t) != "green":
            return 0.0
        c = (t + self.offset) % self.cycle
        if group in ("main", "bike"):
            return self.main_green - c
        cross_start = self.main_green + self.amber + self.all_red
        return cross_start + self.cross_green - c


@dataclass(frozen=True, slots=True)
class Rect:
    """Axis-aligned ground rectangle with a surface material or marking colour."""

    x0: float
    x1: float
    y0: float
    y1: float
    kind: str  # "road", "sidewalk", "kerb", "white", "yellow", "path"
    # Dash pattern along the long axis: (dash, gap) metres; None is solid.
    dash: tuple[float, float] | None = None


@dataclass(slots=True)
class World:
    lanes: list[Lane]
    surfaces: list[Rect]
    markings: list[Rect]
    scenery: Scenery
    signals: SignalPlan | None
    road_half: float  # carriageway half width (kerb to centre line)
    walk_outer: float  # outer edge of the sidewalks (|y|)
    x0: float
    x1: float
    cross_x: float | None
    cross_half: float  # cross street carriageway half width (0 without intersection)
    crosswalk: tuple[float, float] | None  # x range of the zebra crossing

    def lane(self, name: str) -> Lane:
        for ln in self.lanes:
            if ln.name == name:
                return ln
        raise KeyError(name)

    def on_carriageway(self, x: float, y: float) -> bool:
        if self.x0 <= x <= self.x1 and abs(y) < self.road_half:
            return True
        return self.cross_x is not None and abs(x - self.cross_x) < self.cross_half


def build_world(cfg: SceneConfig, rng: np.random.Generator) -> World:
    """Lay out lanes, surfaces, markings and scenery; ``rng`` only places scenery."""
    road, inter = cfg.road, cfg.intersection
    x0, x1 = road.start_x_m, road.start_x_m + road.length_m
    half = cfg.road_half_width
    walk_in, walk_out = half + _KERB, half + _KERB + road.sidewalk_width_m
    cross_half = inter.lanes_per_direction * 3.5 if inter else 0.0
    cw = (inter.x_m - cross_half - 5.0, inter.x_m - cross_half - 1.0) if inter else None
    lanes: list[Lane] = []
    for sgn in (1, -1):
        _main_road_lanes(lanes, cfg, sgn, walk_in, cross_half, cw)
    if inter:
        _cross_street_lanes(lanes, cfg, walk_out)
        if inter.crosswalk and cw is not None:
            _zebra_lanes(lanes, cfg, walk_out, cw)
    surfaces, markings = _layout(cfg, half, walk_in, walk_out, cross_half, cw)
    plan = None
    if inter:
        plan = SignalPlan(
            inter.main_green_s, inter.cross_green_s, inter.amber_s, inter.all_red_s, inter.offset_s
        )
    scenery = place_scenery(cfg, rng, x0, x1, walk_out, cross_half) if cfg.scenery else Scenery()
    if inter:
        signal_posts(scenery, inter.x_m, cross_half, walk_in, cw)
    return World(
        lanes,
        surfaces,
        markings,
        scenery,
        plan,
        half,
        walk_out,
        x0,
        x1,
        inter.x_m if inter else None,
        cross_half,
        cw,
    )


def _add_lane(
    lanes: list[Lane],
    name: str,
    kind: LaneKind,
    o: tuple[float, float],
    d: tuple[float, float],
    length: float,
    width: float,
    limit: float,
    group: str,
    flow: float,
) -> Lane:
    """Append a lane whose id is its index in ``lanes``."""
    ln = Lane(
        len(lanes), name, kind, o[0], o[1], d[0], d[1], length, width, limit, group, flow_h=flow
    )
    lanes.append(ln)
    return ln


def _main_road_lanes(
    lanes: list[Lane],
    cfg: SceneConfig,
    sgn: int,
    walk_in: float,
    cross_half: float,
    cw: tuple[float, float] | None,
) -> None:
    """One direction of the main road (``sgn`` +1 heading +x): vehicle lanes, the bike lane,
    walkers on both sidewalks, and where they wait for the signal."""
    road, inter = cfg.road, cfg.intersection
    ox = road.start_x_m if sgn > 0 else road.start_x_m + road.length_m
    row = _carriageway_lanes(lanes, cfg, sgn, ox)
    for side in (1, -1):  # both sidewalks carry walkers both ways
        y = side * (walk_in + road.sidewalk_width_m * (0.5 + 0.22 * sgn * side))
        _add_lane(
            lanes,
            f"walk{_tag(sgn)}{'L' if side > 0 else 'R'}",
            "walk",
            (ox, y),
            (sgn, 0.0),
            road.length_m,
            0.8,
            2.0,
            "free",
            cfg.traffic.pedestrian_flow_h / 2,
        )
    if inter:
        for ln in row:
            ln.stop_s = (_stop_x(inter.x_m, cross_half, cw, sgn) - ox) * sgn
        # Walkers along the main road cross the cross street with the main phase.
        for ln in lanes:
            if ln.kind == "walk" and ln.dx == sgn and ln.stop_s is None:
                ln.group = "main"
                ln.stop_s = (inter.x_m - sgn * (cross_half + _KERB + 0.6) - ox) * sgn


def _carriageway_lanes(lanes: list[Lane], cfg: SceneConfig, sgn: int, ox: float) -> list[Lane]:
    """The vehicle lanes of one direction, centre line outwards, and its bike lane."""
    road, tr = cfg.road, cfg.traffic
    n, w = road.lanes_per_direction, road.lane_width_m
    signalled = cfg.intersection is not None
    row: list[Lane] = []
    for i in range(n):
        y = -sgn * (i + 0.5) * w
        row.append(
            _add_lane(
                lanes,
                f"main{_tag(sgn)}{i}",
                "vehicle",
                (ox, y),
                (sgn, 0.0),
                road.length_m,
                w,
                road.speed_limit_kmh / 3.6,
                "main" if signalled else "free",
                tr.flow_veh_h_per_lane,
            )
        )
    for a, b in itertools.pairwise(row):
        a.right, b.left = b, a
    if road.bike_lanes:
        y = -sgn * (n * w + road.bike_lane_width_m / 2)
        row.append(
            _add_lane(
                lanes,
                f"bike{_tag(sgn)}",
                "bike",
                (ox, y),
                (sgn, 0.0),
                road.length_m,
                road.bike_lane_width_m,
                7.0,
                "bike" if signalled else "free",
                tr.bicycle_flow_h,
            )
        )
    return row


def _cross_street_lanes(lanes: list[Lane], cfg: SceneConfig, walk_out: float) -> None:
    """The cross street's vehicle lanes, both directions, stopping before the main road."""
    inter = cfg.intersection
    assert inter is not None
    cy0, clen = -(walk_out + 80.0), 2 * (walk_out + 80.0)
    for sgn in (1, -1):
        oy = cy0 if sgn > 0 else -cy0
        for i in range(inter.lanes_per_direction):
            x = inter.x_m + sgn * (i + 0.5) * 3.5
            ln = _add_lane(
                lanes,
                f"cross{_tag(sgn)}{i}",
                "vehicle",
                (x, oy),
                (0.0, sgn),
                clen,
                3.5,
                cfg.road.speed_limit_kmh / 3.6,
                "cross",
                cfg.traffic.cross_flow_veh_h_per_lane,
            )
            ln.stop_s = clen / 2 - cfg.road_half_width - 2.0


def _zebra_lanes(
    lanes: list[Lane], cfg: SceneConfig, walk_out: float, cw: tuple[float, float]
) -> None:
    """Walkers over the zebra crossing, one lane each way."""
    half = cfg.road_half_width
    for sgn in (1, -1):
        oy = -sgn * (walk_out + 25.0)
        x = (cw[0] + cw[1]) / 2 + 0.7 * sgn
        ln = _add_lane(
            lanes,
            f"zebra{_tag(sgn)}",
            "crossing",
            (x, oy),
            (0.0, float(sgn)),
            2 * (walk_out + 25.0),
            1.2,
            1.4,
            "walk",
            cfg.traffic.pedestrian_flow_h / 3,
        )
        # Wait at the kerb; the crossing itself is the conflict area.
        ln.stop_s = walk_out + 25.0 - half - 0.6


def _tag(sgn: int) -> str:
    return "+" if sgn > 0 else "-"


def _stop_x(xi: float, cross_half: float, cw: tuple[float, float] | None, sgn: int) -> float:
    """Stop-line x for the +x (before the zebra) and -x (before the cross street) approaches."""
    assert cw is not None
    return cw[0] - 1.0 if sgn > 0 else xi + cross_half + 2.0


def _layout(
    cfg: SceneConfig,
    half: float,
    walk_in: float,
    walk_out: float,
    cross_half: float,
    cw: tuple[float, float] | None,
) -> tuple[list[Rect], list[Rect]]:
    road = cfg.road
    n, w = road.lanes_per_direction, road.lane_width_m
    far = 2000.0  # surfaces run past the simulated stretch to the horizon
    s: list[Rect] = [
        Rect(-far, far, walk_in, walk_out, "sidewalk"),
        Rect(-far, far, -walk_out, -walk_in, "sidewalk"),
        Rect(-far, far, half, walk_in, "kerb"),
        Rect(-far, far, -walk_in, -half, "kerb"),
        Rect(-far, far, -half, half, "road"),
    ]
    m: list[Rect] = []
    inter = cfg.intersection
    gaps: list[tuple[float, float]] = []
    if inter:
        xi = inter.x_m
        s += [
            Rect(
                xi - cross_half - _KERB - 3.0, xi + cross_half + _KERB + 3.0, -far, far, "sidewalk"
            ),
            Rect(xi - cross_half - _KERB, xi + cross_half + _KERB, -far, far, "kerb"),
            Rect(xi - cross_half, xi + cross_half, -far, far, "road"),
        ]
        assert cw is not None
        s += [
            Rect(cw[0] + 1.0, cw[1] - 1.0, -(walk_out + 25.0), -walk_out, "path"),
            Rect(cw[0] + 1.0, cw[1] - 1.0, walk_out, walk_out + 25.0, "path"),
        ]
        # Cross-street stop lines (right-hand half of each approach) and centre line.
        m.append(Rect(xi, xi + cross_half, -half - 2.3, -half - 2.0, "white"))
        m.append(Rect(xi - cross_half, xi, half + 2.0, half + 2.3, "white"))
        m.append(Rect(xi - 0.08, xi + 0.08, half + 2.5, far, "white", (3.0, 6.0)))
        m.append(Rect(xi - 0.08, xi + 0.08, -far, -half - 2.5, "white", (3.0, 6.0)))
        if inter.crosswalk:
            # Zebra stripes run with the traffic: 0.5 m wide, 0.5 m apart, across the road.
            k = -half + 0.3
            while k + 0.5 <= half - 0.3:
                m.append(Rect(cw[0], cw[1], k, k + 0.5, "white"))
                k += 1.0
        # Stop lines across the main road lanes (right half for +x, left for -x).
        xp, xm = _stop_x(xi, cross_half, cw, 1), _stop_x(xi, cross_half, cw, -1)
        m.append(Rect(xp - 0.3, xp, -n * w, 0.0, "white"))
        m.append(Rect(xm, xm + 0.3, 0.0, n * w, "white"))
        gaps.append((cw[0] - 1.3, xm + 0.3))

    def runs(a: float, b: float) -> list[tuple[float, float]]:
        out, cur = [], a
        for g0, g1 in sorted(gaps):
            if g1 <= cur or g0 >= b:
                continue
            out.append((cur, g0))
            cur = g1
        out.append((cur, b))
        return [r for r in out if r[1] - r[0] > 0.5]

    for a, b in runs(-far, far):
        # Double centre line (two-way road), edge lines, dashed lane lines, bike lane line.
        m += [Rect(a, b, -0.22, -0.08, "white"), Rect(a, b, 0.08, 0.22, "white")]
        for sgn in (1, -1):
            for i in range(1, n):
                yc = sgn * i * w
                m.append(Rect(a, b, yc - 0.075, yc + 0.075, "white", (3.0, 9.0)))
            ye = sgn * n * w
            m.append(Rect(a, b, ye - 0.1, ye + 0.1, "white"))
            if road.bike_lanes:
                yb = sgn * (half - 0.2)
                m.append(Rect(a, b, yb - 0.06, yb + 0.06, "white", (1.0, 1.0)))
    return s, m
