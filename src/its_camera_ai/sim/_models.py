"""Road-user classes: realistic sizes, speeds, car-following parameters and 3D shapes.

A shape is a list of planar convex polygons in the object's frame (x forward, y left, z up,
origin at the centre of the footprint on the ground). Bodies are hexahedra (a box whose top
may be shorter and narrower than its base, which gives windscreens their slant and cabins
their tumblehome); windows, wheels and lights are polygons lying on a body face, drawn just
after it. Each polygon remembers its part so the renderer can order parts far-to-near
(painter's algorithm within an object), and whether it is glass, which mirrors the sky.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.sim._config import CLASSES

__all__ = ["CLASS_ID", "SPECS", "ClassSpec", "ObjectModel", "make_model"]

CLASS_ID = {name: i for i, name in enumerate(CLASSES)}
MAXV = 8  # vertices per polygon (octagon wheels); shorter polygons repeat their last vertex
Color = tuple[float, float, float]
LIGHT_HEAD, LIGHT_TAIL = 1, 2


@dataclass(frozen=True, slots=True)
class ClassSpec:
    """Size ranges (m), desired speed (fraction of the limit, or absolute for slow users)."""

    name: str
    length: tuple[float, float]
    width: tuple[float, float]
    height: tuple[float, float]
    speed_factor: float  # x speed limit (motor) ...
    speed_abs: float | None  # ... or an absolute mean (m/s) for bicycles and walkers
    a_max: float
    b_comf: float
    headway: float
    s0: float


SPECS: dict[str, ClassSpec] = {
    "car": ClassSpec("car", (3.8, 5.0), (1.7, 1.95), (1.38, 1.7), 1.0, None, 1.6, 2.0, 1.2, 2.0),
    "truck": ClassSpec(
        "truck", (7.0, 12.0), (2.4, 2.55), (3.2, 3.9), 0.85, None, 0.8, 1.6, 1.6, 2.5
    ),
    "bus": ClassSpec("bus", (10.5, 12.8), (2.5, 2.55), (3.0, 3.3), 0.82, None, 1.0, 1.6, 1.5, 2.5),
    "motorcycle": ClassSpec(
        "motorcycle", (1.9, 2.3), (0.75, 0.9), (1.4, 1.6), 1.05, None, 2.5, 2.5, 1.0, 1.5
    ),
    "bicycle": ClassSpec(
        "bicycle", (1.65, 1.85), (0.55, 0.65), (1.6, 1.85), 0.0, 5.0, 1.0, 1.5, 1.0, 1.0
    ),
    "person": ClassSpec(
        "person", (0.28, 0.34), (0.45, 0.55), (1.55, 1.95), 0.0, 1.35, 1.0, 1.5, 0.6, 0.4
    ),
}

_PAINT: tuple[tuple[Color, float], ...] = (
    ((0.9, 0.9, 0.88), 0.2),
    ((0.07, 0.07, 0.08), 0.17),
    ((0.68, 0.69, 0.7), 0.15),
    ((0.4, 0.41, 0.43), 0.14),
    ((0.1, 0.2, 0.48), 0.09),
    ((0.6, 0.07, 0.06), 0.09),
    ((0.12, 0.3, 0.2), 0.04),
    ((0.72, 0.64, 0.5), 0.04),
    ((0.92, 0.75, 0.1), 0.04),
    ((0.85, 0.4, 0.08), 0.04),
)
_BUS = ((0.92, 0.75, 0.1), (0.75, 0.1, 0.08), (0.9, 0.9, 0.9), (0.15, 0.35, 0.6), (0.2, 0.5, 0.3))
_CARGO = ((0.92, 0.92, 0.9), (0.8, 0.8, 0.8), (0.2, 0.3, 0.55), (0.7, 0.15, 0.1), (0.3, 0.5, 0.3))
_SKIN = ((0.94, 0.78, 0.65), (0.8, 0.6, 0.45), (0.55, 0.38, 0.26), (0.35, 0.24, 0.17))
GLASS: Color = (0.14, 0.18, 0.24)
TYRE: Color = (0.05, 0.05, 0.05)
DARK: Color = (0.1, 0.1, 0.11)
HEAD: Color = (0.85, 0.85, 0.78)
TAIL: Color = (0.55, 0.06, 0.05)


@dataclass(frozen=True, slots=True)
class ObjectModel:
    """Polygons of one road user in its own frame."""

    verts: NDArray[np.float32]  # (P, MAXV, 3)
    nverts: NDArray[np.int8]  # (P,)
    normal: NDArray[np.float32]  # (P, 3)
    color: NDArray[np.float32]  # (P, 3) base colour 0..1
    part: NDArray[np.int16]  # (P,)
    part_center: NDArray[np.float32]  # (Q, 3)
    detail: NDArray[np.bool_]  # (P,) dropped when the object is small in the image
    light: NDArray[np.int8]  # (P,) 0, LIGHT_HEAD, LIGHT_TAIL
    swing: NDArray[np.float32]  # (P,) walking legs: x offset factor
    glass: NDArray[np.bool_]  # (P,) reflects its surroundings (the renderer's Fresnel term)
    length: float
    width: float
    height: float


class _Builder:
    def __init__(self) -> None:
        self.polys: list[list[tuple[float, float, float]]] = []
        self.normals: list[tuple[float, float, float]] = []
        self.colors: list[Color] = []
        self.parts: list[int] = []
        self.details: list[bool] = []
        self.lights: list[int] = []
        self.swings: list[float] = []
        self.centers: list[tuple[float, float, float]] = []

    def hexa(
        self,
        x0: float,
        x1: float,
        y0: float,
        y1: float,
        z0: float,
        z1: float,
        top: Color,
        side: Color,
        front: Color | None = None,
        back: Color | None = None,
        tx: tuple[float, float] | None = None,
        swing: float = 0.0,
        skip: tuple[str, ...] = (),
        ty: tuple[float, float] | None = None,
    ) -> int:
        """A box from (x0,y0,z0) to (x1,y1,z1); ``tx`` and ``ty`` narrow the top's extent.

        ``skip`` leaves faces out ("top", "front", "back", "left", "right") for callers that
        tile them themselves: a face under a window or a cabin would only be overdrawn.
        """
        a, b = tx if tx is not None else (x0, x1)
        ya, yb = ty if ty is not None else (y0, y1)
        c = [
            (x0, y0, z0),
            (x1, y0, z0),
            (x1, y1, z0),
            (x0, y1, z0),
            (a, ya, z1),
            (b, ya, z1),
            (b, yb, z1),
            (a, yb, z1),
        ]
        part = len(self.centers)
        self.centers.append(((x0 + x1 + a + b) / 4, (y0 + y1) / 2, (z0 + z1) / 2))
        faces = (
            ("top", (4, 5, 6, 7), top),
            ("front", (1, 2, 6, 5), front or side),
            ("back", (0, 4, 7, 3), back or side),
            ("left", (3, 7, 6, 2), side),
            ("right", (0, 1, 5, 4), side),
        )
        for name, idx, col in faces:
            if name in skip:
                continue
            pts = [c[i] for i in idx]
            self._add(pts, _normal(pts, self.centers[part]), col, part, False, 0, swing)
        return part

    def face(
        self,
        part: int,
        normal: tuple[float, float, float],
        pts: list[tuple[float, float, float]],
        color: Color,
    ) -> None:
        """A body face of a part given explicitly (kept at every level of detail)."""
        self._add(pts, normal, color, part, False, 0, 0.0)

    def on_face(
        self,
        part: int,
        normal: tuple[float, float, float],
        pts: list[tuple[float, float, float]],
        color: Color,
        light: int = 0,
    ) -> None:
        self._add(pts, normal, color, part, True, light, 0.0)

    def wheel(self, part: int, x: float, y: float, r: float, side: int) -> None:
        pts = [
            (
                x + r * math.cos(k * math.pi / 4 + math.pi / 8),
                y,
                r + r * math.sin(k * math.pi / 4 + math.pi / 8),
            )
            for k in range(8)
        ]
        self._add(pts, (0.0, float(side), 0.0), TYRE, part, True, 0, 0.0)

    def _add(
        self,
        pts: list[tuple[float, float, float]],
        n: tuple[float, float, float],
        col: Color,
        part: int,
        detail: bool,
        light: int,
        swing: float,
    ) -> None:
        self.polys.append(pts)
        self.normals.append(n)
        self.colors.append(col)
        self.parts.append(part)
        self.details.append(detail)
        self.lights.append(light)
        self.swings.append(swing)

    def build(self) -> ObjectModel:
        p = len(self.polys)
        verts = np.zeros((p, MAXV, 3), np.float32)
        for i, pts in enumerate(self.polys):
            verts[i, : len(pts)] = pts
            verts[i, len(pts) :] = pts[-1]
        # The true extent of what is drawn, lights and mirrors included.
        lo, hi = verts.reshape(-1, 3).min(0), verts.reshape(-1, 3).max(0)
        length, width = float(hi[0] - lo[0]), float(hi[1] - lo[1])
        return ObjectModel(
            verts,
            np.array([len(q) for q in self.polys], np.int8),
            np.array(self.normals, np.float32),
            np.array(self.colors, np.float32),
            np.array(self.parts, np.int16),
            np.array(self.centers, np.float32),
            np.array(self.details, bool),
            np.array(self.lights, np.int8),
            np.array(self.swings, np.float32),
            np.array([c == GLASS for c in self.colors], bool),  # whatever is painted GLASS
            length,
            width,
            float(hi[2]),
        )


def _normal(
    pts: list[tuple[float, float, float]], centre: tuple[float, float, float]
) -> tuple[float, float, float]:
    p = np.array(pts, np.float64)
    n = np.cross(p[1] - p[0], p[2] - p[0])
    if np.linalg.norm(n) < 1e-9:
        n = np.cross(p[2] - p[0], p[3] - p[0])
    n /= np.linalg.norm(n)
    if np.dot(n, p.mean(0) - np.array(centre)) < 0:
        n = -n
    return (float(n[0]), float(n[1]), float(n[2]))


def _pick(rng: np.random.Generator, weighted: tuple[tuple[Color, float], ...]) -> Color:
    w = np.array([x[1] for x in weighted])
    return weighted[int(rng.choice(len(weighted), p=w / w.sum()))][0]


def _vary(rng: np.random.Generator, c: Color, amount: float = 0.06) -> Color:
    k = 1.0 + float(rng.uniform(-amount, amount))
    return (min(c[0] * k, 1.0), min(c[1] * k, 1.0), min(c[2] * k, 1.0))


def _rect_x(
    x: float, y0: float, y1: float, z0: float, z1: float
) -> list[tuple[float, float, float]]:
    return [(x, y0, z0), (x, y1, z0), (x, y1, z1), (x, y0, z1)]


def _rect_y(
    y: float, x0: float, x1: float, z0: float, z1: float
) -> list[tuple[float, float, float]]:
    return [(x0, y, z0), (x1, y, z0), (x1, y, z1), (x0, y, z1)]


def _lights(
    b: _Builder,
    part: int,
    xf: float,
    xr: float,
    w: float,
    z0: float,
    z1: float,
    inset: float,
    size: float,
) -> None:
    e = 0.012
    for s in (1, -1):
        ya, yb = s * (w / 2 - inset), s * (w / 2 - inset - size)
        b.on_face(part, (1.0, 0.0, 0.0), _rect_x(xf + e, ya, yb, z0, z1), HEAD, LIGHT_HEAD)
        b.on_face(part, (-1.0, 0.0, 0.0), _rect_x(xr - e, ya, yb, z0, z1), TAIL, LIGHT_TAIL)


def _person(
    b: _Builder, rng: np.random.Generator, h: float, x: float, z: float, seated: bool
) -> None:
    top = _vary(rng, tuple(float(v) for v in rng.uniform(0.08, 0.85, 3)), 0.0)  # type: ignore[arg-type]
    legs = _vary(rng, ((0.12, 0.15, 0.3), (0.1, 0.1, 0.1), (0.35, 0.3, 0.25))[int(rng.integers(3))])
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    # ``h`` is the top of the head; a seated rider's thighs start at ``z``.
    head = 0.13 * h if not seated else 0.24
    if not seated:
        for s in (1, -1):
            b.hexa(
                x - 0.07, x + 0.07, s * 0.02, s * 0.14, 0.0, 0.47 * h, legs, legs, swing=float(s)
            )
        z_t = 0.47 * h
    else:
        b.hexa(x - 0.1, x + 0.2, -0.16, 0.16, z, z + 0.42, legs, legs)
        z_t = z + 0.4
    t1 = h - head - 0.01
    b.hexa(x - 0.12, x + 0.12, -0.23, 0.23, z_t, t1, top, top)
    b.hexa(x - 0.1, x + 0.1, -0.09, 0.09, t1 + 0.01, h, skin, skin)


def make_model(cls: str, rng: np.random.Generator) -> ObjectModel:
    """A random instance of a class: dimensions within range, colours from palettes."""
    spec = SPECS[cls]
    length = float(rng.uniform(*spec.length))
    w = float(rng.uniform(*spec.width))
    h = float(rng.uniform(*spec.height))
    b = _Builder()
    _SHAPES[cls](b, rng, length, w, h)
    return b.build()


@dataclass(frozen=True, slots=True)
class _CarStyle:
    """Where a body style puts its cabin and how high it rides (fractions of the length)."""

    cabin: tuple[float, float]  # the cabin's footprint on the body, rear to front
    roof: tuple[float, float]  # the roof's extent: how far rear window and windscreen slant
    pillars: tuple[float, ...]  # where the side glass is split
    sill: float  # the body's underside above the ground (m)
    wheel: float  # radius (m)


_SEDAN = _CarStyle((-0.33, 0.22), (-0.26, 0.04), (-0.1,), 0.2, 0.31)
_HATCHBACK = _CarStyle((-0.44, 0.2), (-0.4, 0.02), (-0.1, -0.3), 0.2, 0.31)
_SUV = _CarStyle((-0.45, 0.18), (-0.43, 0.0), (-0.12, -0.32), 0.3, 0.36)


def _car_style(length: float, height: float) -> _CarStyle:
    """The body a car's size suggests: tall ones are SUVs, short ones hatchbacks. Taken from
    the size already drawn, not drawn itself, so every scene's traffic stays what it was."""
    if height >= 1.58:
        return _SUV
    return _HATCHBACK if length < 4.25 else _SEDAN


