"""The service host: health, reflection, error mapping, metrics, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
import redis.exceptions
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

from its_camera_ai.cli import SERVICES, service_units
from its_camera_ai.common import (
    ERROR_DOMAIN,
    AnalyticsServiceSettings,
    CircuitOpenError,
    ConfigError,
    DeadlineExceededError,
    FailedPreconditionError,
    InferenceSettings,
    InvalidArgumentError,
    NotFoundError,
    QueryServiceSettings,
    Runtime,
    ServiceHost,
    ServiceUnit,
    UnavailableError,
    dependency_error,
)
from its_camera_ai.testing import host_settings
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def running_host(
    request: pytest.FixtureRequest, postgres_dsn: str
) -> AsyncIterator[ServiceHost]:
    settings = host_settings(postgres_dsn)
    # Alone, inference must be told where analytics is, analytics and query where the decoder is;
    # nothing listens there here.
    if request.param == "inference":
        settings = settings.model_copy(
            update={"inference": InferenceSettings(analytics_target="127.0.0.1:9")}
        )
    if request.param == "analytics":
        settings = settings.model_copy(
            update={"analytics": AnalyticsServiceSettings(decoder_target="127.0.0.1:9")}
        )
    if request.param == "query":
        settings = settings.model_copy(
            update={"query": QueryServiceSettings(decoder_target="127.0.0.1:9")}
        )
    host = ServiceHost(settings, service_units(request.param))
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


def reflected_services(port: int) -> tuple[set[str], descriptor_pool.DescriptorPool]:
    """What a client with no local protos (like grpcurl) learns from reflection alone."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    database = ProtoReflectionDescriptorDatabase(channel)
    return set(database.get_services()), descriptor_pool.DescriptorPool(database)


@pytest.mark.parametrize("running_host", [*SERVICES, "all"], indirect=True)
async def test_service_serves_health_reflection_and_unimplemented(
    running_host: ServiceHost,
) -> None:
    port = running_host.grpc_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", *running_host.service_names):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name

    listed, pool = await asyncio.to_thread(reflected_services, port)
    assert set(running_host.service_names) <= listed
    assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed
    for name in running_host.service_names:
        service = await asyncio.to_thread(pool.FindServiceByName, name)
        assert service.methods, name
        method = service.methods[0]
        # Describing works down to the message fields, as grpcurl's `describe` needs.
        assert method.input_type.fields is not None

        # An empty request is either not implemented yet (UNIMPLEMENTED) or refused with
        # a clean INVALID_ARGUMENT naming a field: never INTERNAL or UNKNOWN.
        if not (method.client_streaming or method.server_streaming):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary(f"/{name}/{method.name}")(b"", timeout=5)
            code = caught.value.code()
            assert code in {grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INVALID_ARGUMENT}, (
                name,
                method.name,
                code,
            )
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                _, details = error_info(caught.value)
                assert details, f"{name}/{method.name}: INVALID_ARGUMENT without BadRequest"


async def test_migrations_ran_on_the_configured_postgres(postgres_dsn: str) -> None:
    host = ServiceHost(host_settings(postgres_dsn), service_units("decoder"))
    await host.start()
    try:
        assert host.runtime.database is not None
        assert host.runtime.database.dsn_kind == "dsn"
        pool = host.runtime.database.pool
        assert await pool.fetchval("SELECT inet_server_port()") == 5432
        assert await pool.fetchval("SELECT to_regclass('audit_log') IS NOT NULL")
    finally:
        await host.stop()


async def test_inference_needs_no_database() -> None:
    # No DSN and an unusable embedded directory: inference must not even try to open one.
    settings = host_settings(None, embedded_data_dir="/proc/no-database-here").model_copy(
        update={"inference": InferenceSettings(analytics_target="127.0.0.1:9")}
    )
    host = ServiceHost(settings, service_units("inference"))
    await host.start()
    try:
        assert host.runtime.database is None
    finally:
        await host.stop()


async def test_inference_alone_must_be_told_where_analytics_is() -> None:
    host = ServiceHost(host_settings(None), service_units("inference"))
    with pytest.raises(ConfigError, match=r"inference\.analytics_target is required"):
        await host.start()
    await host.stop()


# --- error mapping -----------------------------------------------------------------------

FAULTS = "its.test.v1.FaultService"


