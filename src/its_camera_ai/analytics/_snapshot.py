"""The analytics engines as the snapshot routes' ``CameraSource``, and their registration
on the host's HTTP side port (``serve_snapshots``)."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence

from its_camera_ai.analytics._ingest import Ingestor
from its_camera_ai.analytics._records import ObjectClass, Scope
from its_camera_ai.common import Runtime, UnavailableError
from its_camera_ai.decoder._sink import ring_name_for
from its_camera_ai.scene import CameraDirectory, KnownCamera
from its_camera_ai.snapshot import CameraPicture, RingFrames, TrackBox, add_snapshot_routes

__all__ = ["EngineCameras", "serve_snapshots"]

_NS = 1_000_000_000
# A camera whose newest processed frame is older than this is shown as stale.
_STALE_SECONDS = 10.0
# The canvas of a camera whose resolution the decoder has not learnt yet (no frame).
_UNKNOWN_SIZE = (640, 360)


class EngineCameras:
    """The decoder's cameras as this instance's engines last processed them."""

    def __init__(self, cameras: CameraDirectory, ingestor: Ingestor) -> None:
        self._cameras = cameras
        self._ingestor = ingestor

    def camera_ids(self) -> Sequence[str]:
        return list(self._cameras.known)

    async def _known(self, camera_id: str) -> KnownCamera | None:
        known = self._cameras.known.get(camera_id)
        if known is None:
            with contextlib.suppress(UnavailableError):  # the decoder is down: not known
                known = await self._cameras.get(camera_id)
        return known

    async def picture(self, camera_id: str) -> CameraPicture | None:
        """Read on the event loop between batches, so the engine is consistent."""
        known = await self._known(camera_id)
        if known is None:
            return None
        size = (known.width, known.height) if known.width and known.height else _UNKNOWN_SIZE
        engine = self._ingestor.engine(camera_id)
        if engine is None or engine.last_ns is None:
            return CameraPicture(camera_id, *size, known.scene.spec, (), {}, None, None, "waiting")
        ids, boxes, classes = engine.tracker.last_output()
        tracks = tuple(
            TrackBox(track_id, ObjectClass(cls).name.lower(), (x1, y1, x2, y2))
            for track_id, cls, (x1, y1, x2, y2) in zip(
                ids.tolist(), classes.tolist(), boxes.tolist(), strict=True
            )
        )
        longest = max(engine.cfg.bin_seconds)
        since_ns = engine.last_ns - engine.last_ns % (longest * _NS)
        counts = engine.bins.volumes(Scope.LINE, longest, since_ns)
        age_s = (time.time_ns() - engine.last_ns) / _NS
        state = "live" if age_s < _STALE_SECONDS else "stale"
        return CameraPicture(camera_id, *size, engine.scene.spec, tracks, counts, since_ns,
                             engine.last_seq, state)  # fmt: skip


def serve_snapshots(runtime: Runtime, cameras: CameraDirectory, ingestor: Ingestor) -> None:
    """Add the snapshot routes to the host's side port; frames come from the rings the
    decoder on this host writes (``decoder.ring_prefix`` + camera id), when there are."""
    assert runtime.authenticator is not None  # set by the host before units register
    frames = RingFrames(functools.partial(ring_name_for, runtime.settings.decoder.ring_prefix))
    add_snapshot_routes(
        runtime.http_routes,
        EngineCameras(cameras, ingestor),
        frames,
        runtime.authenticator,
        log_access=runtime.settings.environment != "dev",
    )
    runtime.on_shutdown.append(frames.close)
