"""``GET /cameras/{id}/snapshot.jpg`` and ``/cameras.json`` on a real host: the camera's
frame from its ring with the engine's tracks and the scene drawn on it; 400/404 cases; the
neutral canvas where no frame can be had."""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from its_camera_ai.scene import LineSpec, SceneSpec
from its_camera_ai.snapshot import (
    BOX_COLOUR,
    CANVAS_COLOUR,
    LINE_COLOUR,
    CameraPicture,
    TrackBox,
    draw_snapshot,
)
from tests.snapshot.conftest import (
    CAMERA,
    HEIGHT,
    LINE,
    WIDTH,
    System,
    camera_json,
    http_get,
    wait_for_track,
)

# JPEG moves colours a little, and most around edges.
_TOLERANCE = 90.0


def _pixels(jpeg: bytes) -> NDArray[np.float64]:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def _near(pixels: NDArray[np.float64], x: float, y: float, colour: Sequence[int]) -> bool:
    """Whether a pixel within 1 px of (x, y) has ``colour``."""
    h, w, _ = pixels.shape
    xi, yi = round(x), round(y)
    patch = pixels[max(0, yi - 1) : min(h, yi + 2), max(0, xi - 1) : min(w, xi + 2)]
    distance = np.linalg.norm(patch - np.asarray(colour, dtype=np.float64), axis=-1)
    return bool((distance < _TOLERANCE).any())


def _share_along(
    pixels: NDArray[np.float64],
    start: tuple[float, float],
    end: tuple[float, float],
    colour: Sequence[int],
    hidden_by: Sequence[Sequence[float]] = (),
) -> float:
    """The share of points from ``start`` to ``end`` drawn in ``colour``, less the points
    that tracks drawn on top may hide (``hidden_by``: their boxes, outline and label)."""
    points = [p for p in np.linspace(start, end, 40)[2:-2] if not _hidden(p, hidden_by)]
    assert len(points) >= 10, "the tracks hide most of what was to be checked"
    return float(np.mean([_near(pixels, x, y, colour) for x, y in points]))


