"""Scene configuration: every knob of a simulated camera scene, validated up front.

All models forbid unknown keys and check ranges, so a typo or an impossible value fails at
construction with a pydantic ``ValidationError`` whose location names the field (for example
``camera.tilt_deg``), instead of producing a silently wrong video.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "CLASSES",
    "CONDITIONS",
    "CameraConfig",
    "Condition",
    "CountingLineConfig",
    "EffectsConfig",
    "IncidentConfig",
    "IncidentKind",
    "IntersectionConfig",
    "OsdConfig",
    "RoadConfig",
    "SceneConfig",
    "TrafficConfig",
]

# Class ids are the index in this tuple; the detector's label space.
CLASSES: tuple[str, ...] = ("car", "truck", "bus", "motorcycle", "bicycle", "person")
Condition = Literal["day", "dusk", "night", "rain", "fog", "glare"]
CONDITIONS: tuple[str, ...] = ("day", "dusk", "night", "rain", "fog", "glare")
IncidentKind = Literal["stopped_vehicle", "wrong_way", "pedestrian_on_road"]
_MOTOR = ("car", "truck", "bus", "motorcycle")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CameraConfig(_Model):
    """A pinhole camera on a pole; world x runs along the road, y to its left, z up."""

    x_m: float = 0.0
    # None: 4 m outside the right-hand kerb (the usual pole position).
    y_m: float | None = None
    height_m: float = Field(9.0, gt=0.5, le=200.0)
    # Down from the horizon; the ground must be in view, so strictly between 0 and 90.
    tilt_deg: float = Field(13.0, gt=0.0, lt=90.0)
    # Left of the road direction (+x), counter-clockwise seen from above.
    pan_deg: float = Field(10.0, ge=-180.0, le=180.0)
    # Focal length in pixels at width x height; None derives it from hfov_deg.
    focal_px: float | None = Field(None, gt=1.0)
    hfov_deg: float = Field(60.0, gt=2.0, lt=160.0)
    width: int = Field(1280, ge=16, le=7680)
    height: int = Field(720, ge=16, le=4320)

    @field_validator("width", "height")
    @classmethod
    def _even(cls, value: int) -> int:
        # H.264 with 4:2:0 chroma needs even dimensions; enforce it for every consumer.
        if value % 2:
            raise ValueError("must be even (4:2:0 video needs even dimensions)")
        return value

    @property
    def focal(self) -> float:
        if self.focal_px is not None:
            return self.focal_px
        return (self.width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)


class RoadConfig(_Model):
    """A straight two-way road along x, with bike lanes and sidewalks on both sides."""

    lanes_per_direction: int = Field(2, ge=1, le=4)
    lane_width_m: float = Field(3.5, ge=2.5, le=5.0)
    bike_lanes: bool = True
    bike_lane_width_m: float = Field(1.6, ge=1.0, le=3.0)
    sidewalk_width_m: float = Field(3.0, ge=1.0, le=8.0)
    start_x_m: float = -80.0
    length_m: float = Field(420.0, ge=60.0, le=5000.0)
    speed_limit_kmh: float = Field(50.0, gt=5.0, le=160.0)


class IntersectionConfig(_Model):
    """A signalised cross street with a zebra crossing over the main road before it."""

    x_m: float = 70.0
    lanes_per_direction: int = Field(1, ge=1, le=3)
    main_green_s: float = Field(22.0, gt=2.0)
    cross_green_s: float = Field(18.0, gt=2.0)
    amber_s: float = Field(3.0, ge=1.0, le=10.0)
    all_red_s: float = Field(2.0, ge=0.5, le=10.0)
    crosswalk: bool = True
    # Where in the cycle t=0 falls, so scenes do not all start on the same phase.
    offset_s: float = Field(0.0, ge=0.0)

    @property
    def cycle_s(self) -> float:
        return self.main_green_s + self.cross_green_s + 2.0 * (self.amber_s + self.all_red_s)


class TrafficConfig(_Model):
    """Demand: Poisson arrivals per entry lane, and the class mix of motor traffic."""

    flow_veh_h_per_lane: float = Field(650.0, ge=0.0, le=2400.0)
    cross_flow_veh_h_per_lane: float = Field(350.0, ge=0.0, le=2400.0)
    bicycle_flow_h: float = Field(60.0, ge=0.0, le=2000.0)
    pedestrian_flow_h: float = Field(150.0, ge=0.0, le=5000.0)
    class_mix: dict[str, float] = Field(
        default_factory=lambda: {"car": 0.76, "truck": 0.08, "bus": 0.06, "motorcycle": 0.10}
    )
    lane_changes: bool = True
    # Spread of desired speed around the class mean, as a fraction.
    speed_spread: float = Field(0.1, ge=0.0, le=0.5)

    @field_validator("class_mix")
    @classmethod
    def _mix(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(_MOTOR))
        if unknown:
            raise ValueError(f"unknown motor classes {unknown}; allowed: {list(_MOTOR)}")
        if any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("weights must be >= 0 and sum to more than 0")
        return value


class IncidentConfig(_Model):
    """An injected incident; its truth (track, start, end) is recorded when it happens."""

    kind: IncidentKind
    start_s: float = Field(0.0, ge=0.0)
    # stopped_vehicle: how long it stands; pedestrian_on_road: how long they stand in the road.
    duration_s: float = Field(20.0, gt=0.0)
    # Where along the road it happens; None picks a place in view. A wrong-way driver always
    # enters at the end of an inner lane (and drives through the whole picture).
    x_m: float | None = None


class CountingLineConfig(_Model):
    """A world-space segment (metres); a crossing is the ground point of a track passing it."""

    name: str = Field(min_length=1, max_length=64)
    a: tuple[float, float]
    b: tuple[float, float]

    @model_validator(mode="after")
    def _not_degenerate(self) -> CountingLineConfig:
        if math.dist(self.a, self.b) < 0.1:
            raise ValueError("a and b must be at least 0.1 m apart")
        return self


class OsdConfig(_Model):
    """Text a camera burns into its picture: a camera name and a running date/time stamp.

    Drawn after the sensor (noise, blur) and before encoding, as cameras do; it is not an
    object, so truth ignores it. It is there so the detector learns not to fire on it.
    """

    # The camera name line, e.g. "CAM 07 A38 NB"; lower case is drawn upper case.
    label: str = Field(max_length=40)
    # A "YYYY-MM-DD HH:MM:SS" line (below the label) that advances with simulated time.
    timestamp: bool = True
    # What the timestamp shows at frame 0.
    start: datetime = datetime(2024, 6, 3, 8, 15, 0)
    corner: Literal["top_left", "top_right", "bottom_left", "bottom_right"] = "top_left"
    # Glyph height at the configured camera resolution; scaled with the rendered height.
    height_px: int = Field(16, ge=8, le=40)
    color: Literal["white", "yellow"] = "white"
    # Black outline around the glyphs, a dark box behind the text, or bare text.
    background: Literal["outline", "box", "none"] = "outline"

    @field_validator("label")
    @classmethod
    def _printable(cls, value: str) -> str:
        # The built-in bitmap font covers printable ASCII and nothing else.
        bad = sorted({c for c in value if not " " <= c <= "~"})
        if bad:
            raise ValueError(f"must be printable ASCII; got {bad}")
        return value

    @model_validator(mode="after")
    def _something_to_draw(self) -> OsdConfig:
        if not self.label.strip() and not self.timestamp:
            raise ValueError("label is blank and timestamp is off: nothing to draw")
        return self


class EffectsConfig(_Model):
    """Image effects on top of the condition; None means the condition's own default."""

    # Sensor noise amplitude in grey levels (rounded to a power of two minus one).
    noise: int | None = Field(None, ge=0, le=63)
    # Shutter time for motion blur.
    exposure_s: float | None = Field(None, ge=0.0, le=0.2)
    motion_blur: bool = True
    shadows: bool = True
    rain_streaks: bool = True
    # Visibility distance (m) under fog; None picks one from the seed.
    fog_visibility_m: float | None = Field(None, ge=10.0, le=2000.0)
    # On-screen text (camera name, time stamp); None: a clean picture.
    osd: OsdConfig | None = None


