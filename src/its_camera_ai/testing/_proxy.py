"""A fault-injecting TCP proxy on loopback, for chaos tests of the services' dependencies.

``FaultProxy`` listens on ``127.0.0.1`` (a port the OS picks) and forwards each connection
to an upstream on loopback. Faults switch at run time and apply to open connections too:

- ``latency_s``: every chunk, each direction, is delivered that long after it was read,
  pipelined like a link's propagation delay (chunks do not wait for each other's delay);
- ``black_hole()``: nothing is forwarded any more, in either direction, and new connections
  are accepted but get no answer. What packet loss looks like to TCP once retransmits keep
  failing: the peer neither answers nor resets. Held bytes are delivered on ``heal()``, as
  retransmits would deliver them, unless the client gave up on the connection meanwhile;
- ``refuse()``: new connections are reset as soon as they are accepted;
- ``drop_connections()``: every open connection is reset (RST) now.

A test harness, like the rest of ``its_camera_ai.testing``: never used by a service.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from its_camera_ai.testing._loopback import LOOPBACK, LoopbackServer, reset

__all__ = ["FaultProxy", "ProxyCounters"]

_CHUNK_BYTES = 64 * 1024
# Chunks read but not yet delivered, per direction: beyond it reading stops, so a stalled
# direction pushes back on its sender through TCP's own flow control.
_QUEUED_CHUNKS = 64


@dataclass
class ProxyCounters:
    """What the proxy has seen since it started."""

    accepted: int = 0
    refused: int = 0
    reset: int = 0
    bytes_forwarded: int = 0


class FaultProxy(LoopbackServer):
    """A TCP proxy from ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream_port>`` whose faults a
    test switches on and off (see the module docstring). Use as ``async with``."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.latency_s = 0.0
        self.counters = ProxyCounters()
        self._refusing = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def open_connections(self) -> int:
        """Connections with both sides open (each counts once)."""
        return len(self._writers) // 2

    # -- faults ------------------------------------------------------------------------------

    def black_hole(self) -> None:
        self._flowing.clear()

    def refuse(self) -> None:
        self._refusing = True

    def drop_connections(self) -> None:
        for writer in list(self._writers):
            reset(writer)
        self.counters.reset += len(self._writers) // 2
        self._writers.clear()

    def heal(self) -> None:
        """No fault any more: no latency, forwarding resumes, new connections accepted."""
        self.latency_s = 0.0
        self._refusing = False
        self._flowing.set()

    # -- forwarding --------------------------------------------------------------------------

    async def _accept(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:  # fmt: skip
        if self._refusing:
            self.counters.refused += 1
            reset(client_writer)
            return
        self.counters.accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                LOOPBACK, self.upstream_port
            )
        except OSError:
            reset(client_writer)  # as the upstream answered us
            return
        self._writers |= {client_writer, upstream_writer}
        pumps = [
            self._spawn(self._pump(client_reader, upstream_writer)),
            self._spawn(self._pump(upstream_reader, client_writer)),
        ]
        # Either side ending ends the connection: the other pump is cancelled.
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        for writer in (client_writer, upstream_writer):
            if writer in self._writers:
                self._writers.discard(writer)
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One direction: a task reads chunks into a queue with their due time, another
        delivers them; ends when the stream ended and was delivered, or either side failed."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUED_CHUNKS)
        reading = self._spawn(self._read(reader, queue))
        delivering = self._spawn(self._deliver(queue, writer))
        try:
            await asyncio.wait({reading, delivering}, return_when=asyncio.FIRST_COMPLETED)
            if reading.done() and reading.result():
                await delivering  # a clean end of stream: deliver what is queued first
        finally:
            reading.cancel()
            delivering.cancel()

    async def _read(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> bool:
        """True at a clean end of stream (queued as an empty chunk), False when reset."""
        try:
            while chunk := await reader.read(_CHUNK_BYTES):
                await queue.put((time.monotonic() + self.latency_s, chunk))
        except (ConnectionError, OSError):
            return False
        await queue.put((0.0, b""))
        return True

    async def _deliver(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                due, chunk = await queue.get()
                await self._flowing.wait()
                if not chunk:
                    writer.write_eof()
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._flowing.wait()  # black-holed while it waited
                writer.write(chunk)
                await writer.drain()
                self.counters.bytes_forwarded += len(chunk)
        except (ConnectionError, OSError):
            return
