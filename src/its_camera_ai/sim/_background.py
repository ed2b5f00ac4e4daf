"""The static part of a frame, rendered once per camera, resolution and condition.

Ground pixels are ray-cast onto z = 0 and shaded by material (asphalt, paint, kerb, sidewalk,
grass) from world-space textures; markings are box-filtered over each pixel's ground
footprint so distant dashes fade to grey instead of shimmering. Sky is a gradient with clouds.
Scenery (buildings, trees, lamps, signal heads) is rasterised with the same scan converter as
vehicles, and its per-pixel depth is kept so that vehicles behind a tree are hidden by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.sim._camera import Camera
from its_camera_ai.sim._conditions import Look, atmosphere, shade, to_u8
from its_camera_ai.sim._effects import add_glow
from its_camera_ai.sim._raster import fragments, paint
from its_camera_ai.sim._scenery import Box3
from its_camera_ai.sim._world import World

__all__ = ["Background", "Textures", "Veil", "render_background"]

F32 = NDArray[np.float32]
Vec3 = tuple[float, float, float]
_ALBEDO = {
    "road": (0.34, 0.34, 0.35),
    "sidewalk": (0.6, 0.59, 0.56),
    "kerb": (0.72, 0.72, 0.7),
    "path": (0.55, 0.5, 0.44),
    "white": (0.9, 0.9, 0.87),
    "yellow": (0.9, 0.75, 0.2),
}
_GRASS = (0.3, 0.42, 0.19)


class Textures:
    """Tileable value noise in [0, 1], sampled by world coordinates (nearest texel)."""

    N = 256

    def __init__(self, rng: np.random.Generator) -> None:
        acc = np.zeros((self.N, self.N), np.float32)
        total = 0.0
        for period, weight in ((4, 1.0), (8, 0.6), (16, 0.4), (32, 0.3), (64, 0.2), (128, 0.15)):
            g = rng.random((period, period)).astype(np.float32)
            acc += weight * _upsample(g, self.N)
            total += weight
        acc /= total
        self.noise = (acc - acc.min()) / (acc.max() - acc.min())
        self.fine = rng.random((self.N, self.N)).astype(np.float32)

    def sample(self, tex: F32, u: F32, v: F32) -> F32:
        n = self.N
        iu = np.floor(u * n).astype(np.int64) % n
        iv = np.floor(v * n).astype(np.int64) % n
        out: F32 = tex[iv, iu]
        return out


def _upsample(g: F32, n: int) -> F32:
    """Bilinear, wrapping, so the texture tiles without seams."""
    p = g.shape[0]
    t = (np.arange(n, dtype=np.float32) + 0.5) * p / n - 0.5
    i0 = np.floor(t).astype(np.int64)
    f = t - i0
    i0 %= p
    i1 = (i0 + 1) % p
    rows = g[i0] * (1 - f)[:, None] + g[i1] * f[:, None]
    out: F32 = (rows[:, i0] * (1 - f)[None, :] + rows[:, i1] * f[None, :]).astype(np.float32)
    return out


@dataclass(frozen=True, slots=True)
class Veil:
    """Veiling glare: a lift towards white that is strongest around the sun's image."""

    strength: float
    u: float
    v: float
    scale: float

    def at(self, u: NDArray[np.floating], v: NDArray[np.floating]) -> F32:
        if self.strength <= 0:
            return np.zeros(np.shape(u), np.float32)
        r = np.hypot(u - self.u, v - self.v)
        out: F32 = (self.strength * (0.25 + 0.75 * np.exp(-r / self.scale))).astype(np.float32)
        return out


@dataclass(frozen=True, slots=True)
class Background:
    image: NDArray[np.uint8]  # (H, W, 3)
    static_depth: F32  # (H * W,) camera depth of scenery, inf where there is none
    static_boxes: NDArray[np.float64]  # (N, 5): r0, r1, c0, c1, nearest depth
    veil: Veil
    # Signal lamps in view: (u, v, radius px, group, slot 0 red / 1 amber / 2 green).
    signal_lamps: tuple[tuple[float, float, float, str, int], ...]


