"""The decoder's egress policy (SSRF guard) through a real decoder on loopback gRPC with
real PostgreSQL: which camera sources CreateCamera/UpdateCamera refuse, in which
environment and with which status, and that a worker checks the destination again before
it connects (a real listening socket on 127.0.0.1 shows whether anything reached it)."""

from __future__ import annotations

import asyncio
import http.server
import select
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its.camera.v1 import camera_status_pb2 as status_pb2
from its_camera_ai.client import metadata_interceptors
from its_camera_ai.common import DecoderSettings, EgressSettings, ServiceHost, Settings
from its_camera_ai.decoder import EgressPolicy
from its_camera_ai.decoder.server import decoder_unit
from its_camera_ai.testing import TokenIssuer
from tests.decoder.conftest import Decoder, new_key

pytestmark = pytest.mark.security

FIELD = "camera.source_uri"
BACKING_OFF = status_pb2.CAMERA_STATE_BACKING_OFF
# Each SSRF target (with a password that must never be echoed) and the rule refusing it
# outside dev.
SSRF_TARGETS = {
    "http://169.254.169.254/latest/meta-data/iam/": "metadata",
    "http://metadata.google.internal/computeMetadata/v1/": "metadata",
    "rtsp://127.0.0.1:6379/x": "loopback",
    "http://localhost:8080/admin": "loopback",
    "rtsp://[::1]:554/x": "loopback",
    "rtsp://[::ffff:127.0.0.1]:554/x": "loopback",
    "rtsp://2130706433/x": "loopback",
    "rtsp://0x7f.1/x": "loopback",
    "rtsp://127.1/x": "loopback",
    "rtsp://10.0.0.1/stream": "private",
    "rtsp://192.168.1.10/stream": "private",
    "rtsp://172.16.0.5/stream": "private",
    "rtsp://[fd00::1]/stream": "private",
    "rtsp://100.64.0.7/stream": "shared",
    "rtsp://0.0.0.0:554/x": "unspecified",
    "http://[fe80::1]/x": "link_local",
}
# Refused in every environment, dev included.
ALWAYS_REFUSED = {
    "http://169.254.169.254/latest/meta-data/": "metadata",
    "http://metadata.google.internal/": "metadata",
    "http://metadata/computeMetadata/v1/": "metadata",
    "http://[fd00:ec2::254]/latest/": "metadata",
    "http://100.100.100.200/latest/meta-data/": "metadata",
    "rtsp://169.254.10.20/x": "link_local",
    "rtsp://0.0.0.0/x": "unspecified",
    "rtsp://[::]/x": "unspecified",
    "rtsp://239.1.2.3/x": "multicast",
}


class Served(Decoder):
    """The decoder tests' client, on a channel that carries the credential."""

    async def update_source(self, camera_id: str, uri: str) -> camera_pb2.Camera:
        reply = await self.stub.UpdateCamera(
            camera_service_pb2.UpdateCameraRequest(
                camera=camera_pb2.Camera(name=f"cameras/{camera_id}", source_uri=uri),
                update_mask=field_mask_pb2.FieldMask(paths=["source_uri"]),
            )
        )
        return reply.camera

    async def refused(self, uri: str) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.create(f"c{uuid.uuid4().hex[:8]}", uri)
        return caught.value

    async def camera_count(self) -> int:
        reply = await self.stub.ListCameras(camera_service_pb2.ListCamerasRequest())
        return len(reply.cameras)


@asynccontextmanager
async def serve(
    dsn: str,
    tmp_path: Path,
    *,
    environment: str = "dev",
    egress: EgressSettings | None = None,
    policy: EgressPolicy | None = None,
) -> AsyncIterator[Served]:
    """A decoder host in ``environment``; outside dev callers need a token (admin here)."""
    decoder = DecoderSettings(
        source_keys=f"k1:{new_key()}",
        ring_prefix=f"e{uuid.uuid4().hex[:8]}-",
        ring_slots=4,
        connect_timeout_seconds=2.0,
        read_timeout_seconds=1.0,
        backoff_initial_seconds=0.1,
        backoff_max_seconds=0.3,
        egress=egress or EgressSettings(),
    )
    issuer = TokenIssuer.create(tmp_path / "issuer")
    config: dict[str, Any] = {
        "environment": environment,
        "grpc": {"host": "127.0.0.1", "port": 0, "drain_seconds": 0.5},
        "http": {"host": "127.0.0.1", "port": 0},
        "database": {"dsn": dsn},
        "security": {} if environment == "dev" else {"jwt": issuer.jwt_settings()},
    }
    host = ServiceHost(Settings(**config), [decoder_unit(decoder, egress=policy)])
    await host.start()
    metadata: tuple[tuple[str, str], ...] = ()
    if environment != "dev":
        metadata = (("authorization", f"Bearer {issuer.mint('egress-admin', 'admin')}"),)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{host.grpc_port}", interceptors=metadata_interceptors(metadata)
    )
    try:
        stub = camera_service_pb2_grpc.CameraServiceStub(channel)
        yield Served(host, stub, decoder, dsn)
    finally:
        await channel.close()
        await host.stop()


