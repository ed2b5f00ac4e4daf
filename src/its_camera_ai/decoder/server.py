"""The decoder service: cameras in, frames into shared-memory rings; hosts ``CameraService``.

Registration opens the camera store (migrations ``src/its_camera_ai/decoder/migrations``), loads the
keys that seal source URIs and re-seals rows still under a retired key, then starts a
worker for every enabled camera. Shutdown stops the workers after the gRPC server drained,
closing (and unlinking) their rings.

``UNIT`` takes the ``decoder`` section of the service settings (``ITS_DECODER__*``);
``decoder_unit(settings)`` builds one with explicit settings (tests, embedding).
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from its.camera.v1 import camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.common import DecoderSettings, MigrationSet, Runtime, ServiceUnit
from its_camera_ai.decoder._crypto import load_key_ring
from its_camera_ai.decoder._egress import EgressPolicy
from its_camera_ai.decoder._metrics import DecoderMetrics
from its_camera_ai.decoder._servicer import CameraServicer
from its_camera_ai.decoder._status import StatusBoard
from its_camera_ai.decoder._store import CameraStore
from its_camera_ai.decoder._supervisor import Supervisor
from its_camera_ai.shm import enable_metrics

__all__ = ["UNIT", "decoder_unit"]

_log = logging.getLogger(__name__)

MIGRATIONS = MigrationSet("decoder", "its_camera_ai.decoder")


def decoder_unit(
    settings: DecoderSettings | None = None, *, egress: EgressPolicy | None = None
) -> ServiceUnit:
    """``egress``: the policy sources are checked with; by default one over
    ``settings.egress`` in the host's environment (tests inject one with a scripted
    resolver)."""

    async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        decoder_settings = settings or runtime.settings.decoder
        policy = egress or EgressPolicy(
            decoder_settings.egress, environment=runtime.settings.environment
        )
        assert runtime.database is not None  # needs_database=True
        keys = load_key_ring(decoder_settings, runtime.settings.environment)
        store = CameraStore(runtime.database.pool, max_cameras=decoder_settings.max_cameras)
        resealed = await store.reseal(keys)
        if resealed:
            _log.info("re-sealed camera sources under the primary key", extra={"count": resealed})
        # The rings this process writes: shm_* at scrape time.
        enable_metrics(runtime.metrics)
        board = StatusBoard(asyncio.get_running_loop())
        supervisor = Supervisor(
            decoder_settings, board, DecoderMetrics(runtime.metrics, board), egress=policy
        )
        servicer = CameraServicer(
            settings=decoder_settings,
            store=store,
            keys=keys,
            board=board,
            supervisor=supervisor,
            egress=policy,
        )
        for stored in await store.all():
            servicer.supervise(stored)
        runtime.on_shutdown.append(supervisor.close)
        camera_service_pb2_grpc.add_CameraServiceServicer_to_server(servicer, server)

    return ServiceUnit(
        name="decoder",
        grpc_services=(camera_service_pb2.DESCRIPTOR.services_by_name["CameraService"].full_name,),
        register=register,
        needs_database=True,
        migrations=(MIGRATIONS,),
    )


UNIT = decoder_unit()