def _hidden(point: Sequence[float], boxes: Sequence[Sequence[float]]) -> bool:
    # Inside a track's box, with a margin for JPEG (its 2-px outline is drawn over the line
    # wherever the two cross), or under its label: a text line above the box that may run
    # past its right edge ("#12 motorcycle").
    x, y = point
    label = max(10, HEIGHT // 40) + 4
    return any(
        (x0 - 4 <= x <= x1 + 4 and y0 - 4 <= y <= y1 + 4)
        or (x0 - 4 <= x <= x0 + 100 and y0 - label - 4 <= y <= y0)
        for x0, y0, x1, y1 in boxes
    )


async def test_snapshot_draws_the_line_and_the_engines_tracks_on_the_frame(system: System) -> None:
    # The engine moves on between two requests: take a snapshot whose frame is the one the
    # listing described (5 frames a second leaves time for both most of the time).
    await wait_for_track(system.http_port)
    for _ in range(20):
        described = await camera_json(system.http_port)
        answer = await http_get(system.http_port, f"/cameras/{CAMERA}/snapshot.jpg")
        assert answer.status == 200, answer.body
        assert answer.headers["Content-Type"] == "image/jpeg"
        if (
            described["tracks"]
            and int(answer.headers["X-Frame-Sequence"]) == (described["frame_sequence"])
        ):
            break
    else:
        raise AssertionError("no snapshot of the frame the listing described")
    pixels = _pixels(answer.body)
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    # The camera's picture, not the neutral canvas.
    canvas = np.linalg.norm(pixels - np.asarray(CANVAS_COLOUR), axis=-1) < 4
    assert canvas.mean() < 0.5
    # The counting line, away from its label in the middle.
    (x0, y0), (x1, y1) = LINE
    boxes = [track["box"] for track in described["tracks"]]
    assert _share_along(pixels, (x0, y0), (x1, y0 + 0.4 * (y1 - y0)), LINE_COLOUR, boxes) > 0.8
    # Every track's box: its left and right edges (the label sits above the top one).
    for track in described["tracks"]:
        bounds = (WIDTH, HEIGHT, WIDTH, HEIGHT)
        bx1, by1, bx2, by2 = (
            min(max(v, 0.0), bound - 1) for v, bound in zip(track["box"], bounds, strict=True)
        )
        if bx2 - bx1 < 4 or by2 - by1 < 8:
            continue  # mostly outside the frame: nothing of its sides to see
        edges = [
            _share_along(pixels, (bx1, by1 + 2), (bx1, by2 - 2), BOX_COLOUR),
            _share_along(pixels, (bx2, by1 + 2), (bx2, by2 - 2), BOX_COLOUR),
        ]
        assert max(edges) > 0.6, (track, edges)
    assert described["state"] == "live"
    assert set(described["lines"]) == {"stop-line"}
    assert set(described["lines"]["stop-line"]) == {"left_to_right", "right_to_left"}


async def test_unknown_and_malformed_cameras(system: System) -> None:
    missing = await http_get(system.http_port, "/cameras/cam-nowhere/snapshot.jpg")
    assert missing.status == 404
    assert "cam-nowhere" in missing.json()["error"]
    for bad in ("Cam_1", "%2E%2E", "-cam"):
        answer = await http_get(system.http_port, f"/cameras/{bad}/snapshot.jpg")
        assert answer.status == 400, bad
        assert "camera" in answer.json()["error"]
    assert (await http_get(system.http_port, "/cameras/a/b/snapshot.jpg")).status == 404
    # The built-in routes are still there beside the added ones.
    assert (await http_get(system.http_port, "/live")).status == 200


def test_every_side_of_every_box_survives_the_jpeg_wherever_it_falls() -> None:
    # JPEG's usual 4:2:0 halves chroma: a 2-px outline starting on an odd column or row
    # shares each chroma sample with the frame beside it and fades past recognition (a
    # car's box in CI, [57.1, 143.4, 98.6, 170.8]: 6 % and 0 % of its sides green).
    # Noise for a frame: no background can help.
    rng = np.random.default_rng(7)
    for size, dx, dy in itertools.product((4, 9, 20, 41), (0.1, 0.6, 1.1, 1.6), (0.1, 1.1)):
        x1, y1 = 57.0 + dx, 143.0 + dy
        x2, y2 = x1 + size, y1 + 0.7 * size
        picture = CameraPicture(
            "cam-1", WIDTH, HEIGHT, SceneSpec(), (TrackBox(1, "car", (x1, y1, x2, y2)),),
            {}, None, 1, "live",
        )  # fmt: skip
        frame = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        pixels = _pixels(draw_snapshot(picture, frame))
        sides = [
            _share_along(pixels, (x1, y1 + 1), (x1, y2 - 1), BOX_COLOUR),
            _share_along(pixels, (x2, y1 + 1), (x2, y2 - 1), BOX_COLOUR),
            _share_along(pixels, (x1 + 1, y1), (x2 - 1, y1), BOX_COLOUR),
            _share_along(pixels, (x1 + 1, y2), (x2 - 1, y2), BOX_COLOUR),
        ]
        assert min(sides) > 0.9, ((x1, y1, x2, y2), sides)


def test_without_a_frame_the_geometry_is_drawn_on_a_neutral_canvas() -> None:
    scene = SceneSpec(lines=(LineSpec("l1", (10.0, 100.0), (300.0, 100.0)),))
    picture = CameraPicture(
        "cam-remote", 400, 200, scene, (TrackBox(7, "car", (50.0, 120.0, 120.0, 180.0)),),
        {("l1", 1): 3}, None, 12, "live",
    )  # fmt: skip
    pixels = _pixels(draw_snapshot(picture, None))
    assert pixels.shape == (200, 400, 3)
    assert _share_along(pixels, (200.0, 100.0), (300.0, 100.0), LINE_COLOUR) > 0.9
    assert _share_along(pixels, (50.0, 125.0), (50.0, 175.0), BOX_COLOUR) > 0.9
    # Mostly canvas, with the notice in the top-left corner.
    canvas = np.linalg.norm(pixels - np.asarray(CANVAS_COLOUR), axis=-1) < 12
    assert canvas.mean() > 0.8
    assert not canvas[2:16, 4:120].all()
    assert picture.counts_by_line() == {"l1": {"left_to_right": 3, "right_to_left": 0}}
