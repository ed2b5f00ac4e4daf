"""Small scenes for fast tests: low resolution, short warm-up, nothing random on top."""

from __future__ import annotations

from typing import Any

from its_camera_ai.sim import CameraConfig, EffectsConfig, SceneConfig, TrafficConfig

QUIET = EffectsConfig(noise=0, motion_blur=False, shadows=False, rain_streaks=False)
EMPTY = TrafficConfig(
    flow_veh_h_per_lane=0, cross_flow_veh_h_per_lane=0, bicycle_flow_h=0, pedestrian_flow_h=0
)


def small(seed: int = 1, *, width: int = 320, height: int = 180, **kw: Any) -> SceneConfig:
    """A default scene rendered small (the camera keeps its field of view)."""
    kw.setdefault("warmup_s", 2.0)
    return SceneConfig(seed=seed, camera=CameraConfig(width=width, height=height), **kw)