def _box_faces(
    b: Box3,
) -> list[tuple[list[tuple[float, float, float]], tuple[float, float, float]]]:
    x0, x1 = b.x - b.sx / 2, b.x + b.sx / 2
    y0, y1 = b.y - b.sy / 2, b.y + b.sy / 2
    z0, z1 = b.z0, b.z0 + b.sz
    return [
        ([(x0, y0, z1), (x1, y0, z1), (x1, y1, z1), (x0, y1, z1)], (0.0, 0.0, 1.0)),
        ([(x1, y0, z0), (x1, y1, z0), (x1, y1, z1), (x1, y0, z1)], (1.0, 0.0, 0.0)),
        ([(x0, y0, z0), (x0, y1, z0), (x0, y1, z1), (x0, y0, z1)], (-1.0, 0.0, 0.0)),
        ([(x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)], (0.0, 1.0, 0.0)),
        ([(x0, y0, z0), (x1, y0, z0), (x1, y0, z1), (x0, y0, z1)], (0.0, -1.0, 0.0)),
    ]


def _windows(
    b: Box3, normal: tuple[float, float, float], lit: bool, rng: np.random.Generator
) -> list[tuple[list[tuple[float, float, float]], tuple[float, float, float]]]:
    out = []
    along_x = normal[0] == 0.0
    span = b.sx if along_x else b.sy
    fixed = (
        (b.y + normal[1] * (b.sy / 2 + 0.02)) if along_x else (b.x + normal[0] * (b.sx / 2 + 0.02))
    )
    centre = b.x if along_x else b.y
    z = 1.2
    while z + 1.6 < b.sz - 0.4:
        k = -span / 2 + 1.2
        while k + 1.3 < span / 2 - 0.6:
            a, c = centre + k, centre + k + 1.3
            if along_x:
                pts = [(a, fixed, z), (c, fixed, z), (c, fixed, z + 1.6), (a, fixed, z + 1.6)]
            else:
                pts = [(fixed, a, z), (fixed, c, z), (fixed, c, z + 1.6), (fixed, a, z + 1.6)]
            on = lit and rng.random() < 0.35
            out.append((pts, (1.0, 0.82, 0.5) if on else (0.0, 0.0, 0.0)))
            k += 3.0
        z += 3.3
    return out