class SceneConfig(_Model):
    """One simulated camera scene; the same config and seed always give the same video."""

    seed: int = Field(0, ge=0, le=2**63 - 1)
    fps: float = Field(30.0, ge=1.0, le=240.0)
    condition: Condition = "day"
    # Simulated before frame 0 so the road is already populated and settled.
    warmup_s: float = Field(6.0, ge=0.0, le=600.0)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    road: RoadConfig = Field(default_factory=RoadConfig)
    intersection: IntersectionConfig | None = Field(default_factory=IntersectionConfig)
    traffic: TrafficConfig = Field(default_factory=TrafficConfig)
    incidents: tuple[IncidentConfig, ...] = ()
    # None: one line across the whole road at x = 30 m.
    counting_lines: tuple[CountingLineConfig, ...] | None = None
    effects: EffectsConfig = Field(default_factory=EffectsConfig)
    # Scenery (trees, buildings, lamps) beside the road.
    scenery: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> SceneConfig:
        road = self.road
        if self.intersection is not None:
            x = self.intersection.x_m
            if not road.start_x_m + 60.0 <= x <= road.start_x_m + road.length_m - 60.0:
                raise ValueError(
                    "intersection.x_m must lie at least 60 m inside the road "
                    f"[{road.start_x_m}, {road.start_x_m + road.length_m}]"
                )
        for i, inc in enumerate(self.incidents):
            if inc.kind == "wrong_way" and road.lanes_per_direction < 2:
                # With one lane per direction oncoming traffic has nowhere to go.
                raise ValueError(
                    f"incidents.{i}.kind: wrong_way needs road.lanes_per_direction >= 2"
                )
            if inc.x_m is not None and not (
                road.start_x_m + 20.0 <= inc.x_m <= road.start_x_m + road.length_m - 20.0
            ):
                raise ValueError(f"incidents.{i}.x_m must lie on the road")
        return self

    @property
    def road_half_width(self) -> float:
        """Kerb-to-centre distance: vehicle lanes plus the bike lane."""
        r = self.road
        return r.lanes_per_direction * r.lane_width_m + (r.bike_lane_width_m if r.bike_lanes else 0)
