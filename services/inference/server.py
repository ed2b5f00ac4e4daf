"""The inference service: frames from the rings in, detections out to analytics.

The detector and batching arrive with the inference issue; until then ``InferenceService``
answers UNIMPLEMENTED while health and reflection work. It needs no database.
"""

from __future__ import annotations

import grpc

from its.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from services.common import Runtime, ServiceUnit

__all__ = ["UNIT"]


async def _register(server: grpc.aio.Server, runtime: Runtime) -> None:
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(
        inference_service_pb2_grpc.InferenceServiceServicer(), server
    )


UNIT = ServiceUnit(
    name="inference",
    grpc_services=(
        inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    ),
    register=_register,
)