def render_background(
    world: World, cam: Camera, look: Look, tex: Textures, rng: np.random.Generator
) -> Background:
    H, W = cam.height, cam.width
    f = cam.focal
    u = np.arange(W, dtype=np.float32) + 0.5
    v = np.arange(H, dtype=np.float32) + 0.5
    Rt = cam.R.T.astype(np.float32)
    a = (u - cam.K[0, 2]) / f
    b = (v - cam.K[1, 2]) / f
    d = [a[None, :] * Rt[i, 0] + b[:, None] * Rt[i, 1] + Rt[i, 2] for i in range(3)]
    norm = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    ground = d[2] < -1e-4
    s = np.where(ground, -float(cam.C[2]) / np.where(ground, d[2], -1.0), 0.0)
    X = (cam.C[0] + s * d[0]).astype(np.float32)
    Y = (cam.C[1] + s * d[1]).astype(np.float32)
    dist = (s * norm).astype(np.float32)
    # Ground metres per pixel (worst axis): grows with distance and with grazing angle.
    fp = dist / (f * np.maximum(-d[2] / norm, 0.02))
    img = np.empty((H, W, 3), np.float32)
    _sky(img, d, norm, look, tex)
    gi = np.flatnonzero(ground)
    gx, gy, gfp = X.ravel()[gi], Y.ravel()[gi], fp.ravel()[gi]
    alb, kind = _ground_albedo(world, gx, gy, gfp, tex, look)
    light = np.full(gi.size, look.ambient + look.sun * max(look.sun_dir[2], 0.0), np.float32)
    if look.lamps:
        for lx, ly, lz in world.scenery.lamps:
            r2 = (gx - lx) ** 2 + (gy - ly) ** 2
            near = r2 < 900.0
            light[near] += 0.9 * (lz**3 / (r2[near] + lz * lz) ** 1.5)
    if look.shadow > 0 and look.sun_dir[2] > 0.05:
        k = 1.0 / look.sun_dir[2]
        for ball in world.scenery.balls:
            sx = ball.x - look.sun_dir[0] * k * ball.z
            sy = ball.y - look.sun_dir[1] * k * ball.z
            r2 = (gx - sx) ** 2 + (gy - sy) ** 2
            light[r2 < ball.r**2] *= 1.0 - look.shadow * 0.9
    col = alb * light[:, None] * np.asarray(look.tint, np.float32)
    if look.wet > 0:
        # Wet asphalt mirrors the sky, more so at grazing angles (Fresnel-like).
        graze = np.clip(1.0 - (-d[2] / norm).ravel()[gi] * 3.0, 0.0, 1.0) * (kind >= 2)
        col += look.wet * 0.35 * graze[:, None] * np.asarray(look.sky_horizon, np.float32)
    col = atmosphere(col, dist.ravel()[gi], look)
    img.reshape(-1, 3)[gi] = col
    depth = _scenery(img, world, cam, look, tex, rng)
    lamps = _signal_lamps(world, cam)
    veil = _veil(cam, look)
    if veil.strength > 0:
        lift = veil.at(u[None, :], v[:, None])[..., None]
        img += (1.0 - img).clip(0, None) * lift
    out = to_u8(img)
    if look.lamps:
        _lamp_glows(out, world, cam, look)
    if look.sun > 0.2:
        _sun(out, cam, look, depth)
    boxes = _static_boxes(depth, H, W)
    return Background(out, depth, boxes, veil, lamps)


def _sky(img: F32, d: list[F32], norm: F32, look: Look, tex: Textures) -> None:
    el = np.clip(d[2] / norm, 0.0, 1.0)
    t = (1.0 - np.exp(-el * 5.0))[..., None]
    top, hor = np.asarray(look.sky_top, np.float32), np.asarray(look.sky_horizon, np.float32)
    img[:] = hor + (top - hor) * t
    if look.name in ("day", "dusk", "glare", "rain"):
        up = np.maximum(d[2], 1e-3)
        cu, cv = d[0] / up * 0.05, d[1] / up * 0.05
        c = tex.sample(tex.noise, cu.astype(np.float32), cv.astype(np.float32))
        cloud = np.clip((c - 0.5) * 3.0, 0.0, 1.0)[..., None] * (el[..., None] > 0.0)
        white = np.asarray(look.sky_horizon, np.float32) * 1.05
        img[:] = img * (1 - 0.6 * cloud) + white * 0.6 * cloud
    if look.extinction > 0.005:
        img[:] = np.asarray(look.haze, np.float32)


