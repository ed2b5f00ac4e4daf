"""Service configuration: defaults < YAML file < ``ITS_*`` environment variables.

The YAML file is ``config/<environment>.yaml`` unless ``--config``/``ITS_CONFIG_FILE`` names
another. Every section forbids unknown keys, so a typo stops start-up instead of being
ignored; any problem surfaces as one ``ConfigError`` whose message names the field.
Nested fields are set from the environment with ``__``: ``ITS_GRPC__PORT=50060``.

Size: every section with the reason for each default, in the one file operators read.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from its_camera_ai.common._egress_settings import EgressSettings
from its_camera_ai.common._security_settings import SecuritySettings

__all__ = [
    "AnalyticsEngineSettings",
    "AnalyticsServiceSettings",
    "ConfigError",
    "DatabaseSettings",
    "DecoderSettings",
    "GrpcSettings",
    "HttpSettings",
    "InferenceSettings",
    "LoggingSettings",
    "PixelFormatName",
    "RedisSettings",
    "Settings",
    "TracingSettings",
    "TrackerSettings",
    "load_settings",
]

Environment = Literal["dev", "staging", "production"]
PixelFormatName = Literal["rgb24", "bgr24", "rgba", "gray8", "yuv420p", "nv12"]
_ENV_PREFIX = "ITS_"
_MIB = 1024 * 1024
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "[::1]", "localhost")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which field and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GrpcSettings(_Section):
    host: str = "[::]"
    # 0 asks the OS for a free port (tests); the bound port is logged.
    port: int = Field(50051, ge=0, le=65535)
    max_receive_message_bytes: int = Field(16 * _MIB, ge=1024)
    max_send_message_bytes: int = Field(16 * _MIB, ge=1024)
    # Back-pressure: beyond this many concurrent RPCs new ones get RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int | None = Field(None, ge=1)
    keepalive_time_seconds: float = Field(30.0, gt=0)
    keepalive_timeout_seconds: float = Field(10.0, gt=0)
    # Fail fast on clients pinging more often than this (protects against ping floods).
    min_client_ping_interval_seconds: float = Field(10.0, gt=0)
    # On SIGTERM: health goes NOT_SERVING, new RPCs are refused, in-flight ones get this long.
    drain_seconds: float = Field(10.0, ge=0)
    # SO_REUSEPORT: several processes of one service share the port and the kernel spreads
    # connections over them (scaling a Python service past one core). Off by default, so a
    # second instance started by mistake fails to bind instead of silently sharing.
    reuse_port: bool = False


class HttpSettings(_Section):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class TracingSettings(_Section):
    # OTLP/gRPC collector, e.g. http://otel-collector:4317. None: nothing is exported, and
    # the gRPC servers make no per-RPC spans (the frame spans of decoder and inference are
    # still made: they travel with the frames).
    otlp_endpoint: str | None = None
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)


def _secret_from_file(data: Any, key: str) -> Any:
    """``data`` with ``key`` read from the file ``{key}_file`` names (a mounted secret).

    Read once at load: the services hold one connection string per run. The whole file,
    less a trailing newline, so a DSN written by ``echo`` works.
    """
    if not isinstance(data, dict) or data.get(f"{key}_file") is None:
        return data
    if data.get(key) is not None:
        raise ValueError(f"{key} and {key}_file are exclusive: set one")
    path = Path(data[f"{key}_file"])
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{key}_file {str(path)!r} cannot be read ({exc})") from None
    if not value:
        raise ValueError(f"{key}_file {str(path)!r} is empty")
    return {**data, key: value}


class DatabaseSettings(_Section):
    # A libpq-style DSN; several hosts (``postgresql://a,b/db?target_session_attrs=read-write``)
    # for replicas. None: start the embedded PostgreSQL in ``embedded_data_dir``.
    dsn: SecretStr | None = None
    # The DSN from a mounted secret file instead (Kubernetes secrets as files).
    dsn_file: Path | None = None
    embedded_data_dir: Path = Path("var/postgres")
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(10, ge=1)
    connect_timeout_seconds: float = Field(5.0, gt=0)
    command_timeout_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _dsn_from_file(cls, data: Any) -> Any:
        return _secret_from_file(data, "dsn")


class RedisSettings(_Section):
    # redis://[:password@]host:port/db, rediss:// for TLS. None: run without Redis.
    url: SecretStr | None = None
    # The URL (it may hold a password) from a mounted secret file instead.
    url_file: Path | None = None
    cluster: bool = False
    socket_timeout_seconds: float = Field(2.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _url_from_file(cls, data: Any) -> Any:
        return _secret_from_file(data, "url")


class DecoderSettings(_Section):
    """The decoder service (``ITS_DECODER__*``); lists from the environment are JSON."""

    # Keys sealing source URIs: "id:base64(32 bytes)" entries separated by newlines or
    # commas, the first one sealing new values (see _crypto.py). From a mounted secret
    # file, or the variable itself. Neither: outside dev start-up fails; in dev a key is
    # generated once into dev_source_keys_file.
    source_keys: SecretStr | None = None
    source_keys_file: Path | None = None
    dev_source_keys_file: Path = Path("var/decoder/source-keys")

    # Directories file:// sources may read from (resolved, symlinks followed); empty
    # disables file sources.
    file_roots: tuple[Path, ...] = ()
    # File sources are paced to their timestamps (like a camera); False decodes as fast
    # as possible (replays, benchmarks).
    pace_files: bool = True

    max_cameras: int = Field(256, ge=1)
    # Shared-memory ring of each camera: slot count, pixel format of the frames, and a
    # prefix for the ring names ("<prefix><camera id>"), for several decoders on one host.
    ring_slots: int = Field(8, ge=2, le=4096)
    ring_pixel_format: PixelFormatName = "rgb24"
    ring_prefix: str = Field("", pattern=r"^[a-z0-9_-]{0,16}$")
    # FFmpeg decoding threads per camera. 1 gives the lowest latency and the most
    # cameras per core (frame threading adds a frame of delay per thread); 0 is automatic.
    codec_threads: int = Field(1, ge=0, le=64)

    # Opening a source, and waiting for its next packet, give up after these.
    connect_timeout_seconds: float = Field(10.0, gt=0, le=300)
    read_timeout_seconds: float = Field(5.0, gt=0, le=300)
    # Connected but no frame written for this long (packets that never decode, a frozen
    # encoder): the stream is declared stalled and re-opened.
    stall_timeout_seconds: float = Field(10.0, gt=0, le=600)
    # Reconnect delays: initial * multiplier^n, capped, each with +-jitter (a fraction).
    backoff_initial_seconds: float = Field(0.5, gt=0, le=60)
    backoff_max_seconds: float = Field(30.0, gt=0, le=3600)
    backoff_multiplier: float = Field(2.0, ge=1.0, le=10.0)
    backoff_jitter: float = Field(0.2, ge=0.0, le=1.0)
    # A live source this far behind real time loses frames (counted as dropped) instead
    # of delivering them late; the detector wants the present.
    max_lag_seconds: float = Field(1.0, gt=0, le=60)
    # Where sources may make the decoder connect (SSRF guard; _egress_settings.py).
    egress: EgressSettings = EgressSettings()

    @model_validator(mode="after")
    def _backoff_cap_covers_start(self) -> DecoderSettings:
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError("backoff_max_seconds must be >= backoff_initial_seconds")
        return self


class TrackerSettings(_Section):
    """ByteTrack-style association thresholds and track life cycle
    (``ITS_ANALYTICS__ENGINE__TRACKER__*``). Times are seconds of capture time."""

    # Detections at or above ``high_score`` take part in the first association; those in
    # [low_score, high_score) only in the second, against tracks already being followed
    # (ByteTrack's key idea: occluded objects produce low scores, noise rarely sits on a track).
    high_score: float = Field(0.5, ge=0.0, le=1.0)
    low_score: float = Field(0.1, ge=0.0, le=1.0)
    # Only confident detections start tracks, so a low-score blip never becomes one.
    new_track_score: float = Field(0.6, ge=0.0, le=1.0)
    # Nor does a car, truck or bus with at least this fraction of its box inside the box that
    # continued a track of its association group in the same frame: that is a part of the
    # vehicle (its cabin, its front half) boxed a second time, not another vehicle.
    birth_inside: float = Field(0.85, gt=0.0, le=1.0)
    # Minimum IoU per stage: first (high scores, incl. lost tracks), second (low scores),
    # tentative tracks against what remains.
    iou_high: float = Field(0.2, ge=0.0, le=1.0)
    iou_low: float = Field(0.5, ge=0.0, le=1.0)
    iou_tentative: float = Field(0.3, ge=0.0, le=1.0)
    # Tentative tracks and detections are scaled by 1 + this about their centres for stage 3.
    tentative_expand: float = Field(1.0, ge=0.0)
    # A matched box narrower or shorter than this fraction of the track's recent size (its
    # maximum, decaying with ``size_memory_s``) is a partial view: the object is going behind
    # something. It keeps the association and informs the position only (anchored on its
    # visible edges, with the predicted size), with its measurement std divided by
    # ``partial_trust``.
    partial_shrink: float = Field(0.6, gt=0.0, le=1.0)
    partial_trust: float = Field(0.5, gt=0.0, le=1.0)
    size_memory_s: float = Field(1.5, gt=0.0)
    # A match is also partial when detections reaching lower in the image (nearer the camera)
    # cover at least this fraction of the track's predicted box...
    occluded_fraction: float = Field(0.15, ge=0.0, le=1.0)
    # ...and the box is clearly cut: a dimension under this fraction of the prediction.
    occluded_cut: float = Field(0.75, gt=0.0, le=1.0)
    # A tentative track needs this many consecutive matches to be confirmed and get an id;
    # one miss removes it. Ids are never spent on blips.
    min_hits: int = Field(3, ge=1)
    # Lost tracks are predicted and kept for re-identification this long...
    lost_ttl_s: float = Field(2.0, ge=0.0)
    # ...or this long when they were standing still (speed under ``stationary_rel_per_s``
    # box heights per second): a stationary prediction does not drift, so a stopped car or
    # a person hidden again and again by passing traffic keeps its id (and its incident).
    stationary_ttl_s: float = Field(30.0, ge=0.0)
    stationary_rel_per_s: float = Field(0.2, ge=0.0)
    # ...and reported as present (occupancy, density, queues) this long after the last match.
    max_coast_s: float = Field(0.5, ge=0.0)
    # Buffered IoU for lost tracks: the predicted box grows by this fraction of its size per
    # second lost (capped), absorbing velocity error after an occlusion.
    lost_expand_per_s: float = Field(0.5, ge=0.0)
    lost_expand_max: float = Field(0.5, ge=0.0)
    # Calibrated cameras: a lost track is predicted on the road plane, at constant velocity
    # from where it was last seen with its bottom in sight, if that was at most this long
    # before it was lost. An older position is a stale one (the track may even have moved
    # on to another object since): the image filter, which has followed it, knows better.
    ground_fix_max_age_s: float = Field(1.0, ge=0.0)
    # Kalman noise, relative to the box height (scale-invariant across the image):
    # measurement std, process random walk of positions and velocities per sqrt(second),
    # initial velocity std. Close to ByteTrack's per-frame values expressed at 30 fps.
    std_measure: float = Field(0.05, gt=0.0)
    std_pos_per_s: float = Field(0.27, gt=0.0)
    std_vel_per_s: float = Field(1.0, gt=0.0)
    std_vel_init: float = Field(2.0, gt=0.0)

    @model_validator(mode="after")
    def _scores_ordered(self) -> TrackerSettings:
        if self.low_score > self.high_score:
            raise ValueError("low_score must be <= high_score")
        return self


class AnalyticsEngineSettings(_Section):
    """The analytics engine's tunables (``ITS_ANALYTICS__ENGINE__*``); the defaults suit a
    typical road camera at 10-30 fps. Times are seconds of capture time, never frames, so
    behaviour does not change with a camera's frame rate (1 to 120 fps)."""

    tracker: TrackerSettings = TrackerSettings()
    # Bin lengths produced; each must divide the next so bins nest.
    bin_seconds: tuple[int, ...] = Field((60, 900), min_length=1)
    # Time sanity, against analytics' wall clock when the frame arrives: a capture time more
    # than this ahead of it is refused (CAPTURE_TIME_IN_FUTURE), and so is one older than
    # the largest bin (CAPTURE_TIME_TOO_OLD); neither moves the camera's clock. Cameras and
    # servers keep NTP time, so a few seconds cover their disagreement; a frame from further
    # ahead would otherwise make every current frame "late" for good.
    max_capture_skew_seconds: float = Field(5.0, ge=0.0, le=3600.0)

    # -- input hygiene --
    max_detections: int = Field(1000, ge=1)
    max_frame_px: int = Field(16384, ge=1)
    min_box_px: float = Field(2.0, ge=0.0)
    # A box covering most of the frame is a detector failure, not a vehicle.
    max_box_area_fraction: float = Field(0.8, gt=0.0, le=1.0)
    # Drop bad detections and keep the frame (default), or refuse the whole frame.
    reject_frame_on_bad_detection: bool = False
    # A wall-clock gap beyond this is a stream outage: occupancy/Edie time is not accrued over it.
    max_frame_gap_s: float = Field(2.0, gt=0.0)

    # -- kinematics --
    # Speeds are the slope of a least-squares line through the ground positions of the last
    # ``speed_window_s``: exact for constant velocity, smoothing for noisy boxes.
    speed_window_s: float = Field(1.0, gt=0.0)
    speed_min_span_s: float = Field(0.3, ge=0.0)
    speed_min_samples: int = Field(3, ge=2)
    max_speed_kmh: float = Field(250.0, gt=0.0)
    # Counting-line hysteresis: a track must be this far past the line (px, or fraction of its
    # box height, whichever is larger) for its side to change, so jitter never double counts.
    line_margin_px: float = Field(2.0, ge=0.0)
    line_margin_rel: float = Field(0.1, ge=0.0)
    # Crossings no view shows, inferred from motion (analytics ``_inferred``): a track first
    # seen past a line moving away from it, or leaving the picture heading for it, crossed
    # it if its motion carries it over the drawn segment within this time. 0: never inferred.
    line_infer_s: float = Field(1.5, ge=0.0, le=10.0)
    # Vehicle lengths (m) per ObjectClass number for gaps (headway minus passing time).
    vehicle_length_m: tuple[float, ...] = (4.5, 4.5, 12.0, 12.0, 2.2, 1.8, 0.5)

    # -- stopped vehicles, queues --
    stopped_kmh: float = Field(5.0, ge=0.0)
    # Without calibration: stopped when image speed < this many box heights per second.
    stopped_rel_per_s: float = Field(0.15, ge=0.0)
    # Queued vehicles: stopped within this gap plus the vehicles' lengths (class defaults
    # above) of the lane's downstream end or of the vehicle ahead, or at any distance behind
    # a vehicle that is itself slow.
    queue_gap_m: float = Field(10.0, ge=0.0)
    queue_gap_rel: float = Field(3.0, ge=0.0)  # uncalibrated: gap in box heights

    # -- incidents (onset: condition held this long; clear: condition absent this long) --
    # Vehicle incidents need a box at least this tall (px): smaller ones are too far away
    # to tell a stop or a reversal from detector noise and id switches.
    incident_min_box_px: float = Field(12.0, ge=0.0)
    # When a track with an open incident ends, the event waits this long for a new track of
    # the same object to continue it (adopt): one event per incident, even when the object
    # was hidden long enough to lose its track. The new track must appear within
    # ``adopt_radius_m`` of the last evidence (plus walking distance for pedestrians).
    incident_grace_s: float = Field(5.0, ge=0.0)
    adopt_radius_m: float = Field(3.0, ge=0.0)
    adopt_walk_mps: float = Field(2.5, ge=0.0)
    stopped_onset_s: float = Field(20.0, ge=0.0)
    stopped_clear_s: float = Field(3.0, ge=0.0)
    wrong_way_distance_m: float = Field(10.0, ge=0.0)
    wrong_way_distance_rel: float = Field(3.0, ge=0.0)  # uncalibrated: box heights
    # ...and, calibrated or not, at least this many box heights against the lane in the image.
    wrong_way_min_image_rel: float = Field(1.0, ge=0.0)
    # ...and inside the central part of the lane: at least this fraction of the lane's width
    # from its edges (0.25: the middle half).
    wrong_way_inner_fraction: float = Field(0.25, ge=0.0, lt=0.5)
    # ...and, calibrated, at a plausible speed (faster is a track jumping between vehicles).
    wrong_way_max_kmh: float = Field(130.0, gt=0.0)
    wrong_way_clear_s: float = Field(3.0, ge=0.0)
    pedestrian_onset_s: float = Field(2.0, ge=0.0)
    pedestrian_clear_s: float = Field(3.0, ge=0.0)
    # Zones where people on a lane are expected (zebra crossings, refuges).
    pedestrian_exempt_zones: tuple[str, ...] = ()
    # Congestion: the lane's trailing-window density reaches LOS E (> 22 veh/km) or, without
    # calibration, its occupancy exceeds ``congestion_occupancy``; clears below the lower
    # thresholds held for ``congestion_clear_s``. The window smooths signal cycles.
    congestion_window_s: float = Field(120.0, gt=0.0)
    congestion_density: float = Field(22.0, ge=0.0)
    congestion_clear_density: float = Field(16.0, ge=0.0)
    congestion_occupancy: float = Field(0.6, ge=0.0, le=1.0)
    congestion_clear_occupancy: float = Field(0.4, ge=0.0, le=1.0)
    congestion_clear_s: float = Field(30.0, ge=0.0)
    # Also require the bucket's space-mean speed below this (calibrated lanes): a short lane
    # at LOS E/F by density alone can still be flowing at speed near capacity; None = density
    # only, as the wire enum's definition reads.
    congestion_max_speed_kmh: float | None = Field(60.0, gt=0.0)
    # Ongoing events are re-emitted with fresh evidence at most this often.
    event_update_s: float = Field(5.0, gt=0.0)

    # -- model drift --
    # Consecutive frames repeat the same objects: sample at most one frame per interval so
    # the histograms hold many objects, not one bus seen 300 times.
    drift_sample_interval_s: float = Field(1.0, ge=0.0)
    drift_baseline_detections: int = Field(20000, ge=1)
    drift_window_detections: int = Field(10000, ge=1)
    drift_chunk_detections: int = Field(1000, ge=1)
    drift_threshold: float = Field(0.1, gt=0.0)
    drift_clear: float = Field(0.05, ge=0.0)
    drift_score_bins: int = Field(20, ge=1)
    # Dirichlet smoothing added to every histogram cell: no zero probabilities, no log(0).
    drift_alpha: float = Field(0.5, gt=0.0)

    # -- live stats --
    stats_fps_window_s: float = Field(10.0, gt=0.0)
    stats_latency_window_s: float = Field(60.0, gt=0.0)

    @model_validator(mode="after")
    def _bins_nest(self) -> AnalyticsEngineSettings:
        bins = self.bin_seconds
        if any(b <= 0 for b in bins):
            raise ValueError("bin_seconds must be positive")
        if any(longer % shorter for shorter, longer in itertools.pairwise(bins)):
            raise ValueError("bin_seconds: each must divide the next (bins nest)")
        return self


