"""Time-slice images of a video along counting lines, for counting crossings by eye.

For each line, the pixels along it are sampled in every frame and stacked, one row per
frame with time going down, into one image: a vehicle crossing the line is one blob, from
the frame its front reaches the line (first row) to the frame its rear leaves it (last
row). Column 0 is the line's start, the last column its end; a gutter on the left marks
every 10th frame (longer ticks and a label every 50th).

    python scripts/time_slice.py --video clip.mp4 --line mid=16,216,752,216 --out /tmp/ts

writes ``clip_mid.png`` (the time-slice: one row per decoded frame) per line and
``clip_lines.png`` (a frame with every line drawn and labelled). A line is
``[ID=]x0,y0,x1,y1`` (default id ``line1``, ``line2``, ...) in pixels of the video's own
frame, as a scene's counting line (its.common.v1.LineSegment): origin at the frame's
top-left corner, y down, pixel (i, j) covering [i, i+1) x [j, j+1), the ends within
0..width x 0..height. On the lines image a dot marks each line's start and an arrow points
to its right-hand side: an object moving along that arrow crosses LEFT_TO_RIGHT
(its.common.v1.CrossingDirection).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from its_camera_ai.common import is_resource_id
from its_camera_ai.scene import ID_RULE, Frame

GUTTER = 48  # columns left of the time-slice for the frame ticks
_COLOURS = ((255, 64, 64), (64, 160, 255), (255, 200, 0), (64, 220, 120), (220, 90, 255))

F64 = NDArray[np.float64]
U8 = NDArray[np.uint8]


class TimeSliceError(Exception):
    """A problem with the input, worded for the command line."""


@dataclass(frozen=True, slots=True)
class Line:
    id: str
    x0: float
    y0: float
    x1: float
    y1: float

    def __str__(self) -> str:
        return f"{self.id} ({self.x0:g},{self.y0:g} -> {self.x1:g},{self.y1:g})"

    @property
    def length(self) -> float:
        return math.hypot(self.x1 - self.x0, self.y1 - self.y0)


def parse_line(text: str, index: int) -> Line:
    """``[ID=]x0,y0,x1,y1``; ``index`` (from 1) names a line given without an id."""
    ident, sep, coords = text.rpartition("=")
    if not sep:
        ident = f"line{index}"
    if not is_resource_id(ident):
        raise TimeSliceError(f"--line {text!r}: id {ident!r} {ID_RULE}")
    parts = coords.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise TimeSliceError(f"--line {text!r}: expected [ID=]x0,y0,x1,y1 (four numbers)")
    line = Line(ident, *values)
    if line.length == 0:
        raise TimeSliceError(f"--line {text!r}: start and end must differ")
    return line


def check_in_frame(line: Line, width: int, height: int) -> None:
    """The scene's own rule for counting lines (``its_camera_ai.scene.Frame``)."""
    frame = Frame(width, height)
    for name, point in (("start", (line.x0, line.y0)), ("end", (line.x1, line.y1))):
        problem = frame.problem(point)
        if problem:
            raise TimeSliceError(
                f"line {line}: {name} {problem} (x must be in 0..{width}, y in 0..{height})"
            )


