"""The query service: the read side for operators, plus administration.

Hosts ``QueryService`` (counts, summaries, events, live stats; read-only on the analytics
tables) and ``AdminService`` (API keys, feature flags, audit log). Their behaviour arrives
with later issues; until then both answer UNIMPLEMENTED while health and reflection work.
"""

from __future__ import annotations

import grpc

from its.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from its.query.v1 import query_service_pb2, query_service_pb2_grpc
from its_camera_ai.common import Runtime, ServiceUnit

__all__ = ["UNIT"]


async def _register(server: grpc.aio.Server, runtime: Runtime) -> None:
    query_service_pb2_grpc.add_QueryServiceServicer_to_server(
        query_service_pb2_grpc.QueryServiceServicer(), server
    )
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(
        admin_service_pb2_grpc.AdminServiceServicer(), server
    )


UNIT = ServiceUnit(
    name="query",
    grpc_services=(
        query_service_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
        admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    ),
    register=_register,
    needs_database=True,
)