class AnalyticsServiceSettings(_Section):
    """The analytics service (``ITS_ANALYTICS__*``): camera scenes, storage, spool, fan-out,
    retention, and the engine's tunables (``engine``)."""

    engine: AnalyticsEngineSettings = AnalyticsEngineSettings()

    # While PostgreSQL is unreachable, acknowledged batches are appended (fsynced) here and
    # replayed in order when it returns. Local disk of the node: never a network share.
    spool_dir: Path = Path("var/analytics/spool")
    # Beyond this the spool refuses batches and the stream fails with UNAVAILABLE.
    spool_max_bytes: int = Field(256 * _MIB, ge=64 * 1024)
    # A warning is logged once the spool passes this fraction of its size.
    spool_alert_fraction: float = Field(0.8, gt=0.0, lt=1.0)
    # How often the replay task looks for spooled batches to drain into PostgreSQL.
    replay_interval_seconds: float = Field(1.0, gt=0)
    # Camera scenes come from the decoder's CameraService (None: this process's own server,
    # when the decoder runs in it). They are listed again this often (and at once on a
    # camera created, or a batch for an unknown one); a broken watch of the decoder is
    # reopened after a capped, jittered backoff.
    decoder_target: str | None = None
    camera_refresh_seconds: float = Field(30.0, gt=0)
    reconnect_initial_seconds: float = Field(0.2, gt=0, le=60)
    reconnect_max_seconds: float = Field(5.0, gt=0, le=600)
    # Consecutive failures that open a dependency's breaker, and how long it stays open.
    breaker_failure_threshold: int = Field(3, ge=1)
    breaker_reset_seconds: float = Field(2.0, gt=0)
    # Rows older than this are deleted every retention_interval_seconds; None keeps all.
    retention_days: float | None = Field(90.0, gt=0)
    retention_interval_seconds: float = Field(3600.0, gt=0)
    # Live fan-out to Redis: channel prefix, pending messages kept before dropping (a slow
    # or absent Redis never holds up acknowledgements), lifetime of the cached stats.
    redis_prefix: str = Field("its:analytics", pattern=r"^[A-Za-z0-9:_-]{1,64}$")
    fanout_queue_size: int = Field(1024, ge=1)
    stats_ttl_seconds: int = Field(60, ge=1)

    @model_validator(mode="after")
    def _backoff_cap_covers_start(self) -> AnalyticsServiceSettings:
        if self.reconnect_max_seconds < self.reconnect_initial_seconds:
            raise ValueError("reconnect_max_seconds must be >= reconnect_initial_seconds")
        return self


