"""What the loopback test servers (``FaultProxy``, ``Balancer``) share: a listener on
``127.0.0.1`` at a port the OS picks, the tasks they spawn, and closing with a reset."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

__all__ = ["LOOPBACK", "LoopbackServer", "reset"]

LOOPBACK = "127.0.0.1"
_T = TypeVar("_T")


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN: SO_LINGER on, zero timeout, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class LoopbackServer:
    """Listens on ``127.0.0.1:<port>`` once started; ``close`` resets every connection and
    cancels what it spawned. Use as ``async with``."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, f"the {type(self).__name__} is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def target(self) -> str:
        """``127.0.0.1:<port>``, as a gRPC target."""
        return f"{LOOPBACK}:{self.port}"

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.drop_connections()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def drop_connections(self) -> None:
        """Reset (RST) every open connection, both sides, now."""
        raise NotImplementedError

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _spawn(self, coroutine: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
