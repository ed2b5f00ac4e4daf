"""Per-frame image effects around road users: shadows, headlight beams, glows, motion blur.

They are approximations chosen for cost: a shadow is one darkened ground quad per user, a beam
two nested brightened ground quads (the overlap reads as falloff), a glow an additive sprite,
and motion blur an average of shifted copies of a user's box along its image motion.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.sim._camera import Camera
from its_camera_ai.sim._conditions import Look, glow_sprite
from its_camera_ai.sim._raster import fragments

__all__ = ["MAX_SMEAR_PX", "add_glow", "blur_box", "ground_quads", "image_motion", "lut"]

F64 = NDArray[np.float64]
U8 = NDArray[np.uint8]
_MOTOR = frozenset(("car", "truck", "bus", "motorcycle"))


def lut(gain: float, offset: float) -> U8:
    x = np.arange(256, dtype=np.float32)
    out: U8 = np.clip(x * gain + offset, 0, 255).astype(np.uint8)
    return out


def add_glow(
    img: U8, u: float, v: float, radius: int, color: tuple[float, float, float], strength: float
) -> None:
    """Additive halo around a light, clipped to the image."""
    H, W = img.shape[:2]
    cu, cv = int(u), int(v)
    x0, x1 = max(cu - radius, 0), min(cu + radius + 1, W)
    y0, y1 = max(cv - radius, 0), min(cv + radius + 1, H)
    if x0 >= x1 or y0 >= y1:
        return
    spr = glow_sprite(radius)[
        y0 - cv + radius : y1 - cv + radius, x0 - cu + radius : x1 - cu + radius
    ]
    add = spr[..., None] * (np.asarray(color, np.float32) * 255.0 * strength)
    region = img[y0:y1, x0:x1]
    add += region
    np.minimum(add, 255.0, out=add)
    region[:] = add.astype(np.uint8)


def ground_quads(
    look: Look, xy: F64, yaw: F64, dims: F64, classes: list[str], beams: bool
) -> tuple[F64, NDArray[np.int8]]:
    """Ground quads (Q, 4, 2) in metres and their kinds: 0 shadow, 1 outer beam, 2 inner."""
    quads: list[F64] = []
    kinds: list[NDArray[np.int8]] = []
    fwd = np.column_stack([np.cos(yaw), np.sin(yaw)])
    left = np.column_stack([-fwd[:, 1], fwd[:, 0]])
    hl, hw = dims[:, 0:1] / 2, dims[:, 1:2] / 2
    sun = look.sun_dir
    if look.shadow > 0 and sun[2] > 0.05:
        off = -np.array(sun[:2]) / sun[2]
        off *= min(1.0, 2.5 / (float(np.linalg.norm(off)) + 1e-9))
        c = np.stack([fwd * hl + left * hw, fwd * hl - left * hw, -fwd * hl - left * hw,
                      -fwd * hl + left * hw], axis=1) * 1.06  # fmt: skip
        # Corners away from the sun stretch with height; near ones barely move.
        far = (c @ off) > 0
        c += off[None, None, :] * (dims[:, 2:3, None] * np.where(far, 0.6, 0.1)[..., None])
        quads.append(c + xy[:, None, :])
        kinds.append(np.zeros(len(xy), np.int8))
    if beams:
        m = np.array([c in _MOTOR for c in classes], bool)
        f, lf, w = fwd[m], left[m], hw[m]
        p0 = xy[m] + f * (hl[m] + 0.3)
        # Two nested pools per vehicle: the inner one brighter, a cheap falloff.
        for kind, reach, spread in ((1, 14.0, 3.4), (2, 7.0, 2.0)):
            q = np.stack([p0 + lf * w * 0.9, p0 - lf * w * 0.9,
                          p0 + f * reach - lf * w * spread, p0 + f * reach + lf * w * spread],
                         axis=1)  # fmt: skip
            quads.append(q)
            kinds.append(np.full(len(q), kind, np.int8))
    if not quads:
        return np.zeros((0, 4, 2)), np.zeros(0, np.int8)
    return np.concatenate(quads), np.concatenate(kinds)


def apply_ground(
    px: NDArray[np.void],
    sources: tuple[NDArray[np.void], ...],
    bare: NDArray[np.bool_],
    cam: Camera,
    quads: F64,
    kinds: NDArray[np.int8],
) -> None:
    """Copy each quad's pixels from the background pre-lit for its kind (darkened for
    shadows, brightened for beams): one gather per pixel, and overlaps never stack up.
    Only bare ground takes them, not scenery standing on it."""
    if not len(quads):
        return
    pts = cam.ground_to_image(quads)
    _, z = cam.project(np.concatenate([quads, np.zeros((*quads.shape[:2], 1))], axis=2))
    pts = np.concatenate([pts, np.repeat(pts[:, -1:], 4, axis=1)], axis=1)
    pts[~(z > 0.5).all(1)] = -1e6
    fr = fragments(pts, np.full(len(quads), 4), cam.height, cam.width)
    # Quads come grouped by kind, so each kind's fragments are one contiguous slice.
    bounds = fr.start[np.searchsorted(kinds, np.arange(4))]
    for k in (0, 1, 2):  # in this order: inner beams over outer ones
        sel = fr.idx[bounds[k] : bounds[k + 1]]
        sel = sel[bare[sel]]
        if sel.size:
            np.put(px, sel, np.take(sources[k], sel))


# Limits of the motion blur of one user (see ``image_motion``).
MAX_SMEAR_PX = 24.0
MIN_DEPTH_M = 1.0


def image_motion(cam: Camera, xy: F64, yaw: F64, height: F64, speed: F64, exposure: float) -> F64:
    """Pixel displacement (du, dv) of each user's centre during the exposure.

    A centre near or behind the camera plane (a user passing right under the camera) has no
    meaningful image motion: it gets none. Smears are capped at ``MAX_SMEAR_PX``; a longer
    one would only be more ghosted copies of the box.
    """
    p1 = np.column_stack([xy, height / 2])
    p0 = p1.copy()
    p0[:, 0] -= np.cos(yaw) * speed * exposure
    p0[:, 1] -= np.sin(yaw) * speed * exposure
    uv1, z1 = cam.project(p1)
    uv0, z0 = cam.project(p0)
    d = uv1 - uv0
    d[(z0 < MIN_DEPTH_M) | (z1 < MIN_DEPTH_M) | ~np.isfinite(d).all(axis=1)] = 0.0
    length = np.hypot(d[:, 0], d[:, 1])
    d *= np.minimum(1.0, MAX_SMEAR_PX / np.maximum(length, 1e-9))[:, None]
    return d


def blur_box(frame: U8, box: tuple[float, float, float, float], du: float, dv: float) -> None:
    """Average shifted copies of a box (plus margin) along (du, dv): a moving user's smear."""
    length = math.hypot(du, dv)
    if not length >= 2.0:  # below two pixels a smear is invisible after encoding
        return
    taps = min(math.ceil(length) + 1, 5)
    H, W = frame.shape[:2]
    m = math.ceil(length / 2) + 1
    x0, y0 = max(int(box[0]) - m, 0), max(int(box[1]) - m, 0)
    x1, y1 = min(int(box[2]) + m, W), min(int(box[3]) + m, H)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    bx0, by0 = max(x0 - m, 0), max(y0 - m, 0)
    bx1, by1 = min(x1 + m, W), min(y1 + m, H)
    big = np.pad(
        frame[by0:by1, bx0:bx1],
        ((m - (y0 - by0), m - (by1 - y1)), (m - (x0 - bx0), m - (bx1 - x1)), (0, 0)),
        mode="edge",
    ).astype(np.uint16)
    h, w = y1 - y0, x1 - x0
    acc = np.zeros((h, w, 3), np.uint16)
    for i in range(taps):
        f = i / (taps - 1) - 0.5
        sy, sx = m + round(f * dv), m + round(f * du)
        acc += big[sy : sy + h, sx : sx + w]
    frame[y0:y1, x0:x1] = (acc // taps).astype(np.uint8)
