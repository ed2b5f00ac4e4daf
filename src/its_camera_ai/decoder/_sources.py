"""Opening video sources and pulling decoded pictures out of them.

Network streams and files go through PyAV/FFmpeg (demux, then decode packet by packet so a
corrupt packet costs one frame, not the stream); the synthetic source renders the traffic
simulator live. Failures become ``SourceError``s whose message is safe to show (the URI is
masked) and which say whether retrying can help: an unreachable or silent camera is worth
reconnecting to, a missing file or a rejected password is not.

A camera's worker opens and reads its source inside ``stoppable(stop)``: setting ``stop``
then interrupts a blocking open or read within FFmpeg's polling period (0.1 s), so a
camera stuck connecting to a silent server stops at once instead of after its timeout.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import av
import av.container.core
import av.error
from pydantic import ValidationError

from its_camera_ai.common import DecoderSettings
from its_camera_ai.decoder._uri import SourceKind, SourceUri, UriError, scrub

__all__ = [
    "SIM_SCENES",
    "SUPPORTED_CODECS",
    "Picture",
    "Source",
    "SourceError",
    "SourceOpener",
    "open_source",
    "probe_file",
    "scene_config",
    "stoppable",
]

# What the decoder is built and tested for: camera codecs (and MJPEG over HTTP).
SUPPORTED_CODECS = frozenset({"h264", "hevc", "mjpeg"})
# The simulator's scenes a ``sim://`` URI may name as its host: today the one street
# scene (a road with a signalised intersection), ``sim://road?...``.
SIM_SCENES = ("road",)
# Failures no reconnect can fix: the camera's configuration must change first.
_PERMANENT = (
    av.error.HTTPUnauthorizedError,
    av.error.HTTPForbiddenError,
    av.error.HTTPNotFoundError,
    av.error.ProtocolNotFoundError,
    av.error.DecoderNotFoundError,
    av.error.DemuxerNotFoundError,
)
# Local files that are missing or unreadable stay so until someone fixes them.
_PERMANENT_FOR_FILES = (
    av.error.FileNotFoundError,
    av.error.PermissionError,
    av.error.IsADirectoryError,
    av.error.InvalidDataError,
)
# A web server that answered with something that is not video will answer so again. (Over
# RTSP the same error also means a network fault, which retrying does fix.)
_PERMANENT_FOR_HTTP = (av.error.InvalidDataError,)


# Called with a media time (seconds); returns when that moment has come.
Pacer = Callable[[float], None]

# The stop event of the worker running in this thread (see ``stoppable``).
_this_thread = threading.local()
# How far each clock reading after a stop jumps: beyond any timeout (at most 300 s).
_JUMP_SECONDS = 86_400.0


class _StoppableClock:
    """Stands in for the ``time`` module inside PyAV's container code.

    PyAV's interrupt callback, which FFmpeg polls every 0.1 s while it waits on the
    network, ends the wait once ``time.monotonic()`` passes the deadline it computed from
    the same clock when the open or read began; PyAV has no other way to interrupt one.
    In a thread whose worker was asked to stop, every reading here is a day later than the
    last, so whichever deadline FFmpeg holds, set before or after the stop, has passed at
    its next poll. Other threads, and threads without a worker, see the real clock.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def monotonic(self) -> float:
        now = time.monotonic()
        stop: threading.Event | None = getattr(_this_thread, "stop", None)
        if stop is None or not stop.is_set():
            return now
        jumps: int = _this_thread.jumps + 1
        _this_thread.jumps = jumps
        return now + jumps * _JUMP_SECONDS


def _install_stoppable_clock() -> None:
    # Only over the module PyAV's own code uses (a PyAV that reads its clock elsewhere
    # keeps its timeouts and is merely not interruptible).
    if getattr(av.container.core, "time", None) is time:
        av.container.core.time = _StoppableClock()  # type: ignore[attr-defined]


@contextlib.contextmanager
def stoppable(stop: threading.Event) -> Iterator[None]:
    """Within this, in this thread, setting ``stop`` interrupts FFmpeg's blocking opens
    and reads (they fail as timed out; the caller checks ``stop`` to tell the two apart)."""
    _install_stoppable_clock()
    _this_thread.stop, _this_thread.jumps = stop, 0
    try:
        yield
    finally:
        _this_thread.stop = None


