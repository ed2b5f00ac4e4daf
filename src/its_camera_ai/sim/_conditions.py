"""Weather and light: what a condition does to colours, and the per-frame image effects.

Colour work happens once per scene where it can (the static background is rendered already
lit, hazy and glared) and per polygon otherwise (a vehicle's faces are shaded, fogged by its
distance and lifted by glare before rasterisation), so the per-frame full-image passes are
only the cheap ones: rain streaks (one ``maximum``) and sensor noise (one ``xor``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.sim._config import EffectsConfig

__all__ = ["Look", "NoiseLayer", "RainLayer", "glow_sprite", "make_look"]

Vec3 = tuple[float, float, float]
U8 = NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Look:
    name: str
    ambient: float
    sun: float
    sun_dir: Vec3  # unit vector towards the sun
    tint: Vec3
    saturation: float
    sky_top: Vec3
    sky_horizon: Vec3
    haze: Vec3  # colour distance fades to
    extinction: float  # 1/m; fog is simply a lot of it
    lights: float  # 0: vehicle lights off; else glow strength
    lamps: bool
    noise: int  # sensor noise amplitude (grey levels, 2^k - 1)
    exposure_s: float
    rain: bool
    wet: float
    glare: float  # veiling glare strength around the sun
    shadow: float  # how much a cast shadow darkens (0 none)


def _sun(elev_deg: float, az_rad: float) -> Vec3:
    e = math.radians(elev_deg)
    return (math.cos(e) * math.cos(az_rad), math.cos(e) * math.sin(az_rad), math.sin(e))


def _pow2m1(n: int) -> int:
    """Round up to 2^k - 1: the xor trick adds noise without overflow only for such masks."""
    return 0 if n <= 0 else (1 << math.ceil(math.log2(n + 1))) - 1


def make_look(
    condition: str, rng: np.random.Generator, effects: EffectsConfig, camera_pan_rad: float
) -> Look:
    """A condition's parameters; ``rng`` varies sun position and fog density per seed."""
    az = float(rng.uniform(-math.pi, math.pi))
    if condition == "day":
        look = _day(rng, az)
    elif condition == "dusk":
        look = _dusk(rng, az)
    elif condition == "night":
        look = _night()
    elif condition == "rain":
        look = _rain(az)
    elif condition == "fog":
        look = _fog(rng, az, effects.fog_visibility_m)
    elif condition == "glare":
        look = _glare(rng, camera_pan_rad)
    else:
        raise ValueError(f"unknown condition {condition!r}")
    return _with_effects(look, effects)


def _with_effects(look: Look, effects: EffectsConfig) -> Look:
    """The condition's defaults overridden by the scene's effects settings."""
    noise = look.noise if effects.noise is None else effects.noise
    exposure = look.exposure_s if effects.exposure_s is None else effects.exposure_s
    if not effects.motion_blur:
        exposure = 0.0
    return replace(
        look,
        noise=_pow2m1(noise),
        exposure_s=exposure,
        rain=look.rain and effects.rain_streaks,
        shadow=look.shadow if effects.shadows else 0.0,
    )


def _day(rng: np.random.Generator, az: float) -> Look:
    return Look(
        name="day",
        ambient=0.52,
        sun=0.62,
        sun_dir=_sun(float(rng.uniform(30, 65)), az),
        tint=(1.0, 0.99, 0.97),
        saturation=1.0,
        sky_top=(0.33, 0.52, 0.82),
        sky_horizon=(0.72, 0.8, 0.9),
        haze=(0.72, 0.78, 0.86),
        extinction=1 / 1500,
        lights=0.0,
        lamps=False,
        noise=3,
        exposure_s=1 / 500,
        rain=False,
        wet=0.0,
        glare=0.0,
        shadow=0.45,
    )


def _dusk(rng: np.random.Generator, az: float) -> Look:
    return Look(
        name="dusk",
        ambient=0.3,
        sun=0.35,
        sun_dir=_sun(float(rng.uniform(2, 7)), az),
        tint=(1.05, 0.82, 0.66),
        saturation=0.85,
        sky_top=(0.22, 0.22, 0.42),
        sky_horizon=(0.95, 0.58, 0.36),
        haze=(0.7, 0.5, 0.42),
        extinction=1 / 900,
        lights=0.6,
        lamps=True,
        noise=3,
        exposure_s=1 / 100,
        rain=False,
        wet=0.0,
        glare=0.0,
        shadow=0.25,
    )


