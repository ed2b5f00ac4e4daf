"""The generated type stubs (.pyi) type-check client code under ``mypy --strict``."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api._contract import GENERATED, REPO

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed (dev extras)"
)

MESSAGES_SNIPPET = """
from google.protobuf import field_mask_pb2, timestamp_pb2
from its.analytics.v1 import analytics_service_pb2
from its.camera.v1 import camera_pb2, camera_service_pb2
from its.common.v1 import error_reason_pb2, geometry_pb2
from its.inference.v1 import inference_service_pb2


def update_request() -> camera_service_pb2.UpdateCameraRequest:
    camera = camera_pb2.Camera(name="cameras/a4", source_uri="rtsp://cam/1", enabled=True)
    camera.lines.add(
        id="stop-line",
        segment=geometry_pb2.LineSegment(
            start=geometry_pb2.Point(x=10.0, y=500.0), end=geometry_pb2.Point(x=900.0, y=520.0)
        ),
    )
    camera.create_time.CopyFrom(timestamp_pb2.Timestamp(seconds=1))
    return camera_service_pb2.UpdateCameraRequest(
        camera=camera, update_mask=field_mask_pb2.FieldMask(paths=["lines"])
    )


def wire_reason(value: error_reason_pb2.ErrorReason.ValueType) -> str:
    return error_reason_pb2.ErrorReason.Name(value).removeprefix("ERROR_REASON_")


def threshold(request: inference_service_pb2.DetectRequest) -> float | None:
    return request.score_threshold if request.HasField("score_threshold") else None


def acked(response: analytics_service_pb2.StreamDetectionBatchesResponse) -> int:
    return response.acknowledged_sequence


wire_reason(error_reason_pb2.ERROR_REASON_STALE_FRAME_REFERENCE)
"""

GRPC_SNIPPET = """
import grpc
from its.camera.v1 import camera_service_pb2, camera_service_pb2_grpc
from its.query.v1 import query_service_pb2, query_service_pb2_grpc


async def camera_name(channel: grpc.aio.Channel) -> str:
    stub = camera_service_pb2_grpc.CameraServiceStub(channel)
    reply = await stub.GetCamera(camera_service_pb2.GetCameraRequest(name="cameras/a4"))
    return reply.camera.name


async def live_events(channel: grpc.aio.Channel) -> list[str]:
    stub = query_service_pb2_grpc.QueryServiceStub(channel)
    names = []
    async for message in stub.StreamEvents(query_service_pb2.StreamEventsRequest()):
        names.append(message.event.name)
    return names


class Query(query_service_pb2_grpc.QueryServiceServicer):
    async def GetEvent(
        self,
        request: query_service_pb2.GetEventRequest,
        context: grpc.aio.ServicerContext[
            query_service_pb2.GetEventRequest, query_service_pb2.GetEventResponse
        ],
    ) -> query_service_pb2.GetEventResponse:
        return query_service_pb2.GetEventResponse()


def serve(server: grpc.aio.Server) -> None:
    query_service_pb2_grpc.add_QueryServiceServicer_to_server(Query(), server)
"""


def run_mypy(snippet: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "snippet.py"
    source.write_text(snippet, encoding="utf-8")
    config = tmp_path / "mypy.ini"  # only the flags below, whatever pyproject.toml says
    config.write_text("[mypy]\n", encoding="utf-8")
    env = {**os.environ, "MYPYPATH": str(GENERATED.parent)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--config-file",
            str(config),
            "--cache-dir",
            str(REPO / ".mypy_cache" / "api-tests"),
            str(source),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_message_stubs_type_check(tmp_path: Path) -> None:
    result = run_mypy(MESSAGES_SNIPPET, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _has_grpc_stubs() -> bool:
    try:
        importlib.metadata.distribution("types-grpcio")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(
    not _has_grpc_stubs(),
    reason="types-grpcio is not installed: the *_pb2_grpc.pyi stubs need it to type-check",
)
def test_grpc_stubs_type_check(tmp_path: Path) -> None:
    result = run_mypy(GRPC_SNIPPET, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
