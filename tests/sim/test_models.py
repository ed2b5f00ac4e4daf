"""Road users' shapes and how their glass is lit."""

from __future__ import annotations

import dataclasses

import numpy as np

from its_camera_ai.sim import Scene

from .helpers import EMPTY, QUIET, small


def _empty_day_scene() -> Scene:
    return Scene(
        small(
            5,
            width=640,
            height=360,
            condition="day",
            traffic=EMPTY,
            effects=QUIET,
            scenery=False,
            intersection=None,
            warmup_s=0.0,
        )
    )


def _roof(verts: np.ndarray, height: float) -> np.ndarray:
    """The vertices of the one polygon lying wholly at the model's top: the cabin's roof."""
    tops = [v for v in verts if np.allclose(v[:, 2], height)]
    assert len(tops) == 1
    return tops[0]


def test_cars_take_the_body_style_their_size_suggests() -> None:
    """Tall cars are SUVs and short ones hatchbacks, whose roofs reach over the rear; long,
    low ones are sedans with a boot. Real traffic is mostly the first two, which a
    simulator of sedans alone never showed the detector."""
    scene = _empty_day_scene()
    lane = scene.world.lane("main+0")
    reach: dict[str, list[float]] = {"suv": [], "hatchback": [], "sedan": []}
    for _ in range(300):
        car = scene.sim.new_agent("car", lane, 30.0, v=0.0).model
        roof = _roof(car.verts, car.height)
        # Tumblehome: the roof is narrower than the body at the belt line.
        assert np.abs(roof[:, 1]).max() < 0.85 * car.width / 2
        if abs(car.length - 4.25) < 0.05:
            continue  # the drawn length includes the lamps: too close to the boundary to tell
        style = "suv" if car.height >= 1.58 else "hatchback" if car.length < 4.25 else "sedan"
        reach[style].append(float(roof[:, 0].min()) / car.length)
    assert all(len(r) > 30 for r in reach.values()), {k: len(r) for k, r in reach.items()}
    assert max(reach["suv"] + reach["hatchback"]) < -0.38
    assert min(reach["sedan"]) > -0.3
    # Pillars: painted strips lying on the cabin's glass sides, one per side at least.
    cabin = car.part == car.part[car.glass][0]
    assert (cabin & car.detail & ~car.glass).sum() >= 2


def test_windows_mirror_the_sky() -> None:
    """A car's glass seen from a pole camera is lit by the sky it mirrors: the same car
    drawn with matte glass is darker exactly there."""
    scene = _empty_day_scene()
    lane = scene.world.lane("main+0")
    car = scene.sim.new_agent("car", lane, lane.coords(35.0, 0.0)[0], v=0.0)
    glass = car.model.glass.copy()
    # Only the windows are glass: the polygons flagged share one colour no other one has.
    window = np.unique(car.model.color[glass], axis=0)
    assert len(window) == 1
    assert not np.any(np.all(car.model.color[~glass] == window[0], axis=1))
    mirrored, _ = scene.render()
    car.model = dataclasses.replace(car.model, glass=np.zeros_like(glass))
    matte, _ = scene.render()
    differ = np.any(mirrored != matte, axis=2)
    assert differ.sum() > 50
    assert mirrored[differ].astype(float).mean() > matte[differ].astype(float).mean() + 5