@dataclass(frozen=True, slots=True)
class _Sampler:
    """Bilinear samples along one line: (N,) pixel indices and weights, computed once."""

    ix0: NDArray[np.intp]
    ix1: NDArray[np.intp]
    iy0: NDArray[np.intp]
    iy1: NDArray[np.intp]
    wx: F64
    wy: F64

    @classmethod
    def along(cls, line: Line, width: int, height: int) -> _Sampler:
        n = max(2, math.ceil(line.length) + 1)  # about one sample per pixel of length
        t = np.linspace(0.0, 1.0, n)
        # A point (x, y) lies in pixel (floor(x), floor(y)), whose centre is at +0.5.
        x = np.clip(line.x0 + t * (line.x1 - line.x0) - 0.5, 0.0, width - 1.0)
        y = np.clip(line.y0 + t * (line.y1 - line.y0) - 0.5, 0.0, height - 1.0)
        ix0, iy0 = np.floor(x).astype(np.intp), np.floor(y).astype(np.intp)
        return cls(
            ix0,
            np.minimum(ix0 + 1, width - 1),
            iy0,
            np.minimum(iy0 + 1, height - 1),
            (x - ix0)[:, None],
            (y - iy0)[:, None],
        )

    def row(self, rgb: U8) -> U8:
        img = rgb.astype(np.float64)
        top = img[self.iy0, self.ix0] * (1 - self.wx) + img[self.iy0, self.ix1] * self.wx
        bottom = img[self.iy1, self.ix0] * (1 - self.wx) + img[self.iy1, self.ix1] * self.wx
        out: U8 = np.rint(top * (1 - self.wy) + bottom * self.wy).astype(np.uint8)
        return out


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames, ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def decode_slices(video: Path, lines: Sequence[Line], keep_frame: int) -> tuple[list[U8], U8, int]:
    """Time-slices (frames, samples, 3) per line and frame ``keep_frame`` (the last one when
    the clip is shorter) with its index; refuses a line outside the frame."""
    if not video.is_file():
        raise TimeSliceError(f"no such video file: {video}")
    try:
        container = av.open(str(video))
    except av.error.FFmpegError as exc:
        raise TimeSliceError(f"cannot read {video} as a video: {exc}") from exc
    with container:
        if not container.streams.video:
            raise TimeSliceError(f"{video} has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        for line in lines:
            check_in_frame(line, width, height)
        samplers = [_Sampler.along(x, width, height) for x in lines]
        rows: list[list[U8]] = [[] for _ in lines]
        kept: U8 | None = None
        kept_index = -1
        with _progress() as progress:
            task = progress.add_task(f"decoding {video.name}", total=stream.frames or None)
            for index, frame in enumerate(container.decode(stream)):
                rgb: U8 = np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
                for sampler, out in zip(samplers, rows, strict=True):
                    out.append(sampler.row(rgb))
                if index <= keep_frame:
                    kept, kept_index = rgb, index
                progress.advance(task)
    if kept is None:
        raise TimeSliceError(f"{video}: no frames could be decoded")
    return [np.stack(r) for r in rows], kept, kept_index


def with_ticks(slice_rgb: U8) -> Image.Image:
    """The time-slice with the frame-tick gutter on its left; rows stay one per frame."""
    frames, samples = slice_rgb.shape[:2]
    image = Image.new("RGB", (GUTTER + samples, frames), (0, 0, 0))
    image.paste(Image.fromarray(slice_rgb), (GUTTER, 0))
    draw = ImageDraw.Draw(image)
    for f in range(0, frames, 10):
        major = f % 50 == 0
        draw.line([(GUTTER - (14 if major else 6), f), (GUTTER - 1, f)], fill=(255, 255, 255))
        if major and f + 11 <= frames:
            draw.text((1, f + 1), str(f), fill=(255, 255, 0))
    return image


def draw_lines(frame: U8, lines: Sequence[Line], frame_index: int) -> Image.Image:
    """The frame with each line, a dot at its start and an arrow to its right-hand side."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), f"frame {frame_index}", fill=(255, 255, 0))
    for k, line in enumerate(lines):
        colour = _COLOURS[k % len(_COLOURS)]
        draw.line([(line.x0, line.y0), (line.x1, line.y1)], fill=colour, width=2)
        draw.ellipse([line.x0 - 4, line.y0 - 4, line.x0 + 4, line.y0 + 4], fill=colour)
        # Right-hand side with y down: the direction vector turned by +90 degrees.
        ux, uy = (line.x1 - line.x0) / line.length, (line.y1 - line.y0) / line.length
        nx, ny = -uy, ux
        mx, my = (line.x0 + line.x1) / 2, (line.y0 + line.y1) / 2
        tip = (mx + 24 * nx, my + 24 * ny)
        draw.line([(mx, my), tip], fill=colour, width=2)
        for turn in (2.6, -2.6):  # arrow head
            c, s = math.cos(turn), math.sin(turn)
            hx, hy = nx * c - ny * s, nx * s + ny * c
            draw.line([tip, (tip[0] + 8 * hx, tip[1] + 8 * hy)], fill=colour, width=2)
        draw.text((line.x0 + 6, line.y0 + 4), line.id, fill=colour)
        draw.text((tip[0] + 4, tip[1]), "L->R", fill=colour)
    return image


def run(video: Path, lines: Sequence[Line], out: Path, frame_index: int = 0) -> list[Path]:
    """Write the time-slices and the lines image; the paths written, lines image last."""
    ids = [x.id for x in lines]
    if len(set(ids)) != len(ids):
        raise TimeSliceError(f"line ids must be unique, got {ids}")
    slices, frame, frame_index = decode_slices(video, lines, frame_index)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for line, rgb in zip(lines, slices, strict=True):
        path = out / f"{video.stem}_{line.id}.png"
        with_ticks(rgb).save(path, optimize=True)
        written.append(path)
    path = out / f"{video.stem}_lines.png"
    draw_lines(frame, lines, frame_index).save(path, optimize=True)
    written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--video", type=Path, required=True, help="the clip to read")
    parser.add_argument(
        "--line",
        action="append",
        required=True,
        metavar="[ID=]x0,y0,x1,y1",
        help="a counting line in pixels of the clip's frame (repeat for more lines)",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument(
        "--frame", type=int, default=0, help="which frame to draw the lines on (default 0)"
    )
    args = parser.parse_args(argv)
    if args.frame < 0:
        parser.error("--frame must be >= 0")
    try:
        lines = [parse_line(text, i) for i, text in enumerate(args.line, start=1)]
        written = run(args.video, lines, args.out, args.frame)
    except TimeSliceError as exc:
        print(f"time_slice: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