def _car(b: _Builder, rng: np.random.Generator, length: float, w: float, h: float) -> None:
    hl, hw = length / 2, w / 2
    style = _car_style(length, h)
    paint = _vary(rng, _pick(rng, _PAINT))
    zb = 0.55 * h
    body = b.hexa(-hl, hl, -hw, hw, style.sill, zb, paint, paint, skip=("top",))
    gw, tw = hw * 0.93, hw * 0.78  # the cabin's half-width at the belt line and at the roof
    c0, c1 = style.cabin[0] * length, style.cabin[1] * length
    up = (0.0, 0.0, 1.0)
    for xa, xb, ya, yb in (
        (c1, hl, -hw, hw),
        (-hl, c0, -hw, hw),
        (c0, c1, gw, hw),
        (c0, c1, -hw, -gw),
    ):
        b.face(body, up, [(xa, ya, zb), (xb, ya, zb), (xb, yb, zb), (xa, yb, zb)], paint)
    # The cabin: glass all round, roof in paint, slanted by its narrower, shorter top.
    cabin = b.hexa(
        c0,
        c1,
        -gw,
        gw,
        zb,
        h,
        paint,
        GLASS,
        GLASS,
        GLASS,
        tx=(style.roof[0] * length, style.roof[1] * length),
        ty=(-tw, tw),
    )
    rise, e = h - zb, 0.012
    slope = math.hypot(rise, gw - tw)
    for s in (1, -1):
        normal = (0.0, s * rise / slope, (gw - tw) / slope)
        for xp in style.pillars:
            xa, xb = xp * length - 0.06, xp * length + 0.06
            ya, yb = s * (gw + e), s * (tw + e)
            pillar = [(xa, ya, zb), (xb, ya, zb), (xb, yb, h), (xa, yb, h)]
            b.on_face(cabin, normal, pillar, paint)
        for xw in (0.3 * length, -0.31 * length):
            b.wheel(body, xw, s * (hw + 0.01), style.wheel, s)
    _lights(b, body, hl, -hl, w, zb - 0.2, zb - 0.08, 0.12, 0.28)
    b.on_face(body, (1.0, 0.0, 0.0), _rect_x(hl + 0.011, -0.35, 0.35, 0.3, zb - 0.14), DARK)


