"""A simulated camera scene: traffic, incidents, counting lines and rendering, by seed.

Randomness comes from three independent streams spawned from the seed: layout (scenery,
textures, light), traffic (arrivals, classes, sizes, behaviour) and per-frame image noise.
So rendering at another resolution, or skipping frames, never changes the traffic, and the
same seed always gives identical frames and truth.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.sim._background import Textures
from its_camera_ai.sim._camera import Camera
from its_camera_ai.sim._conditions import make_look
from its_camera_ai.sim._config import CLASSES, SceneConfig
from its_camera_ai.sim._incidents import Incidents
from its_camera_ai.sim._osd import draw_osd
from its_camera_ai.sim._render import Renderer
from its_camera_ai.sim._traffic import Agent, TrafficSim
from its_camera_ai.sim._truth import CountingLine, Crossing, FrameTruth, IncidentTruth, frame_tags
from its_camera_ai.sim._world import World, build_world

__all__ = ["Scene"]

_MAX_STEP = 1.0 / 20.0  # s: car following is integrated at least this finely


class Scene:
    """Step the world one frame period at a time and render it at any resolution.

    ``crossings`` holds every line crossing since the start (the truth a finished run is
    scored on); a live camera that runs for days passes ``keep_crossings=False`` and reads
    each frame's crossings from its ``FrameTruth`` instead, so its memory stays flat.
    """

    def __init__(
        self,
        config: SceneConfig,
        *,
        size: tuple[int, int] | None = None,
        keep_crossings: bool = True,
    ) -> None:
        self.config = config
        self._keep_crossings = keep_crossings
        root = np.random.SeedSequence(config.seed)
        layout_ss, traffic_ss, incident_ss = root.spawn(3)
        layout = np.random.default_rng(layout_ss)
        self.world: World = build_world(config, layout)
        self.textures = Textures(layout)
        self.camera = Camera.from_config(
            config.camera, default_y=-(config.road_half_width + 4.0), size=size
        )
        self.look = make_look(
            config.condition, layout, config.effects, math.radians(config.camera.pan_deg)
        )
        self.sim = TrafficSim(self.world, config, np.random.default_rng(traffic_ss))
        self.lines = self._lines()
        self.incidents = Incidents(
            self.sim, config.incidents, self._focus(), np.random.default_rng(incident_ss)
        )
        self.fps = config.fps
        self._substeps = max(1, math.ceil((1.0 / self.fps) / _MAX_STEP))
        self._dt = 1.0 / self.fps / self._substeps
        self._renderers: dict[tuple[int, int], Renderer] = {}
        self.frame_index = 0
        self.crossings: list[Crossing] = []
        # The crossings of the step that led to the current frame: what its truth reports.
        self._frame_crossings: list[Crossing] = []
        self._warm_up()

    # -- setup ----------------------------------------------------------------------------

    def _lines(self) -> list[CountingLine]:
        if self.config.counting_lines is None:
            h = self.world.road_half
            return [CountingLine("main", (30.0, -h), (30.0, h))]
        return [CountingLine(c.name, c.a, c.b) for c in self.config.counting_lines]

    def _focus(self) -> tuple[float, float]:
        """The stretch of road (x, m) well inside the picture, for incidents placed at random."""
        w, cam = self.world, self.camera
        xs = np.arange(w.x0 + 20.0, w.x1 - 20.0, 2.0)
        uv, z = cam.project(np.column_stack([xs, np.zeros_like(xs), np.zeros_like(xs)]))
        ok = (z > 1.0) & (uv[:, 0] > 0.05 * cam.width) & (uv[:, 0] < 0.95 * cam.width)
        ok &= (uv[:, 1] > 0.4 * cam.height) & (uv[:, 1] < 0.92 * cam.height)
        if not ok.any():
            return (w.x0 + 40.0, w.x0 + 120.0)
        return (float(xs[ok].min()), float(xs[ok].max()))

    def _warm_up(self) -> None:
        self.sim.populate()
        n = round(self.config.warmup_s * self.fps) * self._substeps
        self.sim.t = -n * self._dt
        for _ in range(n):
            self.sim.step(self._dt)
        self.sim.t = 0.0

    # -- time -----------------------------------------------------------------------------

    @property
    def time_s(self) -> float:
        return self.frame_index / self.fps

    @property
    def agents(self) -> list[Agent]:
        return self.sim.agents

    def step(self) -> None:
        """Advance one frame period; crossings and incidents are recorded as they happen."""
        nxt = self.frame_index + 1
        self._frame_crossings = []
        for i in range(self._substeps):
            t0 = self.frame_index / self.fps + i * self._dt
            moves = self.sim.step(self._dt)
            for ag, p, q in moves:
                for line in self.lines:
                    hit = line.cross(p, q)
                    if hit is not None:
                        c = Crossing(
                            line.name, ag.id, ag.cls, hit[0], round(t0 + hit[1] * self._dt, 4), nxt
                        )
                        if self._keep_crossings:
                            self.crossings.append(c)
                        self._frame_crossings.append(c)
            self.incidents.update()
        self.frame_index = nxt
        self.sim.t = nxt / self.fps  # no drift from summing dt

    # -- rendering ------------------------------------------------------------------------

    def renderer(self, size: tuple[int, int] | None = None) -> Renderer:
        w, h = size if size is not None else (self.camera.width, self.camera.height)
        if (w, h) not in self._renderers:
            if w % 2 or h % 2 or w < 16 or h < 16:
                raise ValueError(f"size must be even and at least 16x16, got {w}x{h}")
            cam = (
                self.camera
                if (w, h) == (self.camera.width, self.camera.height)
                else self.camera.scaled(w, h)
            )
            # Same stream at every size, so scenery details (lit windows) do not change.
            rng = np.random.default_rng([self.config.seed, 0x5CE7E])
            self._renderers[(w, h)] = Renderer(self.world, cam, self.look, self.textures, rng)
        return self._renderers[(w, h)]

    def signal_states(self) -> dict[str, str]:
        plan = self.world.signals
        if plan is None:
            return {}
        return {g: plan.state(g, self.sim.t) for g in ("main", "cross", "walk")}

    def render(self, size: tuple[int, int] | None = None) -> tuple[NDArray[np.uint8], FrameTruth]:
        """The current frame (H x W x 3 RGB uint8) and its ground truth."""
        r = self.renderer(size)
        rng = np.random.default_rng([self.config.seed, 0xF4A3E, self.frame_index])
        signals = self.signal_states()
        frame, objects = r.render(self.sim.agents, signals, rng)
        osd = self.config.effects.osd
        if osd is not None:
            # Cameras add their text digitally, after the sensor's noise and blur and before
            # encoding; its size follows the picture, so scale it to this rendering.
            draw_osd(frame, osd, self.time_s, r.cam.height / self.config.camera.height)
        objs = tuple(objects)
        truth = FrameTruth(
            frame=self.frame_index,
            time_s=round(self.time_s, 6),
            width=r.cam.width,
            height=r.cam.height,
            condition=self.config.condition,
            objects=objs,
            crossings=tuple(self._frame_crossings),
            incidents=self.incidents.truths(active_at=self.time_s),
            signals=signals,
            tags=frame_tags(self.config.condition, objs),
        )
        return frame, truth

    def frames(
        self,
        count: int | None = None,
        *,
        size: tuple[int, int] | None = None,
        realtime: bool = False,
    ) -> Iterator[tuple[NDArray[np.uint8], FrameTruth]]:
        """Render, yield, step: a live camera. ``realtime`` paces frames at ``fps``."""
        t_start = time.monotonic()
        produced = 0
        while count is None or produced < count:
            yield self.render(size)
            produced += 1
            self.step()
            if realtime:
                lag = t_start + produced / self.fps - time.monotonic()
                if lag > 0:
                    time.sleep(lag)

    # -- whole-scene truth ----------------------------------------------------------------

    def incident_truths(self) -> tuple[IncidentTruth, ...]:
        return self.incidents.truths()

    def summary(self, size: tuple[int, int] | None = None) -> dict[str, Any]:
        """Everything that is not per frame: calibration, lines, incidents, crossings."""
        cam = self.camera if size is None else self.camera.scaled(*size)
        lines = []
        for ln in self.lines:
            ia, ib = cam.ground_to_image(np.array([ln.a, ln.b]))
            lines.append(ln.to_dict((float(ia[0]), float(ia[1])), (float(ib[0]), float(ib[1]))))
        return {
            "classes": list(CLASSES),
            "fps": self.fps,
            "frames": self.frame_index + 1,
            "calibration": cam.calibration(),
            "counting_lines": lines,
            "incidents": [i.to_dict() for i in self.incidents.truths()],
            "crossings": [c.to_dict() for c in self.crossings],
            "config": self.config.model_dump(mode="json"),
        }
