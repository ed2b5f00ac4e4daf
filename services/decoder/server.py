"""The decoder service: cameras in, frames into shared-memory rings; hosts ``CameraService``.

Camera CRUD and ingest arrive with the decoder issue; until then the API answers
UNIMPLEMENTED while health and reflection work.
"""

from __future__ import annotations

import grpc

from its.camera.v1 import camera_service_pb2, camera_service_pb2_grpc
from services.common import Runtime, ServiceUnit

__all__ = ["UNIT"]


async def _register(server: grpc.aio.Server, runtime: Runtime) -> None:
    camera_service_pb2_grpc.add_CameraServiceServicer_to_server(
        camera_service_pb2_grpc.CameraServiceServicer(), server
    )


UNIT = ServiceUnit(
    name="decoder",
    grpc_services=(camera_service_pb2.DESCRIPTOR.services_by_name["CameraService"].full_name,),
    register=_register,
    needs_database=True,
)