async def _register_faults(server: grpc.aio.Server, runtime: Runtime) -> None:
    async def invalid(request: bytes, context: object) -> bytes:
        raise InvalidArgumentError.for_field("camera.target_fps", "must be between 1 and 120")

    async def missing(request: bytes, context: object) -> bytes:
        raise NotFoundError("cameras/north-gate not found", metadata={"name": "cameras/north-gate"})

    async def stale(request: bytes, context: object) -> bytes:
        from its.common.v1 import error_reason_pb2

        raise FailedPreconditionError(
            "slot 3 was overwritten", reason=error_reason_pb2.ERROR_REASON_STALE_FRAME_REFERENCE
        )

    async def crash(request: bytes, context: object) -> bytes:
        raise RuntimeError("secret internal state")

    async def slow_dependency(request: bytes, context: object) -> bytes:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)
        return b""

    async def breaker_open(request: bytes, context: object) -> bytes:
        raise CircuitOpenError("postgres is unavailable (circuit open)")

    async def redis_down(request: bytes, context: object) -> bytes:
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:9")

    async def own_file_missing(request: bytes, context: object) -> bytes:
        # An OSError from our own code is a bug, not an outage.
        await asyncio.to_thread(Path("/nonexistent/its-camera-ai/config").read_text)
        return b""

    async def stream_then_fail(request: bytes, context: object) -> AsyncIterator[bytes]:
        yield b"first"
        raise NotFoundError("gone mid-stream")

    handler = grpc.method_handlers_generic_handler(
        FAULTS,
        {
            "Invalid": grpc.unary_unary_rpc_method_handler(invalid),
            "Missing": grpc.unary_unary_rpc_method_handler(missing),
            "Stale": grpc.unary_unary_rpc_method_handler(stale),
            "Crash": grpc.unary_unary_rpc_method_handler(crash),
            "SlowDependency": grpc.unary_unary_rpc_method_handler(slow_dependency),
            "BreakerOpen": grpc.unary_unary_rpc_method_handler(breaker_open),
            "RedisDown": grpc.unary_unary_rpc_method_handler(redis_down),
            "OwnFileMissing": grpc.unary_unary_rpc_method_handler(own_file_missing),
            "Stream": grpc.unary_stream_rpc_method_handler(stream_then_fail),
        },
    )
    server.add_generic_rpc_handlers((handler,))


@pytest.fixture
async def fault_host() -> AsyncIterator[ServiceHost]:
    unit = ServiceUnit(name="faults", grpc_services=(FAULTS,), register=_register_faults)
    host = ServiceHost(host_settings(), [unit])
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


