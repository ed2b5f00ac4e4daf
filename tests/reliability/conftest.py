"""Dependencies a test may stop and restart: a private Redis and a private PostgreSQL.

The machine's own servers are shared by every test, so fault injection never touches them.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port


class PrivateRedis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (.ci/run installs it)"
        self._process = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("private redis did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _debian_postgres_bin() -> Path:
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3])
    )
    assert versions, "Debian's postgresql package is not installed (.ci/run installs it)"
    return versions[-1].parent


class PrivatePostgres:
    """A real PostgreSQL server of the test's own (Debian's binaries), on its own port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._bin = _debian_postgres_bin()
        self._data = directory / "pgdata"
        self._log = directory / "postgres.log"
        self._as_postgres(
            [str(self._bin / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(self._data)]
        )

    def _as_postgres(self, command: list[str]) -> None:
        # initdb and postgres refuse to run as root.
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self._as_postgres(
            [
                str(self._bin / "pg_ctl"),
                "-D",
                str(self._data),
                "-l",
                str(self._log),
                "-w",
                "-o",
                f"-p {self.port} -k {self._data} -c listen_addresses=127.0.0.1",
                "start",
            ]
        )

    def stop(self) -> None:
        self._as_postgres(
            [str(self._bin / "pg_ctl"), "-D", str(self._data), "-m", "immediate", "-w", "stop"]
        )


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    # Not pytest's tmp_path: the postgres user must own the directory, and cannot enter root's.
    directory = Path(tempfile.mkdtemp(prefix="its-test-pg-"))
    shutil.chown(directory, "postgres", "postgres")
    server = PrivatePostgres(directory)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # stopped by the test
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