class QueryCacheSettings(_Section):
    """The query service's two-level answer cache (``ITS_QUERY__CACHE__*``).

    L1 is this process's memory, L2 Redis (shared by every query process; skipped without
    Redis). An answer analytics announces a commit for is refreshed in the background while
    still served; the TTLs bound how old a served answer can be (from its computation)."""

    enabled: bool = True
    l1_ttl_seconds: float = Field(2.0, gt=0, le=3600)
    l1_max_entries: int = Field(10_000, ge=1)
    l2_ttl_seconds: float = Field(10.0, gt=0, le=86_400)
    # Background refreshes of one answer start at most this often: under frequent commits
    # this bounds the database work per distinct answer (and how long a change may go unseen
    # beyond the refresh itself).
    refresh_interval_seconds: float = Field(0.25, gt=0, le=3600)
    # Answers larger than this (serialised) are not cached.
    max_entry_bytes: int = Field(1 * _MIB, ge=1024)


class QueryServiceSettings(_Section):
    """The query service (``ITS_QUERY__*``): where camera scenes come from, request bounds,
    the answer cache and live event streams."""

    cache: QueryCacheSettings = QueryCacheSettings()
    # Camera scenes (existence, lane order) from the decoder's CameraService (None: this
    # process's own server, when the decoder runs in it).
    decoder_target: str | None = None
    camera_refresh_seconds: float = Field(30.0, gt=0)
    # Work bounds, refused before any SQL runs: a summary covers at most max_summary_days
    # and max_summary_camera_days (cameras x days); a counts series at most max_count_bins
    # bins, and at most max_summary_days when it comes from raw crossings. ListEvents is
    # bounded by its page size (its filters and orders are served by indexes).
    max_summary_days: float = Field(31.0, gt=0, le=366)
    max_summary_camera_days: float = Field(1000.0, gt=0)
    max_count_bins: int = Field(10_000, ge=1)
    # StreamEvents: a heartbeat when nothing happened for this long; without Redis (or
    # when a commit announcement is lost) the database is polled this often; the latest
    # changes are kept for clients to read at their own pace, and a client further behind
    # than that is disconnected (UNAVAILABLE, OVERLOADED).
    stream_heartbeat_seconds: float = Field(15.0, gt=0, le=300)
    stream_poll_seconds: float = Field(0.25, gt=0, le=60)
    stream_buffer_events: int = Field(10_000, ge=1)
    # Resume tokens older than this many changes behind the live position are OUT_OF_RANGE.
    stream_max_replay_events: int = Field(10_000, ge=1)
    # The decoder (camera scenes) and Redis (cache, announcements) sit behind breakers.
    breaker_failure_threshold: int = Field(3, ge=1)
    breaker_reset_seconds: float = Field(2.0, gt=0)
    reconnect_initial_seconds: float = Field(0.2, gt=0, le=60)
    reconnect_max_seconds: float = Field(5.0, gt=0, le=600)


