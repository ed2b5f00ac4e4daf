"""What a snapshot shows, captured from the analytics engine on the event loop, then drawn
on the camera's frame (or a neutral canvas) in a worker thread and encoded as JPEG."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from its_camera_ai.scene import Direction, SceneSpec

__all__ = [
    "BOX_COLOUR",
    "CANVAS_COLOUR",
    "LANE_COLOUR",
    "LINE_COLOUR",
    "ZONE_COLOUR",
    "CameraPicture",
    "TrackBox",
    "draw_snapshot",
]

# Saturated colours rare in road scenes, so the drawing stands out (and tests find it).
LINE_COLOUR = (255, 0, 255)
BOX_COLOUR = (0, 255, 0)
ZONE_COLOUR = (255, 200, 0)
LANE_COLOUR = (0, 160, 255)
CANVAS_COLOUR = (96, 96, 96)
_TEXT_COLOUR = (255, 255, 255)
_LINE_WIDTH = 4
_JPEG_QUALITY = 85
# Full-resolution chroma (4:4:4). With JPEG's default 4:2:0 a 2-px outline that starts on an
# odd column shares each chroma sample with the frame beside it and fades to a pale green
# (a track's box all but vanished in CI); 4:4:4 costs ~20 % more bytes and no encode time
# (768x432: 25.0 kB against 20.6 kB, 0.82 ms against 0.89).
_JPEG_CHROMA_SUBSAMPLING = 0
_ARROWS = {Direction.LEFT_TO_RIGHT: "L>R", Direction.RIGHT_TO_LEFT: "R>L"}


@dataclass(frozen=True, slots=True)
class TrackBox:
    track_id: int
    label: str  # the class, as the engine votes it
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels


@dataclass(frozen=True, slots=True)
class CameraPicture:
    """A camera as the engine last saw it. ``line_counts``: vehicles per (line id,
    direction) in the open bin starting at ``counts_since_ns``; ``frame_sequence``: the
    last frame the engine processed (None before its first); ``state``: live, stale or
    waiting (no frame yet)."""

    camera_id: str
    width: int
    height: int
    scene: SceneSpec
    tracks: tuple[TrackBox, ...]
    line_counts: Mapping[tuple[str, int], int]
    counts_since_ns: int | None
    frame_sequence: int | None
    state: str

    def counts_by_line(self) -> dict[str, dict[str, int]]:
        """{line id: {direction name: vehicles}} for every line of the scene (zeros too)."""
        out: dict[str, dict[str, int]] = {}
        for line in self.scene.lines:
            wanted = tuple(_ARROWS) if line.direction is Direction.NONE else (line.direction,)
            out[line.id] = {
                d.name.lower(): self.line_counts.get((line.id, int(d)), 0) for d in wanted
            }
        return out


def draw_snapshot(picture: CameraPicture, rgb: NDArray[np.uint8] | None) -> bytes:
    """``picture`` drawn on ``rgb`` (H, W, 3), or on a neutral canvas of the camera's size
    that says so in a corner when there is no frame; a JPEG."""
    if rgb is None:
        image = Image.new("RGB", (picture.width, picture.height), CANVAS_COLOUR)
    else:
        image = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(image)
    text_size = max(10, image.height // 40)
    font = ImageFont.load_default(size=text_size)
    scene = picture.scene
    for zone in scene.zones:
        draw.polygon(list(zone.polygon), outline=ZONE_COLOUR, width=2)
        draw.text(zone.polygon[0], zone.id, fill=ZONE_COLOUR, font=font)
    for lane in scene.lanes:
        draw.polygon(list(lane.polygon), outline=LANE_COLOUR, width=2)
        draw.line([lane.travel_start, lane.travel_end], fill=LANE_COLOUR, width=2)
    counts = picture.counts_by_line()
    for line in scene.lines:
        draw.line([line.start, line.end], fill=LINE_COLOUR, width=_LINE_WIDTH)
        by_direction = counts[line.id]
        text = (
            line.id
            + " "
            + " ".join(
                f"{_ARROWS[Direction[name.upper()]]} {n}" for name, n in by_direction.items()
            )
        )
        middle = ((line.start[0] + line.end[0]) / 2, (line.start[1] + line.end[1]) / 2 + 4)
        draw.text(middle, text, fill=_TEXT_COLOUR, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    for track in picture.tracks:
        draw.rectangle(track.box, outline=BOX_COLOUR, width=2)
        x1, y1 = track.box[0], track.box[1]
        label = f"#{track.track_id} {track.label}"
        draw.text((x1, max(0.0, y1 - text_size - 2)), label, fill=BOX_COLOUR, font=font)
    if rgb is None:
        draw.text((4, 4), "no frame here: geometry and tracks only", fill=_TEXT_COLOUR, font=font)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=_JPEG_QUALITY, subsampling=_JPEG_CHROMA_SUBSAMPLING)
    return out.getvalue()
