"""The analytics service: detection batches in, tracks, measures and events stored.

Tracking, measures and storage arrive with the analytics issue; until then
``AnalyticsService`` answers UNIMPLEMENTED while health and reflection work.
"""

from __future__ import annotations

import grpc

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from services.common import Runtime, ServiceUnit

__all__ = ["UNIT"]


async def _register(server: grpc.aio.Server, runtime: Runtime) -> None:
    analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(
        analytics_service_pb2_grpc.AnalyticsServiceServicer(), server
    )


UNIT = ServiceUnit(
    name="analytics",
    grpc_services=(
        analytics_service_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name,
    ),
    register=_register,
    needs_database=True,
)