def _bus(b: _Builder, rng: np.random.Generator, length: float, w: float, h: float) -> None:
    hl, hw = length / 2, w / 2
    paint = _vary(rng, _BUS[int(rng.integers(len(_BUS)))])
    body = b.hexa(
        -hl, hl, -hw, hw, 0.3, h, _vary(rng, (0.85, 0.85, 0.85)), paint,
        skip=("left", "right"),
    )  # fmt: skip
    for s in (1, -1):
        # Each side tiled around its window band: strips below and above, two pillars.
        ys, n = s * hw, (0.0, float(s), 0.0)
        wa, wb, za, zb = -hl + 0.7, hl - 0.5, 1.3, h - 0.4
        for xa, xb, z0, z1, col in (
            (-hl, hl, 0.3, za, paint),
            (-hl, hl, zb, h, paint),
            (-hl, wa, za, zb, paint),
            (wb, hl, za, zb, paint),
            (wa, wb, za, zb, GLASS),
        ):
            b.face(body, n, _rect_y(ys, xa, xb, z0, z1), col)
        for xw in (hl - 2.6, -hl + 2.8):
            b.wheel(body, xw, s * (hw + 0.02), 0.5, s)
    b.on_face(
        body, (1.0, 0.0, 0.0), _rect_x(hl + 0.012, -hw + 0.15, hw - 0.15, 1.0, h - 0.3), GLASS
    )
    b.on_face(
        body, (-1.0, 0.0, 0.0), _rect_x(-hl - 0.012, -hw + 0.3, hw - 0.3, 1.7, h - 0.5), GLASS
    )
    _lights(b, body, hl, -hl, w, 0.55, 0.75, 0.15, 0.35)