def _ground_albedo(
    world: World, gx: F32, gy: F32, fp: F32, tex: Textures, look: Look
) -> tuple[F32, NDArray[np.int8]]:
    n = gx.size
    detail = np.clip(1.0 - fp / 0.25, 0.0, 1.0)
    coarse = tex.sample(tex.noise, gx / 23.0, gy / 23.0)
    fine = tex.sample(tex.fine, gx / 12.8, gy / 12.8)
    grain = (fine - 0.5) * detail
    kind = np.zeros(n, np.int8)  # 0 grass
    codes = {"sidewalk": 1, "kerb": 2, "road": 3, "path": 4}
    for r in world.surfaces:
        inside = (gx >= r.x0) & (gx < r.x1) & (gy >= r.y0) & (gy < r.y1)
        kind[inside] = codes[r.kind]
    alb = np.empty((n, 3), np.float32)
    tint = (0.8 + 0.4 * coarse + 0.25 * grain)[:, None]
    alb[:] = np.asarray(_GRASS, np.float32) * tint
    for name, code in codes.items():
        sel = kind == code
        base = np.asarray(_ALBEDO[name], np.float32)
        var = 0.9 + 0.2 * coarse[sel] + (0.3 if name == "road" else 0.12) * grain[sel]
        alb[sel] = base * var[:, None]
    road = kind == 3
    if look.wet > 0:
        alb[road] *= 0.6
    # Markings: exact box filter of a paint strip over the pixel footprint, per axis.
    ri = np.flatnonzero(road | (kind == 2))
    rx, ry, rfp = gx[ri], gy[ri], np.maximum(fp[ri], 1e-3)
    for m in world.markings:
        near = (rx > m.x0 - rfp) & (rx < m.x1 + rfp) & (ry > m.y0 - rfp) & (ry < m.y1 + rfp)
        k = np.flatnonzero(near)
        if k.size == 0:
            continue
        x, y, w = rx[k], ry[k], rfp[k]
        cx = np.clip(np.minimum(x + w / 2, m.x1) - np.maximum(x - w / 2, m.x0), 0, None) / w
        cy = np.clip(np.minimum(y + w / 2, m.y1) - np.maximum(y - w / 2, m.y0), 0, None) / w
        cov = np.clip(cx, 0, 1) * np.clip(cy, 0, 1)
        if m.dash is not None:
            dash, gap = m.dash
            period = dash + gap
            along = x if (m.x1 - m.x0) >= (m.y1 - m.y0) else y
            ph = np.mod(along, period)
            on = np.clip(np.minimum(ph + w / 2, dash) - np.maximum(ph - w / 2, 0.0), 0, None) / w
            blend = np.clip(w / period, 0.0, 1.0)
            cov *= np.clip(on, 0, 1) * (1 - blend) + (dash / period) * blend
        cov *= 0.85 + 0.15 * coarse[ri[k]]
        paint_col = np.asarray(_ALBEDO[m.kind], np.float32)
        idx = ri[k]
        alb[idx] = alb[idx] * (1 - cov[:, None]) + paint_col * cov[:, None]
    return alb, kind


@dataclass(slots=True)
class _Polygons:
    """Scenery polygons in world space with what shading needs, in the order they were added
    (the order that breaks depth ties)."""

    points: list[list[Vec3]] = field(default_factory=list)
    normals: list[Vec3] = field(default_factory=list)
    colors: list[Vec3] = field(default_factory=list)
    dists: list[float] = field(default_factory=list)  # camera distance of the whole object
    emissive: list[bool] = field(default_factory=list)
    textured: list[bool] = field(default_factory=list)

    def add(
        self,
        pts: list[Vec3],
        normal: Vec3,
        color: Vec3,
        dist: float,
        emissive: bool,
        textured: bool,
    ) -> None:
        self.points.append(pts)
        self.normals.append(normal)
        self.colors.append(color)
        self.dists.append(dist)
        self.emissive.append(emissive)
        self.textured.append(textured)


def _scenery(
    img: F32, world: World, cam: Camera, look: Look, tex: Textures, rng: np.random.Generator
) -> F32:
    """Draw the scenery over ``img``, far to near; returns its camera depth per pixel."""
    polys = _Polygons()
    _add_boxes(polys, world, cam, look.name in ("night", "dusk"), rng)
    _add_balls(polys, world, cam)
    if not polys.points:
        return np.full(cam.height * cam.width, np.inf, np.float32)
    order = np.argsort(-np.asarray(polys.dists), kind="stable")
    buf = _rasterise(polys.points, order, cam)
    return _shade_scenery(img, buf, polys, order, cam, look, tex)