def error_info(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str], list[str]]:
    """(ErrorInfo reason, its metadata, BadRequest fields) of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    reason, metadata, fields = "", {}, []
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(bad):
            fields = [violation.field for violation in bad.field_violations]
    return reason, metadata, fields


def with_password(uri: str) -> str:
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://admin:Pa55-w0rd@{rest}"


def assert_denied(error: grpc.aio.AioRpcError, uri: str, rule: str) -> None:
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (uri, error.details())
    message = error.details() or ""
    assert message.startswith(f"{FIELD}: "), (uri, message)
    assert "refused by the egress policy" in message, (uri, message)
    assert "Pa55-w0rd" not in message, (uri, message)
    reason, metadata, _ = error_info(error)
    assert reason == "PERMISSION_DENIED", uri
    assert metadata == {"field": FIELD, "rule": rule}, (uri, metadata)


@contextmanager
def listening() -> Iterator[socket.socket]:
    """A TCP socket listening on 127.0.0.1 that never accepts: a connection to it waits in
    the kernel's backlog, where ``reached`` sees it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener


def reached(listener: socket.socket, within: float = 0.0) -> bool:
    readable, _, _ = select.select([listener], [], [], within)
    return bool(readable)


@dataclass
class ScriptedResolver:
    """Answers for each name in turn (the last one repeats); records every question."""

    answers: dict[str, list[list[str]]]
    asked: list[str] = field(default_factory=list)

    def __call__(self, host: str) -> Sequence[str]:
        self.asked.append(host)
        script = self.answers[host]
        return script.pop(0) if len(script) > 1 else script[0]


# --- CreateCamera / UpdateCamera -------------------------------------------------------