def _truck(b: _Builder, rng: np.random.Generator, length: float, w: float, h: float) -> None:
    hl, hw = length / 2, w / 2
    cab_col = _vary(rng, _PAINT[int(rng.integers(len(_PAINT)))][0])
    cargo_col = _vary(rng, _CARGO[int(rng.integers(len(_CARGO)))])
    b.hexa(-hl, hl - 2.3, -hw * 0.9, hw * 0.9, 0.45, 1.0, DARK, DARK)
    cab = b.hexa(hl - 2.3, hl, -hw, hw, 0.5, min(3.0, h - 0.1), cab_col, cab_col)
    cargo = b.hexa(-hl, hl - 2.45, -hw, hw, 1.0, h, cargo_col, cargo_col)
    b.on_face(cab, (1.0, 0.0, 0.0), _rect_x(hl + 0.012, -hw + 0.1, hw - 0.1, 1.9, 2.8), GLASS)
    for s in (1, -1):
        b.on_face(
            cab,
            (0.0, float(s), 0.0),
            _rect_y(s * (hw + 0.012), hl - 1.5, hl - 0.2, 1.9, 2.7),
            GLASS,
        )
        b.wheel(cab, hl - 1.3, s * (hw + 0.02), 0.5, s)
        for xw in (-hl + 1.4, -hl + 2.5) if length > 9 else (-hl + 1.6,):
            b.wheel(cargo, xw, s * (hw + 0.02), 0.5, s)
    e = 0.012
    for s in (1, -1):
        ya, yb = s * (hw - 0.15), s * (hw - 0.45)
        b.on_face(cab, (1.0, 0.0, 0.0), _rect_x(hl + e, ya, yb, 0.7, 0.9), HEAD, LIGHT_HEAD)
        b.on_face(cargo, (-1.0, 0.0, 0.0), _rect_x(-hl - e, ya, yb, 1.1, 1.3), TAIL, LIGHT_TAIL)


