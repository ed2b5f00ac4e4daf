"""A real deployment for the deployment tests: ``its-camera-ai serve all`` on free loopback
ports, TLS as in production, its own database, a simulated camera."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.security import mint_dev_certificates
from tests.conftest import POSTGRES_ADMIN_DSN, REDIS_URL, free_port

CAMERA = "simcam"
DATA_WITHIN_S = 60.0


class Deployment:
    """``its-camera-ai serve all`` on free loopback ports with its own database."""

    def __init__(self, directory: Path, dsn: str) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        unique = uuid.uuid4().hex[:8]
        # TLS as in production, so that the certificate-expiry series exist.
        self.certificates = mint_dev_certificates(directory / "certs", clients=("inference",))
        peer_cert, peer_key = self.certificates.clients["inference"]
        env = {
            **os.environ,
            "ITS_GRPC__HOST": "127.0.0.1",
            "ITS_GRPC__PORT": str(self.grpc_port),
            "ITS_GRPC__DRAIN_SECONDS": "1",
            "ITS_HTTP__HOST": "127.0.0.1",
            "ITS_HTTP__PORT": str(self.http_port),
            "ITS_LOGGING__LEVEL": "WARNING",
            "ITS_DATABASE__DSN": dsn,
            "ITS_REDIS__URL": REDIS_URL,
            # Its own channels on the shared Redis (query reads analytics' prefix).
            "ITS_ANALYTICS__REDIS_PREFIX": f"its-dash-{unique}",
            "ITS_DECODER__RING_PREFIX": f"d{unique}-",
            # Batches wait for company long enough that a 10 fps camera's queued frame is
            # replaced by its next one: real "superseded" skips for the skip panels.
            "ITS_INFERENCE__MAX_QUEUE_DELAY_MS": "250",
            "ITS_SECURITY__TLS__CERT_FILE": str(self.certificates.server_cert),
            "ITS_SECURITY__TLS__KEY_FILE": str(self.certificates.server_key),
            "ITS_SECURITY__PEER_TLS__ENABLED": "true",
            "ITS_SECURITY__PEER_TLS__CA_FILE": str(self.certificates.ca_cert),
            "ITS_SECURITY__PEER_TLS__CERT_FILE": str(peer_cert),
            "ITS_SECURITY__PEER_TLS__KEY_FILE": str(peer_key),
        }
        self.log = directory / "serve.log"
        self._channel: grpc.Channel | None = None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "its_camera_ai.cli", "serve", "all"],
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )

    def wait_serving(self, channel: grpc.Channel) -> None:
        deadline = time.monotonic() + DATA_WITHIN_S
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                return
            except grpc.FutureTimeoutError:
                continue
        raise AssertionError(f"serve all is not serving: {self.log.read_text()[-2000:]}")

    def channel(self) -> grpc.Channel:
        """One TLS channel to the server, opened on first use and closed by ``stop``."""
        if self._channel is None:
            trust = grpc.ssl_channel_credentials(self.certificates.ca_cert.read_bytes())
            self._channel = grpc.secure_channel(f"127.0.0.1:{self.grpc_port}", trust)
            self.wait_serving(self._channel)
        return self._channel

    def add_camera(self) -> None:
        cameras = camera_service_pb2_grpc.CameraServiceStub(self.channel())
        source = "sim://road?width=320&height=240&fps=10"
        cameras.CreateCamera(
            camera_service_pb2.CreateCameraRequest(
                camera_id=CAMERA, camera=camera_pb2.Camera(source_uri=source, enabled=True)
            ),
            timeout=10,
        )

    def call_like_a_client(self) -> None:
        """One successful call and one client error (NOT_FOUND), as a client's traffic.

        Called once per scrape while panels are read: a rate needs its counter to rise
        between two scrapes, and a burst made before Prometheus first saw the series never
        shows in any rate (CI once ran the whole minute without such a rise).
        """
        cameras = camera_service_pb2_grpc.CameraServiceStub(self.channel())
        cameras.GetCamera(camera_service_pb2.GetCameraRequest(name=f"cameras/{CAMERA}"), timeout=10)
        with pytest.raises(grpc.RpcError) as failed:
            cameras.GetCamera(
                camera_service_pb2.GetCameraRequest(name="cameras/absent"), timeout=10
            )
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def admin_sql(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()
