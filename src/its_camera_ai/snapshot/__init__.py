"""Snapshots of the cameras as analytics sees them, served on the HTTP side port.

``GET /cameras/{id}/snapshot.jpg``: the camera's latest frame (from its shared-memory ring
when on this host, else a neutral canvas) with the engine's tracks, the scene's lines (and
their counts), zones and lanes drawn on it; ``GET /cameras.json``: each camera's state and
line counts; ``GET /``: a page showing both. ``its-camera-ai snapshot`` fetches one image.
The analytics unit registers the routes (``add_snapshot_routes``) with its engines as the
``CameraSource``.
"""

from __future__ import annotations

from its_camera_ai.snapshot._cli import snapshot_main
from its_camera_ai.snapshot._frames import RingFrames, to_rgb
from its_camera_ai.snapshot._page import REFRESH_SECONDS
from its_camera_ai.snapshot._picture import (
    BOX_COLOUR,
    CANVAS_COLOUR,
    LANE_COLOUR,
    LINE_COLOUR,
    ZONE_COLOUR,
    CameraPicture,
    TrackBox,
    draw_snapshot,
)
from its_camera_ai.snapshot._routes import CameraSource, add_snapshot_routes

__all__ = [
    "BOX_COLOUR",
    "CANVAS_COLOUR",
    "LANE_COLOUR",
    "LINE_COLOUR",
    "REFRESH_SECONDS",
    "ZONE_COLOUR",
    "CameraPicture",
    "CameraSource",
    "RingFrames",
    "TrackBox",
    "add_snapshot_routes",
    "draw_snapshot",
    "snapshot_main",
    "to_rgb",
]
