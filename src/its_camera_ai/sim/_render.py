"""Per-frame rendering of road users over the static background, with exact visibility.

Every visible face of every road user in view becomes a polygon; polygons get ids in painter
order (users far to near, parts far to near within a user, details after their face) and are
scan-converted in one batch. ``np.maximum.at`` of the ids into an id buffer resolves who is in
front at each pixel; the same buffer gives each user's visible pixel count and extent, and a
scratch buffer its unoccluded pixel count, so boxes and occlusion ratios come from what was
actually drawn. Scenery hides users behind it through the background's depth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.sim._background import Background, Textures, render_background
from its_camera_ai.sim._camera import Camera
from its_camera_ai.sim._conditions import (
    Look,
    NoiseLayer,
    RainLayer,
    atmosphere,
    mirror_sky,
    shade,
    to_u8,
)
from its_camera_ai.sim._effects import (
    add_glow,
    apply_ground,
    blur_box,
    ground_quads,
    image_motion,
    lut,
)
from its_camera_ai.sim._models import LIGHT_HEAD, LIGHT_TAIL
from its_camera_ai.sim._raster import Fragments, fragments, pixels
from its_camera_ai.sim._traffic import Agent
from its_camera_ai.sim._truth import ObjectTruth, is_difficult
from its_camera_ai.sim._world import World

__all__ = ["Renderer"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
U8 = NDArray[np.uint8]
_NEAR = 0.3  # m: polygons are clipped at this camera depth
_LOD_PX = 14.0  # below this projected height windows, wheels and lights are not drawn
_SLOT = {"red": 0, "amber": 1, "green": 2}
_LAMP = ((1.0, 0.12, 0.08), (1.0, 0.7, 0.1), (0.2, 1.0, 0.45))
_HEAD_RGB = np.array([1.0, 0.97, 0.88], np.float32)
_TAIL_RGB = np.array([1.0, 0.1, 0.06], np.float32)


@dataclass(slots=True)
class _Polys:
    """The frame's polygons in painter order, and per-user data (users far to near)."""

    xy: F64  # (P, 8, 2) pixels
    nverts: I64
    own: I64  # user of each polygon (non-decreasing)
    light: NDArray[np.int8]
    palette: U8  # (P + 1, 3); id 0 is "nothing"
    pos: F64  # (n, 2) ground position of users
    yaw: F64
    dist: F64  # (n,) camera distance of users' centres
    dims: F64  # (n, 3)


def _clip_near(pc: F64, nverts: I64, near: float) -> NDArray[np.bool_]:
    """Clip polygons (camera coordinates, in place) at depth ``near``; False: nothing left.

    Sutherland-Hodgman against one plane, only for the few polygons that straddle it (a
    vehicle passing beside or under the camera), so they stay drawn up to the image edge.
    """
    K = pc.shape[1]
    valid = np.arange(K)[None, :] < nverts[:, None]
    behind = (pc[..., 2] < near) & valid
    keep: NDArray[np.bool_] = np.logical_not(np.all(behind | ~valid, axis=1))
    for i in np.flatnonzero(behind.any(1) & keep).tolist():
        pts = pc[i, : nverts[i]].copy()
        out: list[F64] = []
        n = len(pts)
        for j in range(n):
            a, b = pts[j], pts[(j + 1) % n]
            da, db = a[2] - near, b[2] - near
            if da >= 0:
                out.append(a)
            if da * db < 0:
                out.append(a + (b - a) * (da / (da - db)))
        if len(out) < 3:
            keep[i] = False
            continue
        while len(out) > K:  # an octagon may gain a vertex: merge the closest pair
            d = [float(np.linalg.norm(out[j] - out[(j + 1) % len(out)])) for j in range(len(out))]
            del out[int(np.argmin(d))]
        pc[i, : len(out)] = out
        pc[i, len(out) :] = out[-1]
        nverts[i] = len(out)
    return keep


