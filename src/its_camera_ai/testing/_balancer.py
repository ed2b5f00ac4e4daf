"""A round-robin TCP balancer on loopback: several service instances behind one address.

``Balancer`` listens on ``127.0.0.1`` (a port the OS picks) and hands each new connection
to the next upstream in turn (``127.0.0.1:<port>``), skipping an upstream that refuses the
connection (a stopped instance) for the next one; when every upstream refuses, the client's
connection is reset, as a load balancer with no healthy backend answers. A connection stays
with its upstream until either side ends it: the other side is then closed too (reset when
the first side was reset, as a killed process resets its peer). ``drop_connections()``
resets every open connection, the way a balancer restart or a network blip does.

What a layer-4 proxy such as Envoy's ``tcp_proxy`` with round-robin and connect failure
retries does, small enough to read: a test harness, like the rest of
``its_camera_ai.testing``; never used by a service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from its_camera_ai.testing._loopback import LOOPBACK, LoopbackServer, reset

__all__ = ["Balancer", "BalancerCounters"]

_CHUNK_BYTES = 64 * 1024


@dataclass
class BalancerCounters:
    """What the balancer has seen since it started."""

    accepted: int = 0
    # Connections handed to each upstream port.
    connections: Counter[int] = field(default_factory=Counter)
    # Connection attempts an upstream refused (each skipped for the next one).
    skipped: Counter[int] = field(default_factory=Counter)
    # Client connections reset because every upstream refused.
    unserved: int = 0
    reset: int = 0


class Balancer(LoopbackServer):
    """Round-robin from ``127.0.0.1:<port>`` over ``127.0.0.1:<upstream port>``s (see the
    module docstring). Use as ``async with``."""

    def __init__(self, upstream_ports: Sequence[int]) -> None:
        if not upstream_ports:
            raise ValueError("a balancer needs at least one upstream")
        super().__init__()
        self.upstream_ports = list(upstream_ports)
        self.counters = BalancerCounters()
        self._next = 0
        # Open connections: client writer -> (upstream port, upstream writer).
        self._open: dict[asyncio.StreamWriter, tuple[int, asyncio.StreamWriter]] = {}

    def open_upstreams(self) -> list[int]:
        """The upstream port of every open connection (one entry per connection)."""
        return [upstream for upstream, _ in self._open.values()]

    def drop_connections(self) -> None:
        """Reset (RST) every open connection, both sides, now."""
        for client, (_, upstream) in list(self._open.items()):
            reset(client)
            reset(upstream)
        self.counters.reset += len(self._open)
        self._open.clear()

    async def _connect(self) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The next upstream in turn that accepts a connection; None when none does."""
        count = len(self.upstream_ports)
        # Each connection tries every upstream once, from its own turn on. Advancing the
        # shared turn per try instead let connections accepted together (clients leaving a
        # stopping instance at once) each try the refusing upstream twice while the others
        # moved the turn past the live one: reset, with a live upstream available.
        first = self._next
        self._next = (first + 1) % count
        for offset in range(count):
            upstream = self.upstream_ports[(first + offset) % count]
            try:
                reader, writer = await asyncio.open_connection(LOOPBACK, upstream)
            except OSError:
                self.counters.skipped[upstream] += 1
                continue
            return upstream, reader, writer
        return None

    async def _accept(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:  # fmt: skip
        self.counters.accepted += 1
        connected = await self._connect()
        if connected is None:
            self.counters.unserved += 1
            reset(client_writer)
            return
        upstream, upstream_reader, upstream_writer = connected
        self.counters.connections[upstream] += 1
        self._open[client_writer] = (upstream, upstream_writer)
        pumps = [
            self._spawn(self._pump(client_reader, upstream_writer)),
            self._spawn(self._pump(upstream_reader, client_writer)),
        ]
        done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        was_reset = any(not task.cancelled() and task.result() is False for task in done)
        for pump in pumps:
            pump.cancel()
        if self._open.pop(client_writer, None) is None:
            return  # dropped: both sides reset already
        for writer in (client_writer, upstream_writer):
            if was_reset:
                reset(writer)
            else:
                writer.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Copy one direction; True at a clean end of stream, False when either side failed."""
        try:
            while chunk := await reader.read(_CHUNK_BYTES):
                writer.write(chunk)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.write_eof()
        except (ConnectionError, OSError):
            return False
        return True
