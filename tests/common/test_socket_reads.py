"""A serving process's asyncio socket reads: 16 KiB at most, nothing lost."""

from __future__ import annotations

import asyncio
import os
from asyncio import selector_events

import pytest
from redis.asyncio import Redis

from its_camera_ai.common import SOCKET_READ_BYTES, bound_asyncio_socket_reads
from tests.conftest import REDIS_URL


@pytest.fixture
def bounded_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Process-wide in a server; here put back after the test.
    transport = selector_events._SelectorTransport
    monkeypatch.setattr(transport, "max_size", transport.max_size)
    bound_asyncio_socket_reads()


class _Chunks(asyncio.Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set_result(None)


@pytest.mark.usefixtures("bounded_reads")
async def test_a_large_reply_arrives_whole_in_reads_of_at_most_16_kib() -> None:
    payload = os.urandom(1 << 20)

    async def send(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(send, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        _, protocol = await asyncio.get_running_loop().create_connection(_Chunks, "127.0.0.1", port)
        await asyncio.wait_for(protocol.done, 10)
    assert b"".join(protocol.chunks) == payload
    assert max(map(len, protocol.chunks)) <= SOCKET_READ_BYTES


@pytest.mark.usefixtures("bounded_reads")
async def test_redis_values_larger_than_a_read_round_trip() -> None:
    redis = Redis.from_url(REDIS_URL)
    value = os.urandom(3 * SOCKET_READ_BYTES + 17)
    try:
        await redis.set("its:test:socket-reads", value, ex=60)
        assert await redis.get("its:test:socket-reads") == value
    finally:
        await redis.delete("its:test:socket-reads")
        await redis.aclose()
