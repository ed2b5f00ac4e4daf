"""A private Redis for ``up`` when none is configured and ``redis-server`` is installed.

Without Redis the services still work (Redis is optional everywhere), but the live figures
(frames analysed per second, active tracks, the last minute's counts: what the view shows)
travel from analytics to query only through it; rebuilt from PostgreSQL they read zero. So
``up`` starts one on a Unix socket in its data directory, keeping nothing on disk, and
stops it after the last service. Not supervised: if it dies the services degrade as they
do in production (cache misses, stats from PostgreSQL) and the next ``up`` starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

__all__ = ["PrivateRedis", "start_private_redis"]

_START_WITHIN_SECONDS = 10.0
_STOP_WITHIN_SECONDS = 5.0


class PrivateRedis:
    def __init__(self, process: asyncio.subprocess.Process, socket: Path) -> None:
        self.process = process
        self.socket = socket

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), _STOP_WITHIN_SECONDS)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        _remove(self.socket)


def _fresh_socket_path(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    socket = directory / "redis.sock"
    socket.unlink(missing_ok=True)  # a killed run's
    return socket


def _listening(socket: Path) -> bool:
    return socket.exists()


def _remove(socket: Path) -> None:
    socket.unlink(missing_ok=True)


async def start_private_redis(directory: Path) -> PrivateRedis | None:
    """A ``redis-server`` listening only on ``directory/redis.sock``; None when Redis is
    not installed. ``RuntimeError`` when it is but does not come up."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    socket = _fresh_socket_path(directory)
    process = await asyncio.create_subprocess_exec(
        binary,
        "--port", "0",
        "--unixsocket", str(socket),
        "--unixsocketperm", "700",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        "--logfile", str(directory / "redis.log"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    redis = PrivateRedis(process, socket)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _START_WITHIN_SECONDS
    while not _listening(socket):
        if process.returncode is not None or loop.time() > deadline:
            with contextlib.suppress(ProcessLookupError):
                await redis.stop()
            raise RuntimeError(f"redis-server did not start; see {directory / 'redis.log'}")
        await asyncio.sleep(0.05)
    return redis