def _night() -> Look:
    return Look(
        name="night",
        ambient=0.08,  # traffic cameras expose long and gain up at night
        sun=0.0,
        sun_dir=(0.0, 0.0, 1.0),
        tint=(0.82, 0.86, 1.0),
        saturation=0.7,
        sky_top=(0.01, 0.015, 0.035),
        sky_horizon=(0.05, 0.05, 0.07),
        haze=(0.05, 0.05, 0.07),
        extinction=1 / 700,
        lights=1.0,
        lamps=True,
        noise=7,
        exposure_s=1 / 30,
        rain=False,
        wet=0.0,
        glare=0.0,
        shadow=0.0,
    )


def _rain(az: float) -> Look:
    return Look(
        name="rain",
        ambient=0.5,
        sun=0.12,
        sun_dir=_sun(50, az),
        tint=(0.9, 0.94, 0.98),
        saturation=0.65,
        sky_top=(0.48, 0.5, 0.54),
        sky_horizon=(0.62, 0.64, 0.67),
        haze=(0.6, 0.62, 0.65),
        extinction=1 / 350,
        lights=0.45,
        lamps=False,
        noise=3,
        exposure_s=1 / 120,
        rain=True,
        wet=0.6,
        glare=0.0,
        shadow=0.1,
    )


def _fog(rng: np.random.Generator, az: float, visibility_m: float | None) -> Look:
    vis = visibility_m or float(rng.uniform(70, 200))
    return Look(
        name="fog",
        ambient=0.62,
        sun=0.08,
        sun_dir=_sun(40, az),
        tint=(0.97, 0.98, 1.0),
        saturation=0.6,
        sky_top=(0.74, 0.76, 0.78),
        sky_horizon=(0.76, 0.78, 0.8),
        haze=(0.75, 0.77, 0.79),
        extinction=3.0 / vis,
        lights=0.5,
        lamps=False,
        noise=3,
        exposure_s=1 / 200,
        rain=False,
        wet=0.2,
        glare=0.0,
        shadow=0.05,
    )


def _glare(rng: np.random.Generator, camera_pan_rad: float) -> Look:
    # Low sun roughly ahead of the camera: backlit vehicles and a veiled image.
    az = camera_pan_rad + float(rng.uniform(-0.35, 0.35))
    return Look(
        name="glare",
        ambient=0.42,
        sun=0.75,
        sun_dir=_sun(float(rng.uniform(6, 14)), az),
        tint=(1.04, 0.98, 0.9),
        saturation=0.9,
        sky_top=(0.45, 0.6, 0.85),
        sky_horizon=(0.95, 0.9, 0.8),
        haze=(0.85, 0.82, 0.76),
        extinction=1 / 1000,
        lights=0.0,
        lamps=False,
        noise=3,
        exposure_s=1 / 1000,
        rain=False,
        wet=0.0,
        glare=0.55,
        shadow=0.5,
    )


def shade(
    base: NDArray[np.float32],
    normal: NDArray[np.float32],
    look: Look,
    extra_light: NDArray[np.float32] | float = 0.0,
) -> NDArray[np.float32]:
    """Lambert shading with the condition's ambient, sun and tint, then saturation."""
    sun = np.asarray(look.sun_dir, np.float32)
    lam = np.clip(normal @ sun, 0.0, None) * look.sun
    # Faces turned away still get sky light; tops get the most of it.
    sky = look.ambient * (0.75 + 0.25 * normal[..., 2:3].clip(0, 1))
    lit = base * (sky + lam[..., None] + extra_light) * np.asarray(look.tint, np.float32)
    if look.saturation != 1.0:
        grey = lit.mean(-1, keepdims=True)
        lit = grey + (lit - grey) * look.saturation
    out: NDArray[np.float32] = lit.astype(np.float32)
    return out


def mirror_sky(
    color: NDArray[np.float32],
    normal: NDArray[np.float32],
    view: NDArray[np.float32],
    look: Look,
) -> NDArray[np.float32]:
    """Glass: what shows through it plus the sky (or ground) it mirrors, by Schlick's Fresnel.

    Seen straight on, a window is the dark cabin behind it; at a grazing angle it is mostly
    the sky, which is how a windscreen looks from a pole camera. ``view`` runs from the
    camera to the surface.
    """
    v = view / np.linalg.norm(view, axis=-1, keepdims=True)
    cos = np.clip(-(v * normal).sum(-1), 0.0, 1.0)
    fresnel = (0.04 + 0.96 * (1.0 - cos) ** 5)[..., None]
    rise = v[..., 2] + 2.0 * cos * normal[..., 2]  # height of the reflected ray's direction
    top, horizon = np.asarray(look.sky_top, np.float32), np.asarray(look.sky_horizon, np.float32)
    sky = horizon + (top - horizon) * np.clip(rise, 0.0, 1.0)[..., None]
    mirrored = np.where(rise[..., None] > 0.0, sky, 0.3 * horizon)
    out: NDArray[np.float32] = (color * (1.0 - fresnel) + mirrored * fresnel).astype(np.float32)
    return out


