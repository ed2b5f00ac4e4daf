"""Training data for the detector: simulator shards -> letterboxed tensors, augmentation, targets.

The training set is small enough (a few thousand frames) to hold in memory letterboxed to the
network input as uint8, so an epoch costs no decoding and no disk. Augmentation runs in torch
on whole batches (one ``grid_sample`` does flip, scale jitter and translation together), and
the targets are built per image in numpy from the augmented boxes. Every random draw comes from
one seeded ``torch.Generator``: the same seed and data give the same run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from its_camera_ai.inference.models import (
    PAD_VALUE,
    STRIDE,
    Letterbox,
    letterbox,
    to_float_batch,
)
from its_camera_ai.sim import load_shard, shard_is_current, write_dataset

__all__ = [
    "HELD_OUT_FROM",
    "TrainSet",
    "augment",
    "build_targets",
    "clip_boxes",
    "crop_size_argument",
    "jitter_colour",
    "load_trainset",
    "parse_size",
    "render_missing",
    "shard_files",
    "size_argument",
]

# Seeds from here on are held out for evaluation (``_evaluate.HELD_OUT_SEEDS``).
HELD_OUT_FROM = 100_000
# TTFNet: the Gaussian's sigma is alpha * size / 6; regression is trained on cells of the
# beta-scaled box. 0.54 for both is the paper's value.
_ALPHA = 0.54
_BETA = 0.54


@dataclass(frozen=True, slots=True)
class TrainSet:
    images: torch.Tensor  # uint8 [N, H, W, 3] letterboxed to the network input
    boxes: list[NDArray[np.float32]]  # per image [M, 4], input pixels
    classes: list[NDArray[np.int64]]
    difficult: list[NDArray[np.bool_]]


def shard_files(root: str | Path, seeds: Sequence[int] | None = None) -> list[Path]:
    """The shards of ``seeds`` (or of the directory's index), in seed order."""
    base = Path(root)
    if seeds is None:
        index = json.loads((base / "index.json").read_text())
        return [base / e["file"] for e in index["shards"]]
    return [base / f"seed_{s:06d}.npz" for s in seeds]


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (w, h), both positive multiples of the network's stride (32); a
    ``ValueError`` that says which rule ``text`` breaks otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{text!r}: expected WxH, e.g. 480x288") from None
    if w % 32 or h % 32 or w <= 0 or h <= 0:
        raise ValueError(f"{text!r}: width and height must be positive multiples of 32")
    return w, h


def size_argument(text: str) -> tuple[int, int]:
    """``parse_size`` as an argparse ``type=``: a bad size is refused naming its flag."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def crop_size_argument(text: str) -> tuple[int, int] | None:
    """``size_argument``, or 'none' (train on whole frames)."""
    return None if text == "none" else size_argument(text)


def render_missing(
    root: str | Path,
    seeds: Sequence[int],
    frames_per_seed: int,
    interval_s: float,
    workers: int,
    log: Callable[[str], None] = print,
) -> None:
    """Render the training shards of ``seeds`` that ``root`` lacks, or holds from an older
    simulator (``shard_is_current``), with the parameters of ``its-camera-ai sim dataset``.
    Training seeds stay below the held-out ones: a ``ValueError`` says so otherwise."""
    if max(seeds, default=0) >= HELD_OUT_FROM:
        raise ValueError(f"training seeds must be < {HELD_OUT_FROM} (held-out seeds start there)")
    paths = shard_files(root, seeds)
    missing = [s for s, p in zip(seeds, paths, strict=True) if not shard_is_current(p)]
    if missing:
        began = time.perf_counter()
        write_dataset(
            root, missing, frames_per_seed, interval_s=interval_s, compress=False, workers=workers
        )
        seconds = time.perf_counter() - began
        log(f"rendered {len(missing)} missing or out-of-date seeds in {seconds:.0f} s")


def _release_free_heap() -> Callable[[], None]:
    """``malloc_trim`` of glibc, or a no-op elsewhere.

    Each shard's float temporaries (~30 MB) are freed into a heap that the kept uint8
    frames fragment; without a trim after each shard, loading 8,000 frames held 23 GB for a
    3.3 GB tensor. (Pinning the mmap threshold instead fixed loading but made every
    training step mmap its activations: 2x slower.)
    """
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None

    def release() -> None:
        trim(0)

    return release


def load_trainset(
    root: str | Path, size: tuple[int, int], seeds: Sequence[int] | None = None
) -> TrainSet:
    """Every image of a simulator dataset directory, letterboxed to ``size`` (w, h)."""
    release = _release_free_heap()
    images: list[torch.Tensor] = []
    boxes, classes, difficult = [], [], []
    for path in shard_files(root, seeds):
        shard = load_shard(path)
        frames = torch.from_numpy(shard.images)
        _, h, w, _ = frames.shape
        if (w, h) == size:
            # Already the input size (the simulator's native 640x384): letterboxing is the
            # identity, and its float round trip cost half of the loading time.
            images.append(frames.clone())
            lb = Letterbox(1.0, 0.0, 0.0, w, h)
        else:
            # Letterbox a shard at a time: same function and interpolation as inference.
            placed, lb = letterbox(to_float_batch(frames), size)
            images.append(placed.mul(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1))
            del placed
        for i in range(len(shard)):
            b, c, d = shard.labels(i)
            b = b * np.float32(lb.scale) + np.array(
                [lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], np.float32
            )
            boxes.append(b.astype(np.float32))
            classes.append(c.astype(np.int64))
            difficult.append(d.astype(bool))
        del shard, frames
        release()
    return TrainSet(torch.cat(images).contiguous(), boxes, classes, difficult)


def augment(
    images: torch.Tensor,
    boxes: list[NDArray[np.float32]],
    gen: torch.Generator,
    *,
    scale: tuple[float, float] = (0.75, 1.35),
    colour: float = 0.3,
    out_size: tuple[int, int] | None = None,
    close_scale: tuple[float, float] | None = None,
    close_share: float = 0.0,
) -> tuple[torch.Tensor, list[NDArray[np.float32]]]:
    """uint8 ``[B,H,W,3]`` -> float ``[B,3,oh,ow]`` with flip, zoom, shift and colour jitter.

    ``out_size`` (w, h), default the input's: smaller, it is a random crop of the zoomed
    frame (the network is fully convolutional, so it trains on crops at the scale it will
    see whole frames, for a fraction of the pixels). ``close_share`` of the images take
    their zoom from ``close_scale`` instead: vehicles as large as a camera beside the road
    shows them, which the simulator's views rarely do.
    """
    b, h, w, _ = images.shape
    ow, oh = out_size or (w, h)
    s = torch.empty(b).uniform_(scale[0], scale[1], generator=gen)
    if close_scale is not None and close_share > 0:  # no extra draws otherwise: runs repeat
        close = torch.rand(b, generator=gen) < close_share
        s = torch.where(close, torch.empty(b).uniform_(*close_scale, generator=gen), s)
    flip = torch.rand(b, generator=gen) < 0.5
    # Shift so that the zoomed image still covers a random part of the output.
    tx = (torch.rand(b, generator=gen) - 0.5) * (w * s - ow).abs() * 1.2
    ty = (torch.rand(b, generator=gen) - 0.5) * (h * s - oh).abs() * 1.2
    sx = torch.where(flip, -s, s)
    # Output pixel u maps from input x by u = sx * (x - w/2) + ow/2 + tx (likewise y).
    # The map is separable, so the sampling grid (normalised input coordinates of each
    # output pixel centre) is built by broadcasting a row and a column: affine_grid's
    # general 2x3 product cost as much as the sampling itself.
    u = torch.arange(ow, dtype=torch.float32) + 0.5 - ow / 2
    v = torch.arange(oh, dtype=torch.float32) + 0.5 - oh / 2
    gx = (u[None, :] - tx[:, None]) / sx[:, None] * (2.0 / w)  # [B, ow]
    gy = (v[None, :] - ty[:, None]) / s[:, None] * (2.0 / h)  # [B, oh]
    grid = torch.stack((gx[:, None, :].expand(b, oh, ow), gy[:, :, None].expand(b, oh, ow)), dim=-1)
    # grid_sample pads with zeros: sample (x - pad) so the padding comes out as the letterbox
    # grey. The channels-last view of the HWC frames is what grid_sample reads fastest.
    x = images.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0).sub_(PAD_VALUE)
    x = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    # Colour: saturation, contrast and brightness per image; the sim's conditions already
    # vary light, this widens it so night/fog scenes are not out of distribution.
    bright = 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * colour
    contrast = 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * colour
    sat = 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * colour
    x = jitter_colour(x, PAD_VALUE, sat, contrast, bright)
    out_boxes = []
    for i in range(b):
        bx = boxes[i].copy()
        a, cx0, cy0 = float(sx[i]), float(tx[i]) + ow / 2, float(ty[i]) + oh / 2
        xs = a * (bx[:, [0, 2]] - w / 2) + cx0
        ys = float(s[i]) * (bx[:, [1, 3]] - h / 2) + cy0
        bx[:, 0], bx[:, 2] = xs.min(1), xs.max(1)
        bx[:, 1], bx[:, 3] = ys.min(1), ys.max(1)
        out_boxes.append(bx)
    return x, out_boxes


def jitter_colour(
    x: torch.Tensor,
    offset: float,
    sat: torch.Tensor,
    contrast: torch.Tensor,
    bright: torch.Tensor,
) -> torch.Tensor:
    """Saturation, then contrast, then brightness (factors ``[B,1,1,1]``) of the images
    ``x + offset``, clamped to [0, 1]; ``x`` is overwritten.

    The three compose into one affine map of a pixel and its grey (channel mean), because
    a saturation change keeps the image mean: out = a*p + g*grey + c, a few in-place passes
    over the batch where the steps one at a time allocate a new tensor each.
    """
    grey = x.mean(dim=1, keepdim=True)
    mean = grey.mean(dim=(2, 3), keepdim=True) + offset
    a = bright * contrast * sat
    g = bright * contrast * (1.0 - sat)
    c = bright * (1.0 - contrast) * mean + (a + g) * offset
    return x.mul_(a).add_(grey * g).add_(c).clamp_(0.0, 1.0)


def clip_boxes(
    bx: NDArray[np.float32], w: int, h: int
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Clip to the image; also says which boxes kept enough of themselves to be demanded."""
    area = (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])
    c = bx.copy()
    c[:, [0, 2]] = c[:, [0, 2]].clip(0, w)
    c[:, [1, 3]] = c[:, [1, 3]].clip(0, h)
    cw, ch = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
    ok = (cw * ch >= 0.4 * np.maximum(area, 1e-6)) & (cw >= 3.0) & (ch >= 4.0)
    return c, ok


