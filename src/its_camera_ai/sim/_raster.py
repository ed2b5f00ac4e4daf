"""Convex-polygon scan conversion into pixel fragments, vectorised across all polygons.

A pixel belongs to a polygon when its centre does (``ceil(x - 0.5)``..``floor(x - 0.5)``).
Each row of a convex polygon is the intersection of its edges' half-planes, so a row's span
is a max over left edges and a min over right edges; no per-edge range tests are needed.
Spans of every polygon are then expanded into flat pixel indices ("fragments") tagged with
the polygon id. Painter's algorithm is ``np.maximum.at`` of the ids into an id buffer: ids
are handed out far-to-near, so the largest id at a pixel is the nearest surface, whatever
order the fragments come in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Fragments", "fragments", "gather_px", "paint", "pixels", "scatter_px"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Fragments:
    """Covered pixels of polygons: ``idx`` (flat pixel index) and ``pid`` (polygon index),
    grouped by polygon in increasing order; ``bbox`` per polygon (r0, r1, c0, c1) inclusive,
    empty when r1 < r0."""

    idx: NDArray[np.int32]
    pid: NDArray[np.int32]
    start: I64  # fragments of polygon i are idx[start[i]:start[i + 1]]
    bbox: NDArray[np.int64]  # (P, 4)


def _rows(xy: F64, height: int) -> tuple[I64, I64, F64, F64]:
    """Row spans (pid, row, x_left, x_right) of convex polygons (P, K, 2)."""
    P = xy.shape[0]
    ys = xy[..., 1]
    r0 = np.clip(np.ceil(ys.min(1) - 0.5), 0, height).astype(np.int64)
    r1 = np.clip(np.floor(ys.max(1) - 0.5), -1, height - 1).astype(np.int64)
    n = np.maximum(r1 - r0 + 1, 0)
    R = int(n.sum())
    if R == 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0), np.zeros(0)
    ax, ay = xy[..., 0], xy[..., 1]
    bx = np.concatenate([ax[:, 1:], ax[:, :1]], axis=1)
    by = np.concatenate([ay[:, 1:], ay[:, :1]], axis=1)
    dx, dy = bx - ax, by - ay
    # Shoelace sign: which side of each edge the inside is on.
    area = (ax * by - bx * ay).sum(1)
    inward_x = -dy * np.where(area >= 0, 1.0, -1.0)[:, None]
    slope = dx / np.where(dy == 0, 1.0, dy)
    base = ax - ay * slope  # x where the edge's line meets y = 0
    left, right = inward_x > 0, inward_x < 0  # horizontal and padded edges are neither
    # Edge-major (K, P) layout: the reductions over edges become elementwise across rows.
    a_l = np.where(left, base, -np.inf).T.copy()
    s_l = np.where(left, slope, 0.0).T.copy()
    a_r = np.where(right, base, np.inf).T.copy()
    s_r = np.where(right, slope, 0.0).T.copy()
    pid = np.repeat(np.arange(P), n)
    first = np.repeat(np.cumsum(n) - n, n)
    row = np.arange(R) - first + r0[pid]
    yc = row + 0.5
    xl = a_l[:, pid]
    xl += yc * s_l[:, pid]
    xr = a_r[:, pid]
    xr += yc * s_r[:, pid]
    # Pairwise elementwise max/min: far faster than a reduction over a short axis.
    lo, hi = xl[0], xr[0]
    for k in range(1, xl.shape[0]):
        np.maximum(lo, xl[k], out=lo)
        np.minimum(hi, xr[k], out=hi)
    xl, xr = lo, hi
    return pid, row, xl, xr


def fragments(xy: F64, nverts: NDArray[np.integer], height: int, width: int) -> Fragments:
    """Pixels covered by convex polygons ``xy`` (P, 8, 2); ``nverts`` real vertices each
    (the rest repeat the last one)."""
    P = xy.shape[0]
    quad = nverts <= 4
    parts = []
    for sel, k in ((np.flatnonzero(quad), 4), (np.flatnonzero(~quad), xy.shape[1])):
        if sel.size:
            pid, row, xl, xr = _rows(xy[sel, :k], height)
            parts.append((sel[pid], row, xl, xr))
    bbox = np.tile(np.array([height, -1, width, -1], np.int64), (P, 1))
    if not parts:
        e = np.zeros(0, np.int32)
        return Fragments(e, e, np.zeros(P + 1, np.int64), bbox)
    pid = np.concatenate([p[0] for p in parts])
    row = np.concatenate([p[1] for p in parts])
    xl = np.concatenate([p[2] for p in parts])
    xr = np.concatenate([p[3] for p in parts])
    if len(parts) > 1:
        order = np.argsort(pid, kind="stable")
        pid, row, xl, xr = pid[order], row[order], xl[order], xr[order]
    with np.errstate(invalid="ignore"):
        c0 = np.clip(np.ceil(xl - 0.5), 0, width).astype(np.int64)
        c1 = np.clip(np.floor(xr - 0.5), -1, width - 1).astype(np.int64)
    length = np.maximum(c1 - c0 + 1, 0)
    keep = length > 0
    pid, row, c0, c1, length = pid[keep], row[keep], c0[keep], c1[keep], length[keep]
    ends = np.cumsum(length)
    total = int(ends[-1]) if ends.size else 0
    # Ragged expansion: each run starts at row*W + c0 and counts up by one per pixel.
    # int32 throughout: half the memory traffic, and frames stay far below 2^31 pixels.
    idx = np.repeat((row * width + c0 - (ends - length)).astype(np.int32), length)
    idx += _iota(total)
    runs = np.searchsorted(pid, np.arange(P + 1))  # runs of polygon i: runs[i]:runs[i+1]
    start = np.concatenate([[0], ends])[runs]
    has = np.flatnonzero(runs[1:] > runs[:-1])
    if has.size:
        first = runs[has]
        bbox[has, 0] = np.minimum.reduceat(row, first)
        bbox[has, 1] = np.maximum.reduceat(row, first)
        bbox[has, 2] = np.minimum.reduceat(c0, first)
        bbox[has, 3] = np.maximum.reduceat(c1, first)
    return Fragments(idx, np.repeat(pid.astype(np.int32), length), start, bbox)


_IOTA = [np.arange(1 << 16, dtype=np.int32)]


def _iota(n: int) -> NDArray[np.int32]:
    """0..n-1 from a cached, growing buffer (a fresh large arange costs page faults)."""
    if n > _IOTA[0].size:
        _IOTA[0] = np.arange(max(n, 2 * _IOTA[0].size), dtype=np.int32)
    return _IOTA[0][:n]


def paint(buf: NDArray[np.int32], frags: Fragments, ids: NDArray[np.int32]) -> None:
    """Painter's algorithm: ``buf`` (flat) keeps the largest id of the fragments at a pixel."""
    if frags.idx.size:
        np.maximum.at(buf, frags.idx, ids[frags.pid])


def pixels(image: NDArray[np.uint8]) -> NDArray[np.void]:
    """A contiguous (H, W, 3) uint8 image as a flat array of 3-byte pixels.

    Fancy indexing moves whole pixels in one item copy; on (N, 3) rows numpy takes a much
    slower generic path, which made compositing the costliest step of a frame.
    """
    return image.reshape(-1).view("V3")


def gather_px(px: NDArray[np.void], idx: NDArray[np.integer]) -> NDArray[np.uint8]:
    """Pixels at flat indices as an (N, 3) uint8 array."""
    return np.take(px, idx).view(np.uint8).reshape(-1, 3)


def scatter_px(px: NDArray[np.void], idx: NDArray[np.integer], rgb: NDArray[np.uint8]) -> None:
    """Write (N, 3) uint8 colours to flat pixel indices."""
    np.put(px, idx, np.ascontiguousarray(rgb).reshape(-1).view("V3"))
