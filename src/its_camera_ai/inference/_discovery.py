"""Which rings to read: the decoder's live camera statuses, plus rings named in config.

The decoder's ``CameraService.WatchCameraStatus`` stream starts with every camera's status
and then reports each change of state or ring, creation and deletion: exactly the events
that attach and detach feeds, with no polling. When the stream breaks (decoder restarting,
network) it is reopened with a capped, jittered backoff; the new stream's snapshot brings
the feeds back in step. Cameras configured statically (``inference.cameras``) are set once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from its.camera.v1 import camera_service_pb2, camera_service_pb2_grpc, camera_status_pb2
from its_camera_ai.common import Backoff, camera_id_from_name

__all__ = ["watch_decoder"]

_log = logging.getLogger(__name__)

# A ring exists and is being (or about to be) written in these states.
_LIVE = {
    camera_status_pb2.CAMERA_STATE_CONNECTING,
    camera_status_pb2.CAMERA_STATE_STREAMING,
    camera_status_pb2.CAMERA_STATE_BACKING_OFF,
}


async def watch_decoder(
    target: str,
    on_ring: Callable[[str, str | None], None],
    *,
    initial_backoff: float,
    max_backoff: float,
    open_channel: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
) -> None:
    """Follow the decoder at ``target`` forever, calling ``on_ring(camera, ring or None)``."""
    backoff = Backoff(initial_backoff, max_backoff)
    while True:
        channel = open_channel(target)
        try:
            stub = camera_service_pb2_grpc.CameraServiceStub(channel)
            call = stub.WatchCameraStatus(camera_service_pb2.WatchCameraStatusRequest())
            async for message in call:
                backoff.reset()  # the stream works: the next break starts afresh
                camera = camera_id_from_name(message.status.name, suffix="/status")
                if camera is None:
                    _log.warning(
                        "status with an unexpected name", extra={"name": message.status.name}
                    )
                    continue
                live = not message.camera_deleted and message.status.state in _LIVE
                on_ring(camera, message.status.ring_name if live else None)
            _log.info("decoder closed the camera watch", extra={"target": target})
        except grpc.aio.AioRpcError as exc:
            _log.warning(
                "camera watch broke",
                extra={"target": target, "code": exc.code().name, "detail": exc.details()},
            )
        finally:
            await channel.close()
        await asyncio.sleep(backoff.next_delay())