def atmosphere(
    color: NDArray[np.float32], dist: NDArray[np.float32], look: Look
) -> NDArray[np.float32]:
    """Blend towards the haze colour with distance (Koschmieder): fog lowers contrast."""
    t = np.exp(-look.extinction * dist)[..., None]
    out: NDArray[np.float32] = (color * t + np.asarray(look.haze, np.float32) * (1.0 - t)).astype(
        np.float32
    )
    return out


def to_u8(color: NDArray[np.float32]) -> U8:
    out: U8 = np.clip(color * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


class NoiseLayer:
    """Pre-drawn noise planes, sliced at a random offset per frame and xor-ed in.

    Xor with a value below 2^k changes each channel by less than 2^k without overflow, so one
    in-place ``bitwise_xor`` on uint8 replaces a widen-add-clip-narrow sequence.
    """

    PAD = 64

    def __init__(self, height: int, width: int, amplitude: int, rng: np.random.Generator):
        self.amplitude = amplitude
        shape = (height + self.PAD, width + self.PAD, 3)
        if amplitude > 0:
            # Triangular-ish distribution: most pixels change little, as with real sensors.
            a = rng.integers(0, amplitude + 1, shape, dtype=np.uint8)
            b = rng.integers(0, amplitude + 1, shape, dtype=np.uint8)
            self.plane = np.minimum(a, b)
        else:
            self.plane = np.zeros((1, 1, 3), np.uint8)
        self.h, self.w = height, width

    def apply(self, frame: U8, rng: np.random.Generator) -> None:
        if self.amplitude <= 0:
            return
        dy, dx = (int(v) for v in rng.integers(0, self.PAD, 2))
        np.bitwise_xor(frame, self.plane[dy : dy + self.h, dx : dx + self.w], out=frame)


class RainLayer:
    """Falling streaks: bright slanted strokes, brightest-wins over the frame."""

    PAD = 96

    def __init__(self, height: int, width: int, brightness: float, rng: np.random.Generator):
        H, W = height + self.PAD, width + self.PAD
        layer = np.zeros((H, W), np.uint8)
        n = int(H * W / 900)
        scale = max(height / 720.0, 0.25)
        length = (rng.uniform(8, 26, n) * scale).astype(np.int32) + 2
        x0 = rng.integers(0, W, n)
        y0 = rng.integers(0, H, n)
        val = (rng.uniform(0.55, 1.0, n) * 255 * brightness).astype(np.uint8)
        slant = 0.18
        for k in range(int(length.max())):
            live = k < length
            ys = y0[live] + k
            xs = x0[live] + (k * slant)
            ok = (ys < H) & (xs < W)
            layer[ys[ok], xs[ok].astype(np.int64)] = val[live][ok]
        self.plane = np.repeat(layer[..., None], 3, axis=2)
        self.h, self.w = height, width

    def apply(self, frame: U8, rng: np.random.Generator) -> None:
        dy, dx = (int(v) for v in rng.integers(0, self.PAD, 2))
        np.maximum(frame, self.plane[dy : dy + self.h, dx : dx + self.w], out=frame)


_SPRITES: dict[tuple[int, int], NDArray[np.float32]] = {}


def glow_sprite(radius: int, core: int = 1) -> NDArray[np.float32]:
    """A radial falloff (peak 1) of a lamp's halo, cached by size."""
    key = (radius, core)
    if key not in _SPRITES:
        r = np.arange(-radius, radius + 1, dtype=np.float32)
        d2 = r[None, :] ** 2 + r[:, None] ** 2
        s = np.exp(-d2 / (2.0 * (radius / 2.5) ** 2)) + 0.6 * np.exp(-d2 / (2.0 * core**2))
        # Fade to exactly zero at the radius, so the sprite's square never shows.
        s *= np.clip(1.0 - d2 / float(radius * radius + 1e-9), 0.0, 1.0)
        _SPRITES[key] = (s / s.max()).astype(np.float32)
    return _SPRITES[key]