class Renderer:
    """Draws one camera at one resolution; owns the background and reusable buffers."""

    def __init__(
        self, world: World, cam: Camera, look: Look, tex: Textures, rng: np.random.Generator
    ) -> None:
        self.world, self.cam, self.look = world, cam, look
        self.bg: Background = render_background(world, cam, look, tex, rng)
        H, W = cam.height, cam.width
        self.noise = NoiseLayer(H, W, look.noise, rng)
        self.rain = (
            RainLayer(H, W, 0.75 if look.ambient > 0.2 else 0.35, rng) if look.rain else None
        )
        self._ids = np.zeros(H * W, np.int32)
        self._seen = np.zeros(H * W, np.bool_)
        # Shadows and headlight pools are copied from pre-lit backgrounds.
        beam = look.lights * (1.0 - min(look.ambient * 1.6, 0.97))  # only shows in the dark
        self._beam_on = beam > 0.05
        img = self.bg.image
        self._ground_src = (
            pixels(np.ascontiguousarray(lut(1.0 - look.shadow, 0.0)[img])),
            pixels(np.ascontiguousarray(lut(1.0 + 0.9 * beam, 8.0 * beam)[img])),
            pixels(np.ascontiguousarray(lut(1.0 + 2.0 * beam, 18.0 * beam)[img])),
        )
        self._bare = np.isinf(self.bg.static_depth)
        self._lamps = np.asarray(world.scenery.lamps, np.float64).reshape(-1, 3)

    def render(
        self, agents: Sequence[Agent], signals: dict[str, str], rng: np.random.Generator
    ) -> tuple[U8, list[ObjectTruth]]:
        frame = self.bg.image.copy()
        users = self._in_view(agents)
        truths = self._draw(frame, users, signals)
        if self.rain is not None:
            self.rain.apply(frame, rng)
        self.noise.apply(frame, rng)
        return frame, truths

    # -- geometry -------------------------------------------------------------------------

    def _in_view(self, agents: Sequence[Agent]) -> list[Agent]:
        """Users whose bounding sphere meets the view frustum, sorted far to near."""
        if not agents:
            return []
        cam = self.cam
        xy = np.array([a.xy() for a in agents])
        dims = np.array([(a.model.length, a.model.width, a.model.height) for a in agents])
        pc = cam.to_camera(np.column_stack([xy, dims[:, 2] / 2]))
        rad = 0.5 * np.linalg.norm(dims, axis=1)
        f, (cx, cy) = cam.focal, cam.K[:2, 2]
        planes = np.array(
            [[f, 0, cx], [-f, 0, cam.width - cx], [0, f, cy], [0, -f, cam.height - cy]]
        )
        planes /= np.linalg.norm(planes, axis=1, keepdims=True)
        ok = ((pc @ planes.T) > -rad[:, None]).all(1) & (pc[:, 2] > _NEAR - rad)
        keep = np.flatnonzero(ok)
        keep = keep[np.argsort(-pc[keep, 2], kind="stable")]
        return [agents[i] for i in keep.tolist()]

    def _polys(self, users: list[Agent]) -> _Polys | None:
        cam, look = self.cam, self.look
        n = len(users)
        models = [a.model for a in users]
        counts = np.array([m.verts.shape[0] for m in models])
        owner = np.repeat(np.arange(n), counts)
        verts = np.concatenate([m.verts for m in models]).astype(np.float64)
        normal = np.concatenate([m.normal for m in models]).astype(np.float64)
        pcen = [m.part_center for m in models]
        part_base = np.repeat(np.cumsum([0] + [p.shape[0] for p in pcen[:-1]]), counts)
        part = np.concatenate([m.part for m in models]).astype(np.int64) + part_base
        detail = np.concatenate([m.detail for m in models])
        xy = np.array([a.xy() for a in users])
        yaw = np.array([a.heading() for a in users])
        dims = np.array([(m.length, m.width, m.height) for m in models])
        gait = np.array(
            [0.22 * math.sin(a.phase) if a.cls == "person" and a.v > 0.05 else 0.0 for a in users]
        )
        c, s = np.cos(yaw), np.sin(yaw)
        verts[..., 0] += (np.concatenate([m.swing for m in models]) * gait[owner])[:, None]
        co, so = c[owner][:, None], s[owner][:, None]
        wv = np.empty_like(verts)
        wv[..., 0] = co * verts[..., 0] - so * verts[..., 1] + xy[owner, 0:1]
        wv[..., 1] = so * verts[..., 0] + co * verts[..., 1] + xy[owner, 1:2]
        wv[..., 2] = verts[..., 2]
        wn = normal.copy()
        wn[:, 0] = co[:, 0] * normal[:, 0] - so[:, 0] * normal[:, 1]
        wn[:, 1] = so[:, 0] * normal[:, 0] + co[:, 0] * normal[:, 1]
        centre = np.column_stack([xy, dims[:, 2] / 2])
        depth = cam.to_camera(centre)[:, 2]
        dist = np.linalg.norm(centre - cam.C, axis=1)
        height_px = cam.focal * dims[:, 2] / np.maximum(depth, 1e-6)
        keep = np.einsum("ij,ij->i", wn, cam.C - wv[:, 0]) > 1e-9  # faces turned to us
        keep &= ~(detail & (height_px[owner] < _LOD_PX))
        pcam = cam.to_camera(wv)
        nverts = np.concatenate([m.nverts for m in models]).astype(np.int64)
        keep &= _clip_near(pcam, nverts, _NEAR)
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = pcam[..., :2] / pcam[..., 2:3] * cam.focal + cam.K[:2, 2]
        sel = np.flatnonzero(keep)
        if sel.size == 0:
            return None
        pc = np.concatenate(pcen).astype(np.float64)[part[sel]]
        o = owner[sel]
        pw = np.column_stack(
            [
                c[o] * pc[:, 0] - s[o] * pc[:, 1] + xy[o, 0],
                s[o] * pc[:, 0] + c[o] * pc[:, 1] + xy[o, 1],
                pc[:, 2],
            ]
        )
        pdist = np.linalg.norm(pw - cam.C, axis=1)
        order = sel[np.lexsort((sel, -pdist, o))]
        own = owner[order]
        # Colours: shading, street-lamp light, mirroring glass, haze by distance, glare, lights.
        extra = np.zeros(n, np.float32)
        if look.lamps and len(self._lamps):
            d2 = ((xy[:, None, :] - self._lamps[None, :, :2]) ** 2).sum(-1)
            hz = self._lamps[None, :, 2]
            extra = (0.9 * (hz**3 / (d2 + hz * hz) ** 1.5)).sum(1).astype(np.float32)
        base = np.concatenate([m.color for m in models])[order]
        col = shade(base, wn[order].astype(np.float32), look, extra[own][:, None])
        glass = np.flatnonzero(np.concatenate([m.glass for m in models])[order])
        gi = order[glass]
        view = (wv[gi, 0] - cam.C).astype(np.float32)
        col[glass] = mirror_sky(col[glass], wn[gi].astype(np.float32), view, look)
        col = atmosphere(col, dist[own].astype(np.float32), look)
        cuv = cam.project(centre)[0]
        col += (1.0 - col).clip(0, None) * self.bg.veil.at(cuv[:, 0], cuv[:, 1])[own][:, None]
        light = np.concatenate([m.light for m in models])[order]
        if look.lights > 0:
            t = np.exp(-look.extinction * dist[own] * 0.5).astype(np.float32)[:, None]
            haze = np.asarray(look.haze, np.float32)
            for kind, rgb in ((LIGHT_HEAD, _HEAD_RGB), (LIGHT_TAIL, _TAIL_RGB)):
                m = light == kind
                col[m] = rgb * t[m] + haze * (1 - t[m])
        palette = np.zeros((order.size + 1, 3), np.uint8)
        palette[1:] = to_u8(col)
        return _Polys(uv[order], nverts[order], own, light, palette, xy, yaw, dist, dims)

    # -- drawing --------------------------------------------------------------------------

    def _draw(self, frame: U8, users: list[Agent], signals: dict[str, str]) -> list[ObjectTruth]:
        cam, look, bg = self.cam, self.look, self.bg
        H, W = cam.height, cam.width
        px = pixels(frame)
        g = self._polys(users) if users else None
        if g is not None:
            quads, kinds = ground_quads(
                look, g.pos, g.yaw, g.dims, [a.cls for a in users], self._beam_on
            )
            apply_ground(px, self._ground_src, self._bare, cam, quads, kinds)
        # Signal lamps after the ground, before the users that may stand in front of them.
        self._signal_lamps(frame, signals)
        if g is None:
            return []
        n = len(users)
        fr = fragments(g.xy, g.nverts, H, W)
        pstart = np.searchsorted(g.own, np.arange(n + 1))  # polygons of user k
        fstart = fr.start[pstart]  # fragments of user k: fstart[k]:fstart[k + 1]
        has = fstart[1:] > fstart[:-1]
        P = g.own.size
        first = np.minimum(pstart[:-1], P - 1)
        # Extent of each user's polygons in the frame (empty polygons hold sentinels).
        ubox = np.stack(
            [
                np.minimum.reduceat(fr.bbox[:, 0], first),
                np.maximum.reduceat(fr.bbox[:, 1], first),
                np.minimum.reduceat(fr.bbox[:, 2], first),
                np.maximum.reduceat(fr.bbox[:, 3], first),
            ],
            axis=1,
        )
        vals = fr.pid + 1
        idx = fr.idx
        sb = bg.static_boxes
        behind = np.zeros(n, bool)
        if sb.size:
            # Users whose extent meets a scenery tile nearer than themselves.
            np.any(
                (sb[None, :, 4] < g.dist[:, None])
                & (sb[None, :, 0] <= ubox[:, 1:2])
                & (sb[None, :, 1] >= ubox[:, 0:1])
                & (sb[None, :, 2] <= ubox[:, 3:4])
                & (sb[None, :, 3] >= ubox[:, 2:3]),
                axis=1,
                out=behind,
            )
        hidden = False
        for k in np.flatnonzero(has & behind).tolist():
            # Fragments behind scenery get id 0: they never win a pixel.
            a, b = int(fstart[k]), int(fstart[k + 1])
            hid = bg.static_depth[idx[a:b]] < g.dist[k]
            if hid.any():
                vals[a:b][hid] = 0
                hidden = True
        ids = self._ids
        np.maximum.at(ids, idx, vals)
        win = ids[idx]
        vis = win == vals  # exactly one fragment per covered pixel: the nearest
        if hidden:
            vis &= vals > 0
        vidx = idx[vis]
        ids.fill(0)  # a full clear is cheaper than a scatter of zeros
        np.put(px, vidx, np.take(g.palette.reshape(-1).view("V3"), vals[vis]))
        full = self._unoccluded(g, fr, idx, win, vis, fstart, has, ubox)
        self._light_glows(frame, fr, vis, g)
        truths = self._truths(users, g, vidx, vis, fstart, has, full, ubox)
        if look.exposure_s > 0 and truths:
            motion = image_motion(
                cam, g.pos, g.yaw, g.dims[:, 2], np.array([a.v for a in users]), look.exposure_s
            )
            rank = {a.id: k for k, a in enumerate(users)}
            for t in truths:
                du, dv = motion[rank[t.track_id]].tolist()
                blur_box(frame, t.box, du, dv)
        return truths

    def _unoccluded(
        self,
        g: _Polys,
        fr: Fragments,
        idx: NDArray[np.int32],
        win: NDArray[np.int32],
        vis: NDArray[np.bool_],
        fstart: I64,
        has: NDArray[np.bool_],
        ubox: I64,
    ) -> I64:
        """Pixels each user would cover alone: its visible pixels plus the distinct pixels
        it lost to nearer users or scenery (counted with a scratch mask, only where lost)."""
        H, W = self.cam.height, self.cam.width
        n = fstart.size - 1
        users = np.flatnonzero(has)
        full = np.zeros(n, np.int64)
        if users.size == 0:
            return full
        owner = g.own.astype(np.int32)
        owner_of_id = np.concatenate([np.array([-1], np.int32), owner])
        lost = owner[fr.pid] != owner_of_id[win]
        full[users] = np.add.reduceat(vis.view(np.uint8), fstart[users], dtype=np.int64)
        n_lost = np.add.reduceat(lost.view(np.uint8), fstart[users], dtype=np.int64)
        seen, seen2 = self._seen, self._seen.reshape(H, W)
        for k in users[n_lost > 0].tolist():
            a, b = int(fstart[k]), int(fstart[k + 1])
            sl = idx[a:b][lost[a:b]]
            r0, r1, c0, c1 = ubox[k].tolist()
            seen[sl] = True
            full[k] += np.count_nonzero(seen2[r0 : r1 + 1, c0 : c1 + 1])
            seen[sl] = False
        return full

    def _truths(
        self,
        users: list[Agent],
        g: _Polys,
        vidx: NDArray[np.int32],
        vis: NDArray[np.bool_],
        fstart: I64,
        has: NDArray[np.bool_],
        full: I64,
        ubox: I64,
    ) -> list[ObjectTruth]:
        H, W = self.cam.height, self.cam.width
        # Unclipped projected extent per user, for truncation.
        lo = g.xy.min(1)
        hi = g.xy.max(1)
        n = len(users)
        pstart = np.minimum(np.searchsorted(g.own, np.arange(n)), g.own.size - 1)
        ulo = np.stack(
            [np.minimum.reduceat(lo[:, 0], pstart), np.minimum.reduceat(lo[:, 1], pstart)], axis=1
        )
        uhi = np.stack(
            [np.maximum.reduceat(hi[:, 0], pstart), np.maximum.reduceat(hi[:, 1], pstart)], axis=1
        )
        area = np.maximum((uhi[:, 0] - ulo[:, 0]) * (uhi[:, 1] - ulo[:, 1]), 1e-9)
        cl, ch = np.clip(ulo, 0, [W, H]), np.clip(uhi, 0, [W, H])
        trunc = 1.0 - np.clip((ch[:, 0] - cl[:, 0]) * (ch[:, 1] - cl[:, 1]), 0, None) / area
        # Visible extent and count per user from the winning fragments, all users at once.
        users_f = np.flatnonzero(has)
        nvis = np.add.reduceat(vis.view(np.uint8), fstart[users_f], dtype=np.int64)
        users_f, nvis = users_f[nvis > 0], nvis[nvis > 0]
        vstart = np.cumsum(nvis) - nvis
        # Row by float division: exact for these sizes, and much faster than int64 //.
        rows = np.floor((vidx + 0.5) * (1.0 / W)).astype(np.int32)
        cols = vidx - rows * W
        vr0, vr1 = np.minimum.reduceat(rows, vstart), np.maximum.reduceat(rows, vstart)
        vc0, vc1 = np.minimum.reduceat(cols, vstart), np.maximum.reduceat(cols, vstart)
        out: list[ObjectTruth] = []
        rows_l = zip(
            users_f.tolist(),
            nvis.tolist(),
            vr0.tolist(),
            vr1.tolist(),
            vc0.tolist(),
            vc1.tolist(),
            strict=True,
        )
        trunc_l, full_l, box_l = trunc.tolist(), full.tolist(), ubox.tolist()
        pos_l, dims_l, yaw_l = g.pos.tolist(), g.dims.tolist(), g.yaw.tolist()
        for k, vpx, r0v, r1v, c0v, c1v in rows_l:
            box = (float(c0v), float(r0v), float(c1v + 1), float(r1v + 1))
            r0, r1, c0, c1 = box_l[k]
            occ = max(1.0 - vpx / full_l[k], 0.0) if full_l[k] else 0.0
            ag = users[k]
            x, y = pos_l[k]
            L, Wd, Hh = dims_l[k]
            out.append(
                ObjectTruth(
                    track_id=ag.id,
                    cls=ag.cls,
                    class_id=ag.class_id,
                    box=box,
                    full_box=(float(c0), float(r0), float(c1 + 1), float(r1 + 1)),
                    visible_px=vpx,
                    occlusion=round(occ, 4),
                    truncation=round(trunc_l[k], 4),
                    difficult=is_difficult(box, vpx, occ),
                    world_xy=(round(x, 3), round(y, 3)),
                    heading_deg=round(math.degrees(yaw_l[k]) % 360.0, 2),
                    speed_mps=round(ag.v, 3),
                    speed_kmh=round(ag.v * 3.6, 2),
                    dims_m=(round(L, 3), round(Wd, 3), round(Hh, 3)),
                    lane=ag.lane.name,
                    incident=ag.incident,
                )
            )
        return out

    # -- lights ---------------------------------------------------------------------------

    def _light_glows(self, frame: U8, fr: Fragments, vis: NDArray[np.bool_], g: _Polys) -> None:
        look = self.look
        if look.lights <= 0:
            return
        for p in np.flatnonzero(g.light).tolist():
            a, b = int(fr.start[p]), int(fr.start[p + 1])
            if a == b or not vis[a:b].any():
                continue  # light hidden or off screen
            u, v = g.xy[p, :4].mean(0).tolist()
            dist = float(g.dist[g.own[p]])
            r = int(min(max(self.cam.focal * 0.7 / dist, 2.0), 48.0))
            head = g.light[p] == LIGHT_HEAD
            add_glow(
                frame,
                u,
                v,
                r,
                (1.0, 0.95, 0.85) if head else (1.0, 0.15, 0.08),
                look.lights * (0.55 if head else 0.35),
            )

    def _signal_lamps(self, frame: U8, signals: dict[str, str]) -> None:
        for u, v, r, group, slot in self.bg.signal_lamps:
            if _SLOT.get(signals.get(group, ""), -1) != slot:
                continue
            rr = max(round(r), 1)
            add_glow(frame, u, v, rr, _LAMP[slot], 1.0)
            add_glow(frame, u, v, rr * 3, _LAMP[slot], 0.25 + 0.5 * self.look.lights)
