"""Keeps each camera's worker matching its configuration, without restarting the others.

RPCs only state what a camera should be doing (``apply``: decode this spec, or nothing);
a small reconciling task per camera does the slow part off the RPC path: it stops the old
worker, waits for its thread to release the ring (a new ring of the same name cannot be
created while the old writer lives), then starts the new one. Changes that arrive while
it works coalesce: only the latest wish is acted on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from its_camera_ai.common import DecoderSettings
from its_camera_ai.decoder._egress import EgressPolicy
from its_camera_ai.decoder._metrics import DecoderMetrics
from its_camera_ai.decoder._sink import ring_name_for
from its_camera_ai.decoder._status import CameraState, StatusBoard, StatusTracker
from its_camera_ai.decoder._worker import CameraWorker, DecodeSpec

__all__ = ["Supervisor"]

_log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Camera:
    camera_id: str
    desired: DecodeSpec | None = None
    # Restart a worker that ended by itself (failed, or its file ended) even if the spec
    # is unchanged: any update of a camera is a request to try again.
    retry: bool = False
    failure: str = ""
    worker: CameraWorker | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    removed: bool = False


class Supervisor:
    def __init__(
        self,
        settings: DecoderSettings,
        board: StatusBoard,
        metrics: DecoderMetrics,
        *,
        egress: EgressPolicy,
    ) -> None:
        self._settings = settings
        # Checked by every worker before it connects.
        self._egress = egress
        self._board = board
        self._metrics = metrics
        self._cameras: dict[str, _Camera] = {}
        # Cameras being removed, until their worker has let go of the ring: a camera of
        # the same id created meanwhile waits for this before starting.
        self._closing: dict[str, asyncio.Task[None]] = {}

    def apply(self, camera_id: str, spec: DecodeSpec | None, *, failure: str = "") -> None:
        """Decode ``spec`` for the camera (None: stop it). With ``failure`` the camera
        cannot run at all (say, its source cannot be unsealed): it is parked as FAILED."""
        camera = self._cameras.get(camera_id)
        if camera is None:
            self._board.track(camera_id)
            camera = self._cameras[camera_id] = _Camera(camera_id)
            camera.task = asyncio.get_running_loop().create_task(
                self._reconcile(camera), name=f"decoder-supervise-{camera_id}"
            )
        camera.desired, camera.failure, camera.retry = spec, failure, True
        camera.wake.set()

    async def remove(self, camera_id: str) -> None:
        """Stop the camera's worker, wait until its ring is gone, and forget the camera."""
        camera = self._cameras.pop(camera_id, None)
        if camera is not None and camera.task is not None:
            camera.removed = True
            camera.wake.set()
            self._closing[camera_id] = camera.task
            try:
                await camera.task
            finally:
                if self._closing.get(camera_id) is camera.task:
                    del self._closing[camera_id]
        self._board.forget(camera_id)
        self._metrics.forget(camera_id)

    async def close(self) -> None:
        """Stop every worker (service shutdown)."""
        await asyncio.gather(*(self.remove(camera_id) for camera_id in list(self._cameras)))

    async def _reconcile(self, camera: _Camera) -> None:
        tracker = self._board.track(camera.camera_id)
        closing = self._closing.get(camera.camera_id)
        if closing is not None:
            await asyncio.shield(closing)
        while True:
            await camera.wake.wait()
            camera.wake.clear()
            try:
                await self._converge(camera, tracker)
            except Exception:
                # A bug here must not leave the camera unsupervised for good.
                _log.exception("supervising a camera failed", extra={"camera": camera.camera_id})
                tracker.set_state(CameraState.CAMERA_STATE_FAILED, "internal decoder error")
            if camera.removed:
                return

    async def _converge(self, camera: _Camera, tracker: StatusTracker) -> None:
        """One step towards what the camera should be doing."""
        worker = camera.worker
        wanted = None if camera.removed or camera.failure else camera.desired
        if worker is not None and (worker.spec != wanted or (camera.retry and worker.ended)):
            worker.stop()
            # The thread ends at its next packet or timeout; wait for it off the loop.
            await asyncio.to_thread(worker.join)
            camera.worker = None
        camera.retry = False
        if camera.removed:
            return
        if camera.failure:
            tracker.set_state(CameraState.CAMERA_STATE_FAILED, camera.failure)
        elif wanted is None:
            tracker.set_state(CameraState.CAMERA_STATE_STOPPED)
        elif camera.worker is None:
            camera.worker = CameraWorker(
                wanted,
                self._settings,
                ring_name=ring_name_for(self._settings.ring_prefix, camera.camera_id),
                tracker=tracker,
                metrics=self._metrics.camera(camera.camera_id),
                egress=self._egress,
            )
            camera.worker.start()
            _log.info(
                "camera started",
                extra={"camera": camera.camera_id, "source": wanted.source.masked},
            )
