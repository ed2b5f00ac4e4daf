"""Circuit breakers: the state machine, then against a real Redis and PostgreSQL that die."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from its_camera_ai.common import (
    POSTGRES_FAILURES,
    REDIS_FAILURES,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    RedisSettings,
    UnavailableError,
    create_redis,
)
from tests.reliability.conftest import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.reliability


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def fail() -> None:
    raise ConnectionRefusedError("down")


async def succeed() -> str:
    return "ok"


async def test_opens_after_threshold_and_fails_fast_without_calling() -> None:
    registry = CollectorRegistry()
    breaker = CircuitBreaker("db", failure_threshold=3, registry=registry, clock=FakeClock())
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            await breaker.call(fail)
    assert breaker.state is BreakerState.OPEN

    calls = 0

    async def counted() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    with pytest.raises(CircuitOpenError) as caught:
        await breaker.call(counted)
    assert calls == 0
    assert isinstance(caught.value, UnavailableError)  # UNAVAILABLE on the wire
    # Told to come back when a trial call will be let through, and which dependency is down.
    assert caught.value.retry_delay_seconds == pytest.approx(5.0)
    assert caught.value.metadata == {"dependency": "db"}
    assert registry.get_sample_value("circuit_breaker_state", {"dependency": "db"}) == 2
    assert (
        registry.get_sample_value("circuit_breaker_rejected_calls_total", {"dependency": "db"}) == 1
    )


async def test_half_open_trial_closes_or_reopens() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout_seconds=5, clock=clock)
    with pytest.raises(ConnectionRefusedError):
        await breaker.call(fail)
    clock.now = 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(ConnectionRefusedError):
        await breaker.call(fail)  # the trial fails: open for another period
    assert breaker.state is BreakerState.OPEN
    clock.now = 10.0
    assert await breaker.call(succeed) == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_only_one_trial_call_while_half_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("peer", failure_threshold=1, reset_timeout_seconds=1, clock=clock)
    with pytest.raises(ConnectionRefusedError):
        await breaker.call(fail)
    clock.now = 1.0
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "ok"

    trial = asyncio.create_task(breaker.call(slow))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)
    release.set()
    assert await trial == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_errors_that_are_not_outages_do_not_trip() -> None:
    breaker = CircuitBreaker("db", failure_threshold=1, failures=POSTGRES_FAILURES)

    async def bad_query() -> None:
        raise asyncpg.UndefinedTableError("no such table")

    for _ in range(3):
        with pytest.raises(asyncpg.UndefinedTableError):
            await breaker.call(bad_query)
    assert breaker.state is BreakerState.CLOSED


async def test_redis_outage_opens_then_recovery_closes(private_redis: PrivateRedis) -> None:
    client = create_redis(RedisSettings(url=private_redis.url, socket_timeout_seconds=0.5))
    assert client is not None
    breaker = CircuitBreaker(
        "redis", failure_threshold=2, reset_timeout_seconds=0.5, failures=REDIS_FAILURES
    )
    try:
        assert await breaker.call(client.ping)
        private_redis.stop()
        for _ in range(2):
            with pytest.raises(REDIS_FAILURES):
                await breaker.call(client.ping)
        assert breaker.state is BreakerState.OPEN
        started = time.perf_counter()
        with pytest.raises(CircuitOpenError):
            await breaker.call(client.ping)
        assert time.perf_counter() - started < 0.05  # no socket timeout paid while open

        private_redis.start()
        await asyncio.sleep(0.6)
        assert await breaker.call(client.ping)
        assert breaker.state is BreakerState.CLOSED
    finally:
        await client.aclose()


async def test_postgres_outage_opens_then_recovery_closes(
    private_postgres: PrivatePostgres,
) -> None:
    pool = await asyncpg.create_pool(private_postgres.dsn, min_size=1, max_size=2, timeout=1)
    breaker = CircuitBreaker(
        "postgres", failure_threshold=2, reset_timeout_seconds=0.5, failures=POSTGRES_FAILURES
    )

    async def select_one() -> int:
        return int(await pool.fetchval("SELECT 1", timeout=1))

    try:
        assert await breaker.call(select_one) == 1
        private_postgres.stop()
        for _ in range(2):
            with pytest.raises(POSTGRES_FAILURES):
                await breaker.call(select_one)
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(CircuitOpenError):
            await breaker.call(select_one)

        private_postgres.start()
        await asyncio.sleep(0.6)
        assert await breaker.call(select_one) == 1
        assert breaker.state is BreakerState.CLOSED
    finally:
        pool.terminate()