BackendName = Literal["torch", "torch-compile", "tensorrt", "onnxruntime"]


class InferenceSettings(_Section):
    """The inference service (``ITS_INFERENCE__*``): model, backend, batching, delivery."""

    # The model: a shipped one by name (its_camera_ai.inference.models.SHIPPED_MODELS), or
    # a manifest (.json: its-detector-v1's format, or an adapter manifest for YOLOX /
    # Ultralytics exports, TorchScript or ONNX), or an Ultralytics YOLO TorchScript export
    # (.torchscript/.pt with the yolo_* options below). The manifest or export wins. The
    # default is the one that counts real traffic (docs/benchmarks.md, "Real clips"); the
    # simulator-trained its-detector-v1 scores higher on the simulator and misses real cars.
    model: Literal["its-detector-v1", "yolox-nano-coco", "yolox-nano-its"] = "yolox-nano-its"
    model_manifest: Path | None = None
    yolo_model: Path | None = None
    yolo_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    yolo_input_size: tuple[int, int] = (640, 640)
    yolo_num_classes: int = Field(80, ge=1, le=4096)
    # The network's input (width, height) instead of the manifest's: a larger one finds
    # smaller (farther) objects at the cost of speed, the shipped default 448x256 being sized
    # for four 16:9 720p cameras on two CPU cores (a 4:3 camera may want [416, 320]). The
    # shipped networks are fully convolutional, so any multiple of 32 runs; how accuracy and
    # speed change with it: docs/benchmarks.md "Input size" and "A 16:9 input". (A bare YOLO
    # export declares its own with yolo_input_size.)
    input_size: tuple[int, int] | None = None
    # Runtime: "torch" (eager), "torch-compile" (Inductor), "tensorrt" (Torch-TensorRT,
    # CUDA only), "onnxruntime" (CPU and fp32 only: the network exported to ONNX at
    # start-up, the default model 1.6-2.2x torch's fp32 at batch 1 and 8 with the same
    # detections, four 720p30 cameras carried on two AMD EPYC cores where torch carries
    # two; docs/benchmarks.md "ONNX Runtime"), or "auto" (the default: onnxruntime on a CPU
    # in fp32, torch otherwise; ``engine_backend``). Device in torch notation; fp16 needs
    # CUDA; bf16 needs a GPU or a CPU with bf16 instructions (AVX512-BF16 or AMX) and runs
    # on torch, its-detector-v1 1.7-2.3x faster than torch's fp32 (docs/benchmarks.md);
    # float32 stays the default: ONNX Runtime's is faster than torch's bf16 for the default
    # model, and other CPUs lack those instructions.
    backend: BackendName | Literal["auto"] = "auto"
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$")
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    # Compiled TensorRT engines, keyed by model hash, GPU and library versions.
    engine_cache_dir: Path = Path("var/inference/engines")
    # CPU threads for the network's operators, torch's and ONNX Runtime's alike (0: torch's
    # default, one per core).
    torch_threads: int = Field(0, ge=0, le=256)
    # Dynamic batching across cameras (Triton's max_batch_size and max_queue_delay).
    max_batch_size: int = Field(8, ge=1, le=256)
    max_queue_delay_ms: float = Field(5.0, ge=0.0, le=1000.0)
    # Frames waiting per camera; a newer frame pushes the oldest out (counted as skipped).
    frames_per_camera: int = Field(1, ge=1, le=64)
    # Detect calls waiting for a batch; beyond it Detect fails with UNAVAILABLE/OVERLOADED.
    max_pending_requests: int = Field(64, ge=1)
    # The frame pipeline sends analytics the detections scoring this or more (None: the
    # model's own threshold, 0.3 for the shipped YOLOX models; a Detect call's default stays
    # the model's). The default is the tracker's weak band (analytics.engine.tracker
    # .low_score): ByteTrack continues a followed track on a detection scoring 0.1-0.5, and
    # only one over 0.6 starts a track, so low scores carry a vehicle through the frames in
    # which the detector doubts it, and start none. Cut at 0.3, a far car scoring 0.1-0.2
    # for five frames lost its track and its crossing (docs/benchmarks.md, "The candidate
    # default rerun, and the tracker's weak band").
    score_threshold: float | None = Field(0.1, ge=0.0, le=1.0)
    # Where the rings come from: the decoder's CameraService (None: this process's own
    # server, when the decoder runs in it), plus rings named here (camera id -> ring).
    decoder_target: str | None = None
    cameras: dict[str, str] = {}
    # Where detections go: AnalyticsService (None: this process's own server, when
    # analytics runs in it). Frames not yet sent are bounded; the oldest are dropped first.
    analytics_target: str | None = None
    max_pending_frames: int = Field(9000, ge=1)
    # Batches in flight (the protocol allows 64). Few keep latency low: while they wait,
    # new frames coalesce into the next, larger batch instead of queueing one by one.
    max_unacked_batches: int = Field(4, ge=1, le=64)
    reconnect_initial_seconds: float = Field(0.2, gt=0, le=60)
    reconnect_max_seconds: float = Field(5.0, gt=0, le=600)

    @field_validator("input_size")
    @classmethod
    def _network_input(cls, size: tuple[int, int] | None) -> tuple[int, int] | None:
        if size is not None and not all(0 < v <= 4096 and v % 32 == 0 for v in size):
            raise ValueError(
                f"{list(size)}: width and height must be multiples of 32 from 32 to 4096"
            )
        return size

    @model_validator(mode="after")
    def _consistent(self) -> InferenceSettings:
        if self.model_manifest is not None and self.yolo_model is not None:
            raise ValueError("set model_manifest or yolo_model, not both")
        if self.input_size is not None and self.yolo_model is not None:
            raise ValueError("input_size is for manifest models; yolo_model uses yolo_input_size")
        if self.backend == "onnxruntime" and (self.device != "cpu" or self.precision != "fp32"):
            raise ValueError("backend onnxruntime runs on device cpu in precision fp32")
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise ValueError("precision fp16 needs a cuda device")
        if self.backend == "tensorrt" and not self.device.startswith("cuda"):
            raise ValueError("backend tensorrt needs a cuda device")
        if self.reconnect_max_seconds < self.reconnect_initial_seconds:
            raise ValueError("reconnect_max_seconds must be >= reconnect_initial_seconds")
        return self

    @property
    def engine_backend(self) -> BackendName:
        """The backend the engine is built with: ``backend``, with "auto" resolved."""
        if self.backend != "auto":
            return self.backend
        return "onnxruntime" if (self.device, self.precision) == ("cpu", "fp32") else "torch"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    environment: Environment = "dev"
    grpc: GrpcSettings = GrpcSettings()
    http: HttpSettings = HttpSettings()
    logging: LoggingSettings = LoggingSettings()
    tracing: TracingSettings = TracingSettings()
    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    decoder: DecoderSettings = DecoderSettings()
    analytics: AnalyticsServiceSettings = AnalyticsServiceSettings()
    query: QueryServiceSettings = QueryServiceSettings()
    inference: InferenceSettings = InferenceSettings()
    security: SecuritySettings = SecuritySettings()

    @model_validator(mode="after")
    def _production_needs_a_database(self) -> Settings:
        # The embedded PostgreSQL is a development convenience, never production storage.
        if self.environment == "production" and self.database.dsn is None:
            raise ValueError("database.dsn is required in production (set ITS_DATABASE__DSN)")
        return self

    @model_validator(mode="after")
    def _only_dev_is_open(self) -> Settings:
        security = self.security
        if self.environment == "dev":
            return self
        if security.anonymous_role not in ("auto", "none", "viewer"):
            raise ValueError(
                f"security.anonymous_role: {security.anonymous_role} is for dev only;"
                " outside dev an anonymous caller may at most be a viewer"
            )
        if self.environment == "production" and not security.tls.enabled:
            raise ValueError(
                "security.tls.cert_file and key_file are required in production"
                " (mint development ones with `its-camera-ai certs`)"
            )
        http = self.http
        metrics_guarded = security.metrics_token or security.metrics_token_file
        if http.enabled and http.host not in _LOOPBACK_HOSTS and not metrics_guarded:
            raise ValueError(
                f"http.host {http.host} exposes /metrics beyond loopback: set"
                " security.metrics_token_file (or bind http.host to 127.0.0.1)"
            )
        return self

    @property
    def anonymous_role(self) -> str | None:
        """The role of a caller with no credential, "auto" resolved; None: refused."""
        role = self.security.anonymous_role
        if role == "auto":
            return "admin" if self.environment == "dev" else None
        return None if role == "none" else role

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML document arrives as init kwargs; the environment must win over it.
        return env_settings, init_settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {path}: malformed YAML{where}: {problem}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return document