class SourceError(Exception):
    """The source failed; ``message`` is masked, ``permanent`` says retrying will not help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


@dataclass(slots=True)
class Picture:
    """One decoded frame with its timing: ``media_time`` in seconds on the source's clock,
    ``capture_ns`` wall-clock arrival of its data, ``started`` the perf_counter() then (for
    the decode latency)."""

    frame: av.VideoFrame
    media_time: float
    pts: int
    capture_ns: int
    started: float


class Source(Protocol):
    def pictures(self) -> Iterator[Picture | None]:
        """Decoded pictures until the end of the stream (raises SourceError on failure);
        None for a packet that gave no picture, so the caller can check for a stall."""
        ...

    def rewind(self) -> None:
        """Start again from the beginning (file sources that loop)."""
        ...

    def close(self) -> None: ...


def _describe(exc: Exception, source: SourceUri) -> str:
    # FFmpeg errors carry the URL (with credentials) as their filename: use the reason
    # alone, and scrub it too in case a library put the URL in the text.
    reason = exc.strerror if isinstance(exc, av.error.FFmpegError) and exc.strerror else str(exc)
    return scrub(f"{source.masked}: {reason}", source.uri)


def _classify(
    exc: Exception, source: SourceUri, doing: str, *, waited: float, limit: float
) -> SourceError:
    """``waited``: how long the failed call blocked; at ``limit`` it was our timeout that
    interrupted it, whatever error FFmpeg made of the interruption."""
    if isinstance(exc, av.error.ExitError) or waited >= limit:
        return SourceError(f"{doing} {source.masked}: timed out after {limit:g} s", permanent=False)
    permanent = (
        isinstance(exc, _PERMANENT)
        or (source.kind is SourceKind.FILE and isinstance(exc, _PERMANENT_FOR_FILES))
        or (source.kind is SourceKind.HTTP and isinstance(exc, _PERMANENT_FOR_HTTP))
    )
    return SourceError(f"{doing} {_describe(exc, source)}", permanent=permanent)


def _options(source: SourceUri) -> dict[str, str]:
    # Network sources may only use their own protocols: what a camera or a playlist it
    # serves names next must not reach files, gopher or other services (_egress.py).
    if source.kind is SourceKind.RTSP:
        # TCP unless the URI asks otherwise with FFmpeg's own "?udp" (stripped before it
        # reaches the camera): no packet loss, and it passes NAT and firewalls.
        return {"rtsp_transport": "tcp", "protocol_whitelist": "rtsp,rtsps,rtp,srtp,tcp,udp,tls"}
    if source.kind is SourceKind.HTTP:
        # A redirect is not followed: its target was never checked by the egress policy.
        return {"max_redirects": "0", "protocol_whitelist": "http,https,tcp,tls,crypto,httpproxy"}
    if source.kind is SourceKind.UDP:
        # A burst that overflows the socket buffer loses packets (counted as corrupt
        # frames) instead of ending the stream.
        return {"overrun_nonfatal": "1", "fifo_size": "1000000", "protocol_whitelist": "udp,rtp"}
    if source.kind is SourceKind.FILE:
        # A playlist or concat file among the allowed ones must not reach out of them to
        # the network (FFmpeg would follow its entries).
        return {"protocol_whitelist": "file"}
    return {}


class AvSource:
    """A stream or file demuxed and decoded by FFmpeg."""

    def __init__(
        self,
        source: SourceUri,
        settings: DecoderSettings,
        on_loss: Callable[[int], None],
        pace: Pacer | None,
    ) -> None:
        self._source = source
        self._on_loss = on_loss
        self._pace = pace
        target = str(source.path) if source.path is not None else source.uri
        self._read_timeout = settings.read_timeout_seconds
        started = time.monotonic()
        try:
            self._container = av.open(
                target,
                options=_options(source),
                timeout=(settings.connect_timeout_seconds, settings.read_timeout_seconds),
            )
        except av.error.FFmpegError as exc:
            waited = time.monotonic() - started
            limit = settings.connect_timeout_seconds
            raise _classify(exc, source, "cannot open", waited=waited, limit=limit) from None
        try:
            self._stream = self._video_stream()
        except SourceError:
            self._container.close()
            raise
        context = self._stream.codec_context
        context.thread_count = settings.codec_threads
        # Frame threading delays every frame by one per thread; slices do not.
        context.thread_type = "SLICE" if settings.codec_threads == 1 else "AUTO"
        self._frame_period = 1.0 / float(self._stream.average_rate or 30)
        self._count = 0

    def _video_stream(self) -> Any:
        if not self._container.streams.video:
            raise SourceError(f"{self._source.masked}: no video stream", permanent=True)
        stream = self._container.streams.video[0]
        codec = stream.codec_context.name
        if codec not in SUPPORTED_CODECS:
            raise SourceError(
                f"{self._source.masked}: codec {codec} is not supported"
                f" (use {', '.join(sorted(SUPPORTED_CODECS))})",
                permanent=True,
            )
        return stream

    def pictures(self) -> Iterator[Picture | None]:
        decode = self._stream.codec_context.decode
        packets = self._container.demux(self._stream)
        while True:
            packet = self._next_packet(packets)
            if packet is None:
                return
            if self._pace is not None and packet.dts is not None:
                self._pace(float(packet.dts * packet.time_base))
            capture_ns, started = time.time_ns(), time.perf_counter()
            frames = []
            if packet.is_corrupt:
                self._on_loss(1)
            else:
                try:
                    frames = decode(packet)
                except av.error.FFmpegError:
                    # One undecodable packet: the next keyframe repairs the picture.
                    self._on_loss(1)
            if not frames:
                yield None
            for frame in frames:
                yield Picture(frame, self._media_time(frame), frame.pts or 0, capture_ns, started)

    def _next_packet(self, packets: Iterator[av.Packet[Any]]) -> av.Packet[Any] | None:
        """The next packet, None at the end of the stream; a read that fails (or that our
        read timeout interrupts) is a SourceError."""
        waiting_since = time.monotonic()
        try:
            return next(packets, None)
        except av.error.FFmpegError as exc:
            waited = time.monotonic() - waiting_since
            raise _classify(
                exc, self._source, "lost", waited=waited, limit=self._read_timeout
            ) from None

    def _media_time(self, frame: av.VideoFrame) -> float:
        self._count += 1
        if frame.time is not None:
            return float(frame.time)
        # Streams without timestamps: assume the nominal rate.
        return self._count * self._frame_period

    def rewind(self) -> None:
        try:
            self._container.seek(0)
        except av.error.FFmpegError as exc:
            raise _classify(
                exc, self._source, "cannot rewind", waited=0.0, limit=self._read_timeout
            ) from None

    def close(self) -> None:
        self._container.close()


def scene_config(source: SourceUri) -> Any:
    """The simulator scene a ``sim://`` URI asks for: one of ``SIM_SCENES``, with query
    parameters seed, fps, condition, width and height (e.g.
    ``sim://road?seed=7&condition=night&width=640&height=360``). Raises ``UriError`` with a
    readable reason (unsupported for an unknown scene)."""
    from its_camera_ai.sim import SceneConfig  # noqa: PLC0415 - numpy-heavy

    if source.host not in SIM_SCENES:
        raise UriError(
            f"simulator scene {source.host!r} does not exist (use {', '.join(SIM_SCENES)})",
            unsupported=True,
        )
    params = dict(parse_qsl(urlsplit(source.uri).query))
    camera = {k: params.pop(k) for k in ("width", "height") if k in params}
    unknown = set(params) - {"seed", "fps", "condition"}
    if unknown:
        raise UriError(f"unknown simulator parameter(s): {', '.join(sorted(unknown))}")
    try:
        return SceneConfig.model_validate({"camera": camera, **params})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise UriError(f"simulator scene: {problems}") from None


class SyntheticSource:
    """The traffic simulator rendered frame by frame, as a camera would deliver it."""

    def __init__(self, source: SourceUri, pace: Pacer | None) -> None:
        from its_camera_ai.sim import Scene  # noqa: PLC0415

        try:
            config = scene_config(source)
        except UriError as exc:
            raise SourceError(f"{source.masked}: {exc}", permanent=True) from None
        # Live for as long as the camera runs: no history of every crossing kept.
        self._scene = Scene(config, keep_crossings=False)
        self._pace = pace

    def pictures(self) -> Iterator[Picture | None]:
        while True:
            if self._pace is not None:
                self._pace(self._scene.time_s)
            # Rendering is the camera's exposure: the frame is captured now.
            capture_ns, started = time.time_ns(), time.perf_counter()
            rgb, truth = self._scene.render()
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            yield Picture(frame, truth.time_s, truth.frame, capture_ns, started)
            self._scene.step()

    def rewind(self) -> None:
        """A live scene has no beginning to go back to."""

    def close(self) -> None:
        """Nothing to release: the scene is plain memory."""


class SourceOpener(Protocol):
    """What ``CameraWorker`` opens a source with: ``open_source``, or a test's script."""

    def __call__(
        self,
        source: SourceUri,
        settings: DecoderSettings,
        *,
        on_loss: Callable[[int], None],
        pace: Pacer | None,
    ) -> Source: ...


def open_source(
    source: SourceUri,
    settings: DecoderSettings,
    *,
    on_loss: Callable[[int], None],
    pace: Pacer | None,
) -> Source:
    """Open ``source``. ``on_loss`` counts packets lost to corruption; ``pace``, when
    given, is called with each packet's media time before it is decoded (replays)."""
    if source.kind is SourceKind.SYNTHETIC:
        return SyntheticSource(source, pace)
    return AvSource(source, settings, on_loss, pace)


def probe_file(source: SourceUri) -> None:
    """Raise ``UriError`` if a file source cannot be decoded: checked on create, so a wrong
    file is INVALID_ARGUMENT rather than a camera that fails later."""
    if source.path is None or not source.path.is_file():
        raise UriError("no such file")
    try:
        with av.open(str(source.path), options=_options(source), timeout=5.0) as container:
            if not container.streams.video:
                raise UriError("has no video stream", unsupported=True)
            codec = container.streams.video[0].codec_context.name
            if codec not in SUPPORTED_CODECS:
                raise UriError(f"codec {codec} is not supported", unsupported=True)
    except av.error.FFmpegError as exc:
        raise UriError(f"is not a readable video ({exc.strerror})", unsupported=True) from None
