"""The chaos suite's fault-injecting TCP proxy, against a real echo server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from its_camera_ai.testing import FaultProxy

pytestmark = pytest.mark.reliability


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    async with FaultProxy(server.sockets[0].getsockname()[1]) as started:
        yield started
    server.close()


async def _round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> float:
    started = time.monotonic()
    writer.write(payload)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 5.0) == payload
    return time.monotonic() - started


async def test_forwards_and_adds_latency_each_way(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await _round_trip(reader, writer, b"x" * 300_000) < 0.5
    proxy.latency_s = 0.1
    elapsed = await _round_trip(reader, writer, b"ping")
    assert 0.2 <= elapsed < 0.6  # 100 ms out, 100 ms back
    # Pipelined like a link: ten chunks in flight at once cost one delay, not ten.
    started = time.monotonic()
    for _ in range(10):
        writer.write(b"y" * 10)
        await writer.drain()
        await asyncio.sleep(0.01)
    await asyncio.wait_for(reader.readexactly(100), 5.0)
    assert time.monotonic() - started < 0.6
    writer.close()
    assert proxy.counters.accepted == 1


async def test_black_hole_holds_bytes_until_healed(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    await _round_trip(reader, writer, b"before")
    proxy.black_hole()
    writer.write(b"held")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.5)
    # A new connection is accepted, and answers nothing either.
    reader2, writer2 = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer2.write(b"new")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader2.readexactly(3), 0.3)
    proxy.heal()
    assert await asyncio.wait_for(reader.readexactly(4), 2.0) == b"held"
    assert await asyncio.wait_for(reader2.readexactly(3), 2.0) == b"new"
    for w in (writer, writer2):
        w.close()


async def test_refuse_and_drop(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    await _round_trip(reader, writer, b"a")
    proxy.refuse()
    refused_reader, refused_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(refused_reader.read(1), 2.0)
    refused_writer.close()
    assert proxy.counters.refused == 1
    await _round_trip(reader, writer, b"open ones still work")

    proxy.drop_connections()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 2.0)
    assert proxy.counters.reset == 1
    assert proxy.open_connections == 0
    proxy.heal()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    await _round_trip(reader, writer, b"healed")
    writer.close()