def error_info(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[object]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status details on the error"
    assert status.code == error.code().value[0]
    info = error_details_pb2.ErrorInfo()
    others = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        else:
            others.append(detail)
    assert info.domain == ERROR_DOMAIN
    return info, others


@pytest.mark.parametrize(
    ("method", "code", "reason"),
    [
        ("Invalid", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"),
        ("Missing", grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND"),
        ("Stale", grpc.StatusCode.FAILED_PRECONDITION, "STALE_FRAME_REFERENCE"),
        ("Crash", grpc.StatusCode.INTERNAL, "INTERNAL"),
        ("SlowDependency", grpc.StatusCode.DEADLINE_EXCEEDED, "DEPENDENCY_TIMEOUT"),
        ("BreakerOpen", grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE"),
        ("RedisDown", grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE"),
        ("OwnFileMissing", grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
async def test_errors_arrive_with_code_and_reason(
    fault_host: ServiceHost, method: str, code: grpc.StatusCode, reason: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fault_host.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(f"/{FAULTS}/{method}")(b"", timeout=5)
    assert caught.value.code() == code
    info, _ = error_info(caught.value)
    assert info.reason == reason
    assert "secret internal state" not in (caught.value.details() or "")


@pytest.mark.parametrize("method", ["BreakerOpen", "RedisDown"])
async def test_unavailable_carries_retry_info_and_logs_no_traceback(
    fault_host: ServiceHost, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fault_host.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(f"/{FAULTS}/{method}")(b"", timeout=5)
    _, others = error_info(caught.value)
    retry = error_details_pb2.RetryInfo()
    assert [detail.Unpack(retry) for detail in others] == [True]  # type: ignore[attr-defined]
    assert retry.retry_delay.ToTimedelta().total_seconds() > 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_dependency_error_rules() -> None:
    assert dependency_error(ValueError("a bug")) is None
    refused = dependency_error(asyncpg.exceptions.ConnectionDoesNotExistError("gone"))
    assert isinstance(refused, UnavailableError)
    assert refused.metadata == {"dependency": "postgresql"}
    assert isinstance(dependency_error(TimeoutError()), DeadlineExceededError)


async def test_health_watch_streams_status_changes(fault_host: ServiceHost) -> None:
    # Regression: Watch (a coroutine writing through its context) failed with a TypeError
    # inside OpenTelemetry's interceptor, which iterates every streaming behaviour.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fault_host.grpc_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=FAULTS), timeout=5
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


async def test_invalid_argument_names_the_field(fault_host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fault_host.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(f"/{FAULTS}/Invalid")(b"", timeout=5)
    assert "camera.target_fps" in (caught.value.details() or "")
    _, others = error_info(caught.value)
    bad_request = error_details_pb2.BadRequest()
    assert len(others) == 1
    assert others[0].Unpack(bad_request)  # type: ignore[attr-defined]
    assert [v.field for v in bad_request.field_violations] == ["camera.target_fps"]


async def test_error_after_streamed_responses(fault_host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fault_host.grpc_port}") as channel:
        call = channel.unary_stream(f"/{FAULTS}/Stream")(b"", timeout=5)
        assert await call.read() == b"first"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# --- HTTP side port ----------------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


async def test_metrics_and_health_on_the_side_port(fault_host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fault_host.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary(f"/{FAULTS}/Missing")(b"", timeout=5)

    status, content_type, body = await asyncio.to_thread(http_get, fault_host.http_port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert (
        'grpc_server_handled_total{grpc_code="NOT_FOUND",grpc_method="Missing",'
        f'grpc_service="{FAULTS}"}} 1.0'
    ) in body
    assert "grpc_server_handling_seconds_bucket" in body

    status, content_type, body = await asyncio.to_thread(http_get, fault_host.http_port, "/health")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {"status": "SERVING", "services": [FAULTS], "dependencies": {}}

    assert (await asyncio.to_thread(http_get, fault_host.http_port, "/live"))[0] == 200
    assert (await asyncio.to_thread(http_get, fault_host.http_port, "/nope"))[0] == 404


# --- processes: graceful shutdown and the embedded default -------------------------------


def wait_for_health(port: int, process: subprocess.Popen[str], deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1]
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return
            except grpc.RpcError:
                time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def test_sigterm_drains_in_flight_calls_before_exit() -> None:
    grpc_port, http_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests/common/drain_server.py"),
            str(grpc_port),
            str(http_port),
            "1.5",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_health(grpc_port, process)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            sleep = channel.unary_unary("/its.test.v1.SlowService/Sleep")
            in_flight = sleep.future(b"x", timeout=10)
            time.sleep(0.3)  # the call is now being handled
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            # New work is refused while the old call drains...
            with pytest.raises(grpc.RpcError) as refused:
                sleep(b"late", timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            # ...and the in-flight one completes normally.
            assert in_flight.result() == b"done:x"
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = process.stderr.read() if process.stderr else ""
    assert '"message": "draining"' in log
    assert '"message": "stopped"' in log


def test_serve_all_on_the_embedded_default(embedded_data_dir: Path) -> None:
    """The README's main job: no database configured, the embedded PostgreSQL is used."""
    grpc_port, http_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ITS_")},
        "ITS_GRPC__PORT": str(grpc_port),
        "ITS_HTTP__PORT": str(http_port),
        "ITS_DATABASE__EMBEDDED_DATA_DIR": str(embedded_data_dir),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "its_camera_ai", "serve", "all"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_health(grpc_port, process, deadline_s=120)
        status, _, body = http_get(http_port, "/health")
        assert status == 200
        health = json.loads(body)
        assert health["dependencies"] == {"database": "up"}
        assert len(health["services"]) == 5
        assert (embedded_data_dir / "PG_VERSION").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_a_stuck_shutdown_step_is_cancelled_and_named_and_the_stop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A unit whose shutdown hook ignores its cancellation (a handler stuck in a dependency):
    # the host still stops, its later steps still run, and the log names the stuck one.
    ran: list[str] = []
    release = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            ran.append("cancelled")
            await release.wait()  # ignores its cancellation until the test lets it go

    async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        async def later() -> None:
            ran.append("later step")

        runtime.on_shutdown.append(later)
        runtime.on_shutdown.append(stuck)  # reversed order: runs first

    unit = ServiceUnit(name="stuck", grpc_services=(), register=register)
    host = ServiceHost(host_settings(), [unit])
    await host.start()
    began = time.monotonic()
    with caplog.at_level(logging.ERROR):
        await host.stop(step_timeout_s=0.5)
    assert time.monotonic() - began < 5.0
    release.set()
    await asyncio.sleep(0)
    assert ran == ["cancelled", "later step"]
    stuck_logs = [r for r in caplog.records if r.getMessage().startswith("shutdown step stuck")]
    assert [getattr(r, "step", None) for r in stuck_logs] == [stuck.__qualname__]