async def test_ssrf_targets_are_refused_outside_dev(postgres_dsn: str, tmp_path: Path) -> None:
    async with serve(postgres_dsn, tmp_path, environment="staging") as decoder:
        for uri, rule in SSRF_TARGETS.items():
            assert_denied(await decoder.refused(with_password(uri)), uri, rule)
        assert await decoder.camera_count() == 0

        # A name that does not resolve yet is accepted (checked again at every connect),
        # and an update cannot move it to a refused destination either.
        await decoder.create("cam", "rtsp://admin:Pa55-w0rd@cam.invalid/stream")
        for uri, rule in (("rtsp://127.0.0.1/x", "loopback"), ("http://[::1]/x", "loopback")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await decoder.update_source("cam", with_password(uri))
            assert_denied(caught.value, uri, rule)


async def test_dev_allows_loopback_and_private_but_never_metadata(
    postgres_dsn: str, tmp_path: Path
) -> None:
    async with serve(postgres_dsn, tmp_path) as decoder:
        for index, uri in enumerate(
            (
                "rtsp://127.0.0.1:9/x",
                "http://localhost:9/x",
                "rtsp://[::1]:9/x",
                "rtsp://10.0.0.1/x",
            )
        ):
            created = await decoder.create(f"local-{index}", uri)
            assert created.source_uri == uri
        for uri, rule in ALWAYS_REFUSED.items():
            assert_denied(await decoder.refused(with_password(uri)), uri, rule)
        # Multicast is how UDP cameras are received: allowed for udp and rtp only.
        await decoder.create("group", "udp://@239.1.2.3:5000")
        await decoder.create("rtp-group", "rtp://[ff15::7]:5004")


async def test_allowed_networks_let_a_camera_network_through_outside_dev(
    postgres_dsn: str, tmp_path: Path
) -> None:
    egress = EgressSettings.model_validate(
        {
            "allowed_networks": ["10.20.0.0/16", "fd12:3456::/32"],
            "denied_networks": ["10.20.99.0/24"],
        }
    )
    async with serve(postgres_dsn, tmp_path, environment="staging", egress=egress) as decoder:
        await decoder.create("vlan", "rtsp://admin:Pa55-w0rd@10.20.3.4:554/stream1")
        await decoder.create("vlan6", "rtsp://[fd12:3456::10]/stream1")
        await decoder.create("mapped", "rtsp://[::ffff:10.20.3.5]/stream1")
        for uri, rule in (
            ("rtsp://10.21.0.1/stream1", "private"),
            ("rtsp://10.20.99.1/stream1", "denied_network"),
            ("rtsp://127.0.0.1/stream1", "loopback"),
            ("http://169.254.169.254/", "metadata"),
        ):
            assert_denied(await decoder.refused(with_password(uri)), uri, rule)


async def test_allowed_hosts_narrow_names(postgres_dsn: str, tmp_path: Path) -> None:
    resolver = ScriptedResolver(
        {
            "cam1.cams.example": [["198.51.99.7"]],
            "elsewhere.example": [["198.51.99.8"]],
            # Listed, but resolving to loopback: a listed name is no licence for private.
            "rogue.cams.example": [["198.51.99.9", "127.0.0.1"]],
        }
    )
    egress = EgressSettings(allowed_hosts=("*.cams.example",), allow_private=False)
    policy = EgressPolicy(egress, environment="dev", resolver=resolver)
    async with serve(postgres_dsn, tmp_path, egress=egress, policy=policy) as decoder:
        await decoder.create("listed", "rtsp://cam1.cams.example/stream")
        assert_denied(
            await decoder.refused("rtsp://elsewhere.example/stream"),
            "elsewhere.example",
            "host_not_allowed",
        )
        error = await decoder.refused("rtsp://rogue.cams.example/stream")
        assert_denied(error, "rogue.cams.example", "loopback")
        assert "rogue.cams.example (127.0.0.1) is loopback" in (error.details() or "")


async def test_disallowed_schemes_unknown_scenes_and_ambiguous_hosts_are_invalid(
    postgres_dsn: str, tmp_path: Path
) -> None:
    egress = EgressSettings(allowed_schemes=("rtsp", "rtsps", "sim"))
    async with serve(postgres_dsn, tmp_path, egress=egress) as decoder:
        await decoder.create("scene", "sim://road?width=64&height=48")
        for uri, reason in (
            ("udp://@239.1.2.3:5000", "UNSUPPORTED_SOURCE"),
            ("http://cam.invalid/live.ts", "UNSUPPORTED_SOURCE"),
            ("sim://nowhere?seed=1", "UNSUPPORTED_SOURCE"),
            ("sim://127.0.0.1", "UNSUPPORTED_SOURCE"),
            # FFmpeg reads the host after the last "@" before "/", "?" (and "#"):
            # Python's parser stops at "#" and would judge "cam.invalid".
            ("rtsp://cam.invalid#@127.0.0.1/x", "INVALID_FIELD"),
        ):
            error = await decoder.refused(uri)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (uri, error.details())
            got_reason, _, fields = error_info(error)
            assert (got_reason, fields) == (reason, [FIELD]), uri
            assert (error.details() or "").startswith(f"{FIELD}: "), uri


# --- the worker, before every connect --------------------------------------------------


async def test_the_worker_refuses_a_name_that_re_resolves_to_loopback(
    postgres_dsn: str, tmp_path: Path
) -> None:
    # "localhost" really resolves to 127.0.0.1 here: had the worker skipped its check,
    # FFmpeg would have connected to the listener.
    resolver = ScriptedResolver({"localhost": [["198.51.99.7"], ["127.0.0.1"]]})
    egress = EgressSettings(allow_private=False)
    policy = EgressPolicy(egress, environment="dev", resolver=resolver)
    with listening() as listener:
        port = listener.getsockname()[1]
        async with serve(postgres_dsn, tmp_path, egress=egress, policy=policy) as decoder:
            await decoder.create(
                "rebound", f"rtsp://admin:Pa55-w0rd@localhost:{port}/stream", enabled=True
            )
            status = await decoder.wait_for(
                "rebound", lambda s: s.reconnects >= 2 and s.state == BACKING_OFF
            )
            assert "localhost (127.0.0.1) is loopback" in status.last_error
            assert "refused by the egress policy" in status.last_error
            assert "Pa55-w0rd" not in status.last_error
            assert len(resolver.asked) >= 3  # the create, then every connect attempt
            assert not reached(listener), "the worker connected to a refused address"


async def test_the_listener_does_see_a_connection_the_policy_allows(
    postgres_dsn: str, tmp_path: Path
) -> None:
    """The control for the test above: the same camera, allowed, reaches the listener."""
    resolver = ScriptedResolver({"localhost": [["127.0.0.1"]]})
    policy = EgressPolicy(EgressSettings(), environment="dev", resolver=resolver)
    with listening() as listener:
        port = listener.getsockname()[1]
        async with serve(postgres_dsn, tmp_path, policy=policy) as decoder:
            await decoder.create("allowed", f"rtsp://localhost:{port}/stream", enabled=True)
            assert await asyncio.to_thread(reached, listener, 10.0)


async def test_http_redirects_are_not_followed(postgres_dsn: str, tmp_path: Path) -> None:
    """A camera server the policy allows cannot bounce the decoder to an address it never
    checked."""
    with listening() as listener:
        target = f"http://127.0.0.1:{listener.getsockname()[1]}/latest/meta-data/"
        asked: list[str] = []

        class Redirect(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                asked.append(self.path)
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            async with serve(postgres_dsn, tmp_path) as decoder:
                uri = f"http://127.0.0.1:{server.server_address[1]}/live.ts"
                await decoder.create("bouncer", uri, enabled=True)
                status = await decoder.wait_for("bouncer", lambda s: bool(s.last_error))
                assert asked, status
                assert not reached(listener), "the decoder followed the redirect"
        finally:
            server.shutdown()
            server.server_close()
