"""Each camera's scene, learnt from the decoder's ``CameraService`` API (never its storage).

Used by every service that needs the cameras' scenes without owning them: analytics (what to
measure) and the query service (which cameras exist, their lanes' order).

The directory lists every camera (``ListCameras``, page by page) and follows
``WatchCameraStatus``: its first messages name every camera, later ones a camera created or
deleted, and, with ``refresh_interval``, every camera again periodically. A camera not
listed yet makes it list again, a deleted one is dropped, and on a periodic message the
list is read again once it is ``refresh_seconds`` old (an update of a scene alone changes
no status, so it arrives that way). A batch for a camera not listed yet lists again at once
too, at most once a second, so a producer sending an unknown camera cannot hammer the
decoder. While the decoder is unreachable the last scenes listed stay in use, and the
watch is reopened with a capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.common import (
    Backoff,
    CircuitBreaker,
    InvalidArgumentError,
    UnavailableError,
    camera_id_from_name,
)
from its_camera_ai.scene._proto import scene_from_proto
from its_camera_ai.scene._scene import CameraScene

__all__ = ["DECODER_FAILURES", "CameraDirectory", "KnownCamera"]

# A call to the decoder failed: what the breaker in front of it counts.
DECODER_FAILURES: tuple[type[BaseException], ...] = (grpc.aio.AioRpcError, TimeoutError)
# ...and what a caller sees while the decoder is down, the open breaker included.
_DECODER_DOWN: tuple[type[BaseException], ...] = (UnavailableError, *DECODER_FAILURES)

_log = logging.getLogger(__name__)

_PAGE_SIZE = 1000  # the most the decoder returns per page
_CALL_TIMEOUT_SECONDS = 10.0
_MISS_REFRESH_SECONDS = 1.0
# The decoder refuses watch refresh intervals below this.
_MIN_WATCH_REFRESH_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class KnownCamera:
    camera_id: str
    scene: CameraScene
    # The configured resolution: the frame size of frames that do not carry their own.
    width: int
    height: int


def _known(camera_id: str, camera: camera_pb2.Camera) -> KnownCamera | None:
    try:
        scene = scene_from_proto(camera)
    except InvalidArgumentError as exc:
        # The camera service validates scenes with the same rules; a camera that fails
        # anyway (accepted under older rules) stays unknown rather than counting on a
        # wrong scene.
        _log.error("camera scene unusable", extra={"camera": camera_id, "error": str(exc)})
        return None
    return KnownCamera(camera_id, scene, camera.resolution.width, camera.resolution.height)


class CameraDirectory:
    """The decoder's cameras and their scenes; ``follow`` keeps them current (a task)."""

    def __init__(
        self,
        target: Callable[[], str],
        breaker: CircuitBreaker,
        *,
        refresh_seconds: float,
        reconnect_initial_seconds: float,
        reconnect_max_seconds: float,
        open_channel: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
    ) -> None:
        # Asked for when first needed: in `serve all` the decoder is this process's own
        # server, whose port is known only once it is bound.
        self._target = target
        # Builds the channel with the credentials the decoder wants (Runtime.peer_channel).
        self._open_channel = open_channel
        self._breaker = breaker
        self._refresh_seconds = refresh_seconds
        self._backoff = Backoff(reconnect_initial_seconds, reconnect_max_seconds)
        self._channel: grpc.aio.Channel | None = None
        self._stub: camera_service_pb2_grpc.CameraServiceAsyncStub | None = None
        self._cameras: dict[str, KnownCamera] = {}
        # Cameras the decoder has but whose scene is unusable: listed, not to list again for.
        self._unusable: frozenset[str] = frozenset()
        self._listed_at: float | None = None
        self._listing = asyncio.Lock()

    @property
    def known(self) -> dict[str, KnownCamera]:
        """The cameras listed last (a snapshot: the directory replaces, never mutates it)."""
        return self._cameras

    async def get(self, camera_id: str) -> KnownCamera | None:
        """The camera's scene, or None if the decoder has no such camera (with a usable
        scene).

        Raises ``UnavailableError`` when the camera is not known yet and the decoder cannot
        be reached: "unknown" would be a final rejection, and it may well exist.
        """
        known = self._cameras.get(camera_id)
        if known is not None:
            return known
        async with self._listing:  # concurrent misses wait for one listing
            if camera_id not in self._cameras and self._listed_ago() >= _MISS_REFRESH_SECONDS:
                try:
                    await self._list()
                except _DECODER_DOWN as exc:
                    raise UnavailableError(
                        "camera scenes unavailable: the decoder cannot be reached"
                    ) from exc
        return self._cameras.get(camera_id)

    async def follow(self) -> None:
        """List and watch the decoder's cameras until cancelled."""
        while True:
            try:
                await self._watch()
                _log.info("decoder closed the camera watch")
            except _DECODER_DOWN as exc:
                _log.warning("camera discovery broke", extra={"error": str(exc)})
            await asyncio.sleep(self._backoff.next_delay())

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    def _camera_service(self) -> camera_service_pb2_grpc.CameraServiceAsyncStub:
        if self._stub is None:
            self._channel = self._open_channel(self._target())
            self._stub = camera_service_pb2_grpc.CameraServiceStub(self._channel)
        return self._stub

    def _listed_ago(self) -> float:
        return float("inf") if self._listed_at is None else time.monotonic() - self._listed_at

    async def _watch(self) -> None:
        request = camera_service_pb2.WatchCameraStatusRequest()
        request.refresh_interval.FromNanoseconds(
            round(max(self._refresh_seconds, _MIN_WATCH_REFRESH_SECONDS) * 1e9)
        )
        call = self._camera_service().WatchCameraStatus(request)
        try:
            async with self._listing:
                await self._list()
            self._backoff.reset()  # the decoder answers: the next break starts afresh
            async for message in call:
                camera_id = camera_id_from_name(message.status.name, "/status")
                if camera_id is None:
                    continue
                if message.camera_deleted:
                    self._cameras.pop(camera_id, None)
                    continue
                listed = camera_id in self._cameras or camera_id in self._unusable
                if not listed or self._listed_ago() >= self._refresh_seconds:
                    async with self._listing:
                        await self._list()
        finally:
            call.cancel()

    async def _list(self) -> None:
        """Replace the directory with the decoder's current cameras (hold ``_listing``)."""
        cameras = await self._breaker.call(self._list_pages)
        known = {camera_id: _known(camera_id, camera) for camera_id, camera in cameras.items()}
        self._cameras = {camera_id: k for camera_id, k in known.items() if k is not None}
        self._unusable = frozenset(camera_id for camera_id, k in known.items() if k is None)
        self._listed_at = time.monotonic()

    async def _list_pages(self) -> dict[str, camera_pb2.Camera]:
        service = self._camera_service()
        request = camera_service_pb2.ListCamerasRequest(page_size=_PAGE_SIZE)
        cameras: dict[str, camera_pb2.Camera] = {}
        while True:
            response = await service.ListCameras(request, timeout=_CALL_TIMEOUT_SECONDS)
            for camera in response.cameras:
                camera_id = camera_id_from_name(camera.name)
                if camera_id is not None:
                    cameras[camera_id] = camera
            if not response.next_page_token:
                return cameras
            request.page_token = response.next_page_token