def _add_boxes(
    polys: _Polygons, world: World, cam: Camera, lit_windows: bool, rng: np.random.Generator
) -> None:
    """The faces of boxes (buildings, poles) turned towards the camera, windows on buildings."""
    C = cam.C
    for bx in world.scenery.boxes:
        dcam = math.dist((bx.x, bx.y, bx.z0 + bx.sz / 2), C)
        for pts, n in _box_faces(bx):
            p0 = np.asarray(pts[0])
            if np.dot(np.asarray(n), C - p0) <= 0:
                continue
            polys.add(pts, n, bx.color, dcam, False, bx.kind == "building")
            if bx.kind == "building" and n[2] == 0.0:
                for wpts, wcol in _windows(bx, n, lit_windows, rng):
                    glow = wcol != (0.0, 0.0, 0.0)
                    polys.add(
                        wpts, n, wcol if glow else (0.16, 0.2, 0.26), dcam - 0.01, glow, False
                    )


def _add_balls(polys: _Polygons, world: World, cam: Camera) -> None:
    """Tree crowns: an octagon facing the camera each."""
    C = cam.C
    for ball in world.scenery.balls:
        centre = np.array([ball.x, ball.y, ball.z])
        view = centre - C
        dc = float(np.linalg.norm(view))
        if dc < ball.r + 0.5:
            continue
        e1 = np.cross(view, [0.0, 0.0, 1.0])
        e1 /= np.linalg.norm(e1) + 1e-12
        e2 = np.cross(e1, view / dc)
        ang = np.arange(8) * (math.pi / 4)
        ring = centre + ball.r * (np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2)
        polys.add([tuple(p) for p in ring.tolist()], (0.0, 0.0, 1.0), ball.color, dc, False, True)


def _rasterise(points: list[list[Vec3]], order: NDArray[np.intp], cam: Camera) -> NDArray[np.int32]:
    """Id buffer (H * W): 1 + the position in ``order`` of the polygon on top, 0 for none."""
    H, W = cam.height, cam.width
    verts = np.zeros((len(points), 8, 3))
    nv = np.zeros(len(points), np.int64)
    for j, i in enumerate(order):
        pts = points[i]
        verts[j, : len(pts)] = pts
        verts[j, len(pts) :] = pts[-1]
        nv[j] = len(pts)
    xy, z = cam.project(verts)
    ok = (z > 0.3).all(1)
    xy[~ok] = -1e6  # behind the camera: nothing to draw
    fr = fragments(xy, nv, H, W)
    buf = np.zeros(H * W, np.int32)
    paint(buf, fr, np.arange(1, len(points) + 1, dtype=np.int32))
    return buf


