"""On-screen display: the camera name and date/time stamp a camera burns into its picture.

A built-in 5x7 bitmap font (printable ASCII, lower case drawn as upper case, as camera OSDs
do) scaled nearest-neighbour to the glyph height, so nothing is downloaded and no font
library is needed. The text is drawn into the frame in place, with numpy only: a boolean
mask of the text block, an optional outline (the mask dilated) or dark box, then the colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.sim._config import OsdConfig
from its_camera_ai.sim._raster import pixels

__all__ = ["draw_osd"]

I64 = NDArray[np.int64]
U8 = NDArray[np.uint8]
Mask = NDArray[np.bool_]

# Rows top to bottom, "#" lit; the sixth column of every cell is the gap to the next glyph.
_GLYPHS: dict[str, str] = {
    " ": "..... ..... ..... ..... ..... ..... .....",
    "!": "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..",
    '"': ".#.#. .#.#. .#.#. ..... ..... ..... .....",
    "#": ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.",
    "$": "..#.. .#### #.#.. .###. ..#.# ####. ..#..",
    "%": "##... ##..# ...#. ..#.. .#... #..## ...##",
    "&": ".##.. #..#. #.#.. .#... #.#.# #..#. .##.#",
    "'": "..#.. ..#.. .#... ..... ..... ..... .....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "*": "..... ..#.. #.#.# .###. #.#.# ..#.. .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    "-": "..... ..... ..... ##### ..... ..... .....",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    ";": "..... .##.. .##.. ..... .##.. ..#.. .#...",
    "<": "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    "=": "..... ..... ##### ..... ##### ..... .....",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    "@": ".###. #...# ....# .##.# #.#.# #.#.# .###.",
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "###.. #..#. #...# #...# #...# #..#. ###..",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "[": ".###. .#... .#... .#... .#... .#... .###.",
    "\\": "..... #.... .#... ..#.. ...#. ....# .....",
    "]": ".###. ...#. ...#. ...#. ...#. ...#. .###.",
    "^": "..#.. .#.#. #...# ..... ..... ..... .....",
    "_": "..... ..... ..... ..... ..... ..... #####",
    "`": ".#... ..#.. ...#. ..... ..... ..... .....",
    "{": "...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.",
    "|": "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "}": ".#... ..#.. ..#.. ...#. ..#.. ..#.. .#...",
    "~": "..... ..... .#... #.#.# ...#. ..... .....",
}
_ROWS, _COLS = 7, 6  # a glyph cell, gap column included


def _font() -> Mask:
    font = np.zeros((128, _ROWS, _COLS), np.bool_)
    for ch, rows in _GLYPHS.items():
        font[ord(ch), :, :5] = [[c == "#" for c in row] for row in rows.split()]
    return font


_FONT = _font()


def _pixel(rgb: tuple[int, int, int]) -> NDArray[np.void]:
    """One 3-byte pixel, to write with ``np.put`` into a ``pixels`` view."""
    out: NDArray[np.void] = np.array(rgb, np.uint8).view("V3")
    return out


_INK = {"white": _pixel((255, 255, 255)), "yellow": _pixel((255, 230, 30))}
_BLACK = _pixel((0, 0, 0))


def _line(text: str, height: int) -> Mask:
    """One line of text as a (height, n * cell width) mask, scaled nearest-neighbour."""
    codes = np.frombuffer(text.upper().encode("ascii"), np.uint8)
    bitmap = _FONT[codes].transpose(1, 0, 2).reshape(_ROWS, -1)
    cell = max(round(height * _COLS / _ROWS), 1)
    rows = np.arange(height) * _ROWS // height
    cols = np.arange(codes.size * cell) * _COLS // cell
    out: Mask = bitmap[rows[:, None], cols[None, :]]
    return out


def _block(lines: list[str], height: int, pad: int, right: bool) -> Mask:
    """The text block: lines stacked with a gap, aligned to the corner's side, padded."""
    masks = [_line(t, height) for t in lines]
    gap = max(round(height * 0.35), 1)
    width = max(m.shape[1] for m in masks)
    block = np.zeros((len(masks) * (height + gap) - gap + 2 * pad, width + 2 * pad), np.bool_)
    for i, m in enumerate(masks):
        y, x = pad + i * (height + gap), pad + (width - m.shape[1] if right else 0)
        block[y : y + height, x : x + m.shape[1]] = m
    return block


def _dilate(mask: Mask, r: int) -> Mask:
    """Square dilation by ``r`` pixels, separably (rows then columns)."""
    out = mask.copy()
    for k in range(1, r + 1):
        out[k:] |= mask[:-k]
        out[:-k] |= mask[k:]
    rows = out.copy()
    for k in range(1, r + 1):
        out[:, k:] |= rows[:, :-k]
        out[:, :-k] |= rows[:, k:]
    return out


@dataclass(frozen=True, slots=True)
class _Overlay:
    """Where one OSD text lands in a frame: flat pixel indices, and the dark box."""

    ink: I64  # the glyphs
    edge: I64  # their outline (empty unless background is "outline")
    box: tuple[int, int, int, int]  # rows y0:y1, columns x0:x1 of the text block


# The label never changes and the stamp once a second, so a frame mostly reuses the last
# layout and only writes its pixels.
@lru_cache(maxsize=32)
def _overlay(
    lines: tuple[str, ...], height: int, corner: str, background: str, H: int, W: int
) -> _Overlay:
    edge = max(round(height / 12), 1)  # outline width
    pad = max(round(height * 0.3), 2) if background == "box" else edge
    top, right = corner.startswith("top"), corner.endswith("right")
    text = _block(list(lines), height, pad, right)
    margin = max(round(height * 0.5), 2)
    y0 = margin if top else H - margin - text.shape[0]
    x0 = W - margin - text.shape[1] if right else margin
    # Text too big for the frame is cut off at the far side, as a camera would.
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = max(min(y0 + text.shape[0], H), ys), max(min(x0 + text.shape[1], W), xs)
    text = text[ys - y0 : ye - y0, xs - x0 : xe - x0]
    rim = _dilate(text, edge) & ~text if background == "outline" else np.zeros_like(text)

    def flat(mask: Mask) -> I64:
        f = np.flatnonzero(mask)
        r = f // max(mask.shape[1], 1)
        out: I64 = (r + ys) * W + (f - r * mask.shape[1] + xs)
        return out

    return _Overlay(flat(text), flat(rim), (ys, ye, xs, xe))


def draw_osd(frame: U8, osd: OsdConfig, time_s: float, scale: float = 1.0) -> None:
    """Burn the OSD into a contiguous RGB frame in place; ``scale``: rendered / configured
    height, so the text keeps its share of the picture at any rendering size."""
    if not frame.flags.c_contiguous:
        raise ValueError("draw_osd needs a C-contiguous frame")
    height = max(round(osd.height_px * scale), 1)
    lines = [osd.label] if osd.label.strip() else []
    if osd.timestamp:
        # The stamp ticks once per whole simulated second, like a camera clock.
        now = osd.start + timedelta(seconds=math.floor(time_s + 1e-6))
        lines.append(now.strftime("%Y-%m-%d %H:%M:%S"))
    H, W = frame.shape[:2]
    ov = _overlay(tuple(lines), height, osd.corner, osd.background, H, W)
    if osd.background == "box":
        y0, y1, x0, x1 = ov.box
        region = frame[y0:y1, x0:x1]
        np.right_shift(region, 2, out=region)  # a translucent dark box: a quarter of the light
    px = pixels(frame)
    np.put(px, ov.edge, _BLACK)
    np.put(px, ov.ink, _INK[osd.color])