def _motorcycle(b: _Builder, rng: np.random.Generator, length: float, w: float, h: float) -> None:
    hw = w / 2
    paint = _vary(rng, _pick(rng, _PAINT))
    bike = b.hexa(-0.42 * length, 0.42 * length, -0.17, 0.17, 0.3, 0.82, paint, paint)
    for s in (1, -1):
        for xw in (0.34 * length, -0.34 * length):
            b.wheel(bike, xw, s * 0.18, 0.3, s)
    b.on_face(
        bike,
        (1.0, 0.0, 0.0),
        _rect_x(0.42 * length + 0.01, -0.08, 0.08, 0.62, 0.74),
        HEAD,
        LIGHT_HEAD,
    )
    b.on_face(
        bike,
        (-1.0, 0.0, 0.0),
        _rect_x(-0.42 * length - 0.01, -0.07, 0.07, 0.6, 0.68),
        TAIL,
        LIGHT_TAIL,
    )
    b.hexa(0.3 * length, 0.36 * length, -hw, hw, 0.95, 1.0, DARK, DARK)  # handlebar
    _person(b, rng, h, -0.1, 0.7, seated=True)


def _bicycle(b: _Builder, rng: np.random.Generator, length: float, w: float, h: float) -> None:
    hw = w / 2
    frame = _vary(rng, _PAINT[int(rng.integers(len(_PAINT)))][0])
    bk = b.hexa(-0.42 * length, 0.42 * length, -0.04, 0.04, 0.35, 0.85, frame, frame)
    for s in (1, -1):
        for xw in (0.3 * length, -0.3 * length):
            b.wheel(bk, xw, s * 0.045, 0.34, s)
    b.hexa(0.3 * length, 0.35 * length, -hw, hw, 0.98, 1.03, DARK, DARK)
    _person(b, rng, h, -0.05, 0.55, seated=True)


def _walker(b: _Builder, rng: np.random.Generator, length: float, w: float, h: float) -> None:
    _person(b, rng, h, 0.0, 0.0, seated=False)


# Each class's shape from its drawn length, width and height (m).
_SHAPES: dict[str, Callable[[_Builder, np.random.Generator, float, float, float], None]] = {
    "car": _car,
    "bus": _bus,
    "truck": _truck,
    "motorcycle": _motorcycle,
    "bicycle": _bicycle,
    "person": _walker,
}