def _shade_scenery(
    img: F32,
    buf: NDArray[np.int32],
    polys: _Polygons,
    order: NDArray[np.intp],
    cam: Camera,
    look: Look,
    tex: Textures,
) -> F32:
    """Light, texture and fog the covered pixels into ``img``; returns the depth per pixel."""
    H, W = cam.height, cam.width
    o = order
    base = np.asarray(polys.colors, np.float32)[o]
    nrm = np.asarray(polys.normals, np.float32)[o]
    dd = np.asarray(polys.dists, np.float32)[o]
    emit = np.asarray(polys.emissive)[o]
    col = shade(base, nrm, look, 0.0)
    col[emit] = base[emit] * (0.9 if look.name == "night" else 0.6)
    hit = np.flatnonzero(buf)
    pid = buf[hit] - 1
    pix = col[pid]
    tx = np.asarray(polys.textured)[o][pid]
    if tx.any():
        # Screen-space is fine for a fixed camera; scale so a texel spans a few pixels.
        sc = 720.0 / H
        t = tex.sample(
            tex.noise,
            (hit[tx] % W).astype(np.float32) * sc / 61.0,
            (hit[tx] // W).astype(np.float32) * sc / 61.0,
        )
        pix[tx] *= (0.75 + 0.5 * t)[:, None]
    # Haze last: texture belongs to the surface, and fog flattens it like everything else.
    img.reshape(-1, 3)[hit] = atmosphere(pix, dd[pid], look)
    depth = np.full(H * W, np.inf, np.float32)
    depth[hit] = dd[pid]
    return depth


def _signal_lamps(world: World, cam: Camera) -> tuple[tuple[float, float, float, str, int], ...]:
    out = []
    for x, y, z, group, facing in world.scenery.signal_heads:
        nx, ny = math.cos(facing), math.sin(facing)
        if nx * (cam.C[0] - x) + ny * (cam.C[1] - y) <= 0:
            continue  # lamps face away from the camera
        for slot, dz in ((0, 0.8), (1, 0.5), (2, 0.2)):
            p = np.array([x + nx * 0.19, y + ny * 0.19, z + dz])
            uv, depth = cam.project(p)
            if depth <= 0.5:
                continue
            r = max(cam.focal * 0.11 / float(depth), 0.6)
            out.append((float(uv[0]), float(uv[1]), r, group, slot))
    return tuple(out)


def _veil(cam: Camera, look: Look) -> Veil:
    if look.glare <= 0:
        return Veil(0.0, 0.0, 0.0, 1.0)
    sun = cam.C + np.asarray(look.sun_dir) * 1e6
    uv, z = cam.project(sun)
    if z <= 0:
        return Veil(look.glare * 0.4, cam.width / 2, -cam.height, cam.width * 0.6)
    return Veil(look.glare, float(uv[0]), float(uv[1]), cam.width * 0.35)


def _sun(img: NDArray[np.uint8], cam: Camera, look: Look, depth: F32) -> None:
    """The sun's disc and bloom when it is in the picture, plus faint lens-flare ghosts."""
    uv, z = cam.project(cam.C + np.asarray(look.sun_dir) * 1e6)
    u, v = float(uv[0]), float(uv[1])
    W, H = cam.width, cam.height
    if z <= 0 or not (-0.2 * W < u < 1.2 * W and -0.2 * H < v < 1.2 * H):
        return
    iu, iv = int(np.clip(u, 0, W - 1)), int(np.clip(v, 0, H - 1))
    if np.isfinite(depth[iv * W + iu]) and 0 <= u < W and 0 <= v < H:
        return  # behind a building or tree
    r = max(int(W * 0.012), 2)
    add_glow(img, u, v, r * 12, (1.0, 0.95, 0.85), 0.9 if look.glare else 0.5)
    add_glow(img, u, v, r * 2, (1.0, 1.0, 0.95), 1.0)
    if look.glare:
        for k, frac in ((3, 0.35), (2, 0.7), (5, 1.3)):
            gu, gv = u + (W / 2 - u) * frac * 2, v + (H / 2 - v) * frac * 2
            add_glow(img, gu, gv, r * k, (0.6, 0.8, 1.0), 0.12)


def _lamp_glows(img: NDArray[np.uint8], world: World, cam: Camera, look: Look) -> None:
    for x, y, z in world.scenery.lamps:
        uv, depth = cam.project(np.array([x, y, z]))
        if depth <= 1.0:
            continue
        r = int(min(max(cam.focal * 0.9 / float(depth), 2), 60))
        add_glow(
            img,
            float(uv[0]),
            float(uv[1]),
            r,
            (1.0, 0.85, 0.6),
            0.9 if look.name == "night" else 0.5,
        )


def _static_boxes(depth: F32, H: int, W: int) -> NDArray[np.float64]:
    """Coarse tiles that hold scenery, with its nearest depth: a cheap overlap pre-test."""
    T = 32
    d = np.full(((H + T - 1) // T * T, (W + T - 1) // T * T), np.inf, np.float32)
    d[:H, :W] = depth.reshape(H, W)
    tiles = d.reshape(d.shape[0] // T, T, d.shape[1] // T, T).min(axis=(1, 3))
    ty, tx = np.nonzero(np.isfinite(tiles))
    out = np.empty((ty.size, 5))
    out[:, 0], out[:, 1] = ty * T, np.minimum(ty * T + T - 1, H - 1)
    out[:, 2], out[:, 3] = tx * T, np.minimum(tx * T + T - 1, W - 1)
    out[:, 4] = tiles[ty, tx]
    return out
