"""Scenery beside the road: buildings, trees, street lamps and signal posts.

Placed from the layout random stream, so a seed always gets the same street. Nothing is put
right in front of the camera (it hangs on its own pole) or inside the junction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from its_camera_ai.sim._config import SceneConfig

__all__ = ["Ball", "Box3", "Scenery", "place_scenery", "signal_posts"]


@dataclass(frozen=True, slots=True)
class Box3:
    """A static box (building, trunk, pole, signal head) with a base colour (0..1 RGB)."""

    x: float
    y: float
    z0: float
    sx: float
    sy: float
    sz: float
    color: tuple[float, float, float]
    kind: str  # "building", "trunk", "pole", "head"


@dataclass(frozen=True, slots=True)
class Ball:
    """A tree crown: a sphere drawn as its shaded silhouette."""

    x: float
    y: float
    z: float
    r: float
    color: tuple[float, float, float]


@dataclass(slots=True)
class Scenery:
    boxes: list[Box3] = field(default_factory=list)
    balls: list[Ball] = field(default_factory=list)
    lamps: list[tuple[float, float, float]] = field(default_factory=list)  # light positions
    signal_heads: list[tuple[float, float, float, str, float]] = field(default_factory=list)


_BUILDING_COLORS = (
    (0.62, 0.56, 0.5),
    (0.55, 0.52, 0.5),
    (0.7, 0.64, 0.55),
    (0.5, 0.38, 0.32),
    (0.6, 0.6, 0.62),
    (0.72, 0.7, 0.62),
    (0.42, 0.4, 0.42),
)


def place_scenery(
    cfg: SceneConfig,
    rng: np.random.Generator,
    x0: float,
    x1: float,
    walk_out: float,
    cross_half: float,
) -> Scenery:
    sc = Scenery()
    inter = cfg.intersection
    xi = inter.x_m if inter else None
    cam_x = cfg.camera.x_m
    cam_y = cfg.camera.y_m if cfg.camera.y_m is not None else -(cfg.road_half_width + 4.0)

    pan = math.radians(cfg.camera.pan_deg)

    def clear(x: float, margin: float, y: float | None = None) -> bool:
        # The camera hangs on its own pole: nothing stands right in front of the lens.
        if y is not None:
            dx, dy = x - cam_x, y - cam_y
            off = abs((math.atan2(dy, dx) - pan + math.pi) % (2 * math.pi) - math.pi)
            if (-5.0 < dx < 70.0 and abs(dy) < 5.0) or (
                math.hypot(dx, dy) < 35.0 and off < math.radians(40)
            ):
                return False
        return xi is None or abs(x - xi) > cross_half + margin

    for side in (1, -1):
        x = x0 + float(rng.uniform(0, 10))
        while x < x1 + 200:
            # Trees in a verge row, buildings set back behind them.
            y = side * (walk_out + float(rng.uniform(2.0, 5.0)))
            if clear(x, 6.0, y) and rng.random() < 0.8:
                h = float(rng.uniform(2.0, 3.5))
                r = float(rng.uniform(1.6, 3.0))
                g = float(rng.uniform(0.7, 1.1))
                sc.boxes.append(
                    Box3(x, y, 0.0, 0.35, 0.35, h + r * 0.5, (0.33, 0.25, 0.18), "trunk")
                )
                sc.balls.append(Ball(x, y, h + r, r, (0.2 * g, 0.42 * g, 0.16 * g)))
            x += float(rng.uniform(9.0, 18.0))
        x = x0 - 60.0
        while x < x1 + 400:
            wdt = float(rng.uniform(12.0, 30.0))
            if clear(x, 12.0) and clear(x + wdt, 12.0) and rng.random() < 0.85:
                depth = float(rng.uniform(10.0, 20.0))
                y = side * (walk_out + float(rng.uniform(9.0, 14.0)) + depth / 2)
                col = _BUILDING_COLORS[int(rng.integers(len(_BUILDING_COLORS)))]
                sc.boxes.append(
                    Box3(
                        x + wdt / 2,
                        y,
                        0.0,
                        wdt,
                        depth,
                        float(rng.uniform(6.0, 28.0)),
                        col,
                        "building",
                    )
                )
            x += wdt + float(rng.uniform(2.0, 10.0))
        # Street lamps on the kerb side of the sidewalks, every 30 m.
        x = x0 + (15.0 if side > 0 else 0.0)
        while x < x1:
            y = side * (walk_out - 0.4)
            if clear(x, 3.0, y):
                sc.boxes.append(Box3(x, y, 0.0, 0.18, 0.18, 8.0, (0.35, 0.36, 0.38), "pole"))
                sc.boxes.append(
                    Box3(x, y - side * 0.9, 7.9, 0.5, 1.8, 0.2, (0.3, 0.3, 0.32), "pole")
                )
                sc.lamps.append((x, y - side * 1.5, 7.8))
            x += 30.0
    return sc


def signal_posts(
    sc: Scenery,
    xi: float,
    cross_half: float,
    walk_in: float,
    cw: tuple[float, float] | None,
) -> None:
    # One post per approach, on the right-hand kerb before the stop line.
    assert cw is not None
    posts = [
        # (x, y, group, direction the lamps face: towards the approaching traffic)
        (cw[0] - 2.0, -(walk_in + 0.4), "main", math.pi),
        (xi + cross_half + 3.0, walk_in + 0.4, "main", 0.0),
        (xi + cross_half + 1.0, -(walk_in + 2.0), "cross", -math.pi / 2),
        (xi - cross_half - 1.0, walk_in + 2.0, "cross", math.pi / 2),
    ]
    for x, y, group, facing in posts:
        sc.boxes.append(Box3(x, y, 0.0, 0.2, 0.2, 3.6, (0.2, 0.2, 0.2), "pole"))
        sc.boxes.append(Box3(x, y, 3.6, 0.35, 0.35, 1.0, (0.08, 0.08, 0.08), "head"))
        sc.signal_heads.append((x, y, 3.6, group, facing))