def build_targets(
    boxes: list[NDArray[np.float32]],
    classes: list[NDArray[np.int64]],
    difficult: list[NDArray[np.bool_]],
    size: tuple[int, int],
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """TTFNet targets: elliptical Gaussians per class, ignore mask, box + weight per cell."""
    w, h = size
    ow, oh = w // STRIDE, h // STRIDE
    n = len(boxes)
    heat = np.zeros((n, num_classes, oh, ow), np.float32)
    ignore = np.ones((n, 1, oh, ow), np.float32)
    box = np.zeros((n, 4, oh, ow), np.float32)
    weight = np.zeros((n, 1, oh, ow), np.float32)
    for i in range(n):
        c_boxes, ok = clip_boxes(boxes[i], w, h)
        keep = ok & ~difficult[i]
        for bx in c_boxes[~keep]:
            # Difficult or mostly cut off: neither a positive nor a negative.
            x0, y0 = int(bx[0] // STRIDE), int(bx[1] // STRIDE)
            x1, y1 = math.ceil(float(bx[2]) / STRIDE), math.ceil(float(bx[3]) / STRIDE)
            ignore[i, 0, max(y0, 0) : y1, max(x0, 0) : x1] = 0.0
        kb, kc = c_boxes[keep], classes[i][keep]
        # Large first so smaller objects overwrite the regression cells they share.
        areas = (kb[:, 2] - kb[:, 0]) * (kb[:, 3] - kb[:, 1])
        for j in np.argsort(-areas, kind="stable"):
            bx, cls = kb[j], int(kc[j])
            bw, bh = (bx[2] - bx[0]) / STRIDE, (bx[3] - bx[1]) / STRIDE
            cx = min(int((bx[0] + bx[2]) / 2 / STRIDE), ow - 1)
            cy = min(int((bx[1] + bx[3]) / 2 / STRIDE), oh - 1)
            sx, sy = max(_ALPHA * bw / 6, 0.35), max(_ALPHA * bh / 6, 0.35)
            rx, ry = max(int(3 * sx), 1), max(int(3 * sy), 1)
            xa, xb = max(cx - rx, 0), min(cx + rx + 1, ow)
            ya, yb = max(cy - ry, 0), min(cy + ry + 1, oh)
            gx = np.exp(-((np.arange(xa, xb) - cx) ** 2) / (2 * sx * sx))
            gy = np.exp(-((np.arange(ya, yb) - cy) ** 2) / (2 * sy * sy))
            g = (gy[:, None] * gx[None, :]).astype(np.float32)
            np.maximum(heat[i, cls, ya:yb, xa:xb], g, out=heat[i, cls, ya:yb, xa:xb])
            # Regression cells: the Gaussian inside the beta-scaled box.
            bx_r, by_r = max(int(_BETA * bw / 2), 0), max(int(_BETA * bh / 2), 0)
            rxa, rxb = max(cx - bx_r, xa), min(cx + bx_r + 1, xb)
            rya, ryb = max(cy - by_r, ya), min(cy + by_r + 1, yb)
            gr = g[rya - ya : ryb - ya, rxa - xa : rxb - xa]
            # Each object's weights sum to log(area): big objects count more, but not
            # proportionally to their cell count (TTFNet).
            wgt = gr / max(float(gr.sum()), 1e-6) * math.log(max(bw * bh * 16.0, 2.0))
            box[i, :, rya:ryb, rxa:rxb] = bx[:, None, None]
            weight[i, 0, rya:ryb, rxa:rxb] = wgt
    return (
        torch.from_numpy(heat),
        torch.from_numpy(ignore),
        torch.from_numpy(box),
        torch.from_numpy(weight),
    )