def _describe(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"{field}: unknown key")
        else:
            shown = (
                ""
                if "input" not in item or isinstance(item["input"], dict)
                else f" (got {item['input']!r})"
            )
            problems.append(f"{field}: {item['msg']}{shown}")
    return f"invalid configuration ({source}): " + "; ".join(problems)


def load_settings(
    config_file: Path | None = None,
    environment: str | None = None,
    *,
    config_dir: Path = Path("config"),
) -> Settings:
    """Build the settings, or raise ``ConfigError`` naming the first bad field.

    With no explicit file, ``ITS_CONFIG_FILE`` is used, else ``<config_dir>/<environment>.yaml``
    when it exists (environment from the argument, ``ITS_ENVIRONMENT``, or ``dev``).
    """
    environment = environment or os.environ.get(f"{_ENV_PREFIX}ENVIRONMENT") or "dev"
    explicit = config_file or (
        Path(os.environ[f"{_ENV_PREFIX}CONFIG_FILE"])
        if os.environ.get(f"{_ENV_PREFIX}CONFIG_FILE")
        else None
    )
    default_file = config_dir / f"{environment}.yaml"
    path = explicit if explicit is not None else (default_file if default_file.is_file() else None)

    document = _read_yaml(path) if path is not None else {}
    document.setdefault("environment", environment)
    source = f"{path} and {_ENV_PREFIX}* environment" if path else f"{_ENV_PREFIX}* environment"
    try:
        return Settings(**document)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
