"""The query answer cache against the machine's Redis: levels, TTLs, invalidation, outages."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from its_camera_ai.common import (
    REDIS_FAILURES,
    BreakerState,
    CircuitBreaker,
    QueryCacheSettings,
)
from its_camera_ai.query import END_OF_TIME_NS, AnswerCache, CacheKey, Kind
from tests.conftest import REDIS_URL, free_port

# A value computed within the cache's clock margin of its subscription is not trusted for
# l2_ttl: tests that rely on the full L2 TTL wait this long after subscribing.
_PAST_MARGIN_SECONDS = 0.1

Make = Callable[..., AnswerCache]


class _Answers:
    """Computations that count their calls; an answer names its key and call number."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(
        self, name: str, *, delay: float = 0.0, fail: Exception | None = None
    ) -> Callable[[], Awaitable[bytes]]:
        async def compute() -> bytes:
            self.calls[name] += 1
            n = self.calls[name]
            await asyncio.sleep(delay)
            if fail is not None:
                raise fail
            return f"{name}#{n}".encode()

        return compute


def _key(
    camera: str | None = "cam-a", from_ns: int = 0, to_ns: int = 100, kind: Kind = "counts"
) -> CacheKey:
    cameras = None if camera is None else frozenset({camera})
    return CacheKey(kind, f"{kind}/{camera}/{from_ns}/{to_ns}", cameras, from_ns, to_ns)


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _requests(registry: CollectorRegistry, level: str, result: str) -> float:
    return _sample(registry, "query_cache_requests_total", level=level, result=result)


def _refreshes(registry: CollectorRegistry, result: str) -> float:
    return _sample(registry, "query_cache_refreshes_total", result=result)


def _heard(registry: CollectorRegistry) -> float:
    return _sample(registry, "query_cache_invalidations_total")


async def _until(predicate: Callable[[], Any]) -> None:
    deadline = time.monotonic() + 5.0
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _subscribed(cache: AnswerCache) -> None:
    cache.start()
    await _until(lambda: cache.subscribed)
    await asyncio.sleep(_PAST_MARGIN_SECONDS)


async def _publish(
    redis: Redis, channel: str, camera: str, from_ns: int, to_ns: int, events: bool = False
) -> None:
    body = {"camera": camera, "from_ns": from_ns, "to_ns": to_ns, "events": events}
    await redis.publish(channel, json.dumps(body))


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def names(redis: Redis) -> AsyncIterator[tuple[str, str]]:
    """This test's own L2 key prefix and commit channel."""
    prefix = f"its:test:query-cache:{uuid.uuid4().hex[:12]}"
    try:
        yield prefix, f"{prefix}:commits"
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)


@pytest.fixture
async def make(names: tuple[str, str]) -> AsyncIterator[Make]:
    caches: list[AnswerCache] = []

    def build(
        redis: Redis | None,
        *,
        registry: CollectorRegistry | None = None,
        breaker: CircuitBreaker | None = None,
        on_events: Callable[[], None] | None = None,
        **settings: Any,
    ) -> AnswerCache:
        cache = AnswerCache(
            QueryCacheSettings(**settings),
            redis,
            breaker,
            registry or CollectorRegistry(),
            key_prefix=names[0],
            channel=names[1],
            on_events=on_events,
        )
        caches.append(cache)
        return cache

    try:
        yield build
    finally:
        for cache in caches:
            await cache.close()


async def _l2_written(redis: Redis, names: tuple[str, str], count: int) -> None:
    async def written() -> bool:
        return len([k async for k in redis.scan_iter(match=f"{names[0]}:v1:*")]) >= count

    await _until(written)


async def test_l1_hit_and_metrics(make: Make) -> None:
    registry = CollectorRegistry()
    cache = make(None, registry=registry)
    answers = _Answers()
    for _ in range(3):
        assert await cache.get_or_compute(_key(), answers("a")) == b"a#1"
    assert answers.calls["a"] == 1
    assert _requests(registry, "l1", "hit") == 2
    assert _requests(registry, "l1", "miss") == 1
    assert _requests(registry, "l2", "hit") + _requests(registry, "l2", "miss") == 0
    assert _sample(registry, "query_cache_entries") == 1
    assert _heard(registry) == 0
    assert _sample(registry, "query_cache_subscribed") == 0
    ratios = cache.hit_ratios()
    assert ratios.l1 == pytest.approx(2 / 3)
    assert ratios.l2 == 0.0


async def test_disabled_computes_every_time(make: Make, redis: Redis) -> None:
    cache = make(redis, enabled=False)
    cache.start()
    answers = _Answers()
    assert await cache.get_or_compute(_key(), answers("a")) == b"a#1"
    assert await cache.get_or_compute(_key(), answers("a")) == b"a#2"
    assert len(cache) == 0
    assert not cache.subscribed


async def test_l1_entries_expire_after_ttl(make: Make) -> None:
    cache = make(None, l1_ttl_seconds=0.2)
    answers = _Answers()
    assert await cache.get_or_compute(_key(), answers("a")) == b"a#1"
    assert await cache.get_or_compute(_key(), answers("a")) == b"a#1"
    await asyncio.sleep(0.25)
    assert await cache.get_or_compute(_key(), answers("a")) == b"a#2"


async def test_ttls_run_from_computation_across_levels(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    cache = make(redis, l1_ttl_seconds=0.3, l2_ttl_seconds=0.5)
    await _subscribed(cache)
    answers = _Answers()
    started = time.monotonic()
    assert await cache.get_or_compute(_key(), answers("a")) == b"a#1"
    await _l2_written(redis, names, 1)
    await asyncio.sleep(0.35 - (time.monotonic() - started))
    # L1 expired; L2 (0.5 s from computation) still serves it, and L1 may keep it no longer.
    assert await cache.get_or_compute(_key(), answers("a")) == b"a#1"
    await asyncio.sleep(0.55 - (time.monotonic() - started))
    assert await cache.get_or_compute(_key(), answers("a")) == b"a#2"


async def test_unsubscribed_cache_serves_l2_only_within_l1_ttl(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    writer = make(redis, l1_ttl_seconds=0.3, l2_ttl_seconds=5)
    reader = make(redis, l1_ttl_seconds=0.3, l2_ttl_seconds=5)  # never started: deaf
    answers = _Answers()
    started = time.monotonic()
    assert await writer.get_or_compute(_key(), answers("a")) == b"a#1"
    await _l2_written(redis, names, 1)
    assert await reader.get_or_compute(_key(), answers("a")) == b"a#1"
    await asyncio.sleep(0.35 - (time.monotonic() - started))
    assert await reader.get_or_compute(_key(), answers("a")) == b"a#2"


async def test_size_bound_evicts_least_recently_used(make: Make) -> None:
    registry = CollectorRegistry()
    cache = make(None, registry=registry, l1_max_entries=3)
    answers = _Answers()
    keys = {name: _key(from_ns=i * 100, to_ns=i * 100 + 100) for i, name in enumerate("abcd")}
    for name in "abc":
        await cache.get_or_compute(keys[name], answers(name))
    await cache.get_or_compute(keys["a"], answers("a"))  # a is now the most recent
    await cache.get_or_compute(keys["d"], answers("d"))  # evicts b
    assert _sample(registry, "query_cache_entries") == 3
    for name in "acd":
        assert await cache.get_or_compute(keys[name], answers(name)) == f"{name}#1".encode()
    assert await cache.get_or_compute(keys["b"], answers("b")) == b"b#2"


async def test_commit_marks_stale_its_camera_and_overlapping_spans_only(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    registry = CollectorRegistry()
    cache = make(redis, registry=registry, refresh_interval_seconds=0.01)
    await _subscribed(cache)
    answers = _Answers()
    keys = {
        "overlap": _key("cam-a", 0, 100),
        "later": _key("cam-a", 150, 300),  # [50, 150) ends where this begins
        "other_camera": _key("cam-b", 0, 100),
        "all_overlap": _key(None, 120, 130, kind="summary"),
        "all_later": _key(None, 500, 600),
        "events": _key("cam-a", 0, END_OF_TIME_NS, kind="events"),
    }
    for name, key in keys.items():
        await cache.get_or_compute(key, answers(name))
    await _l2_written(redis, names, len(keys))
    await redis.publish(names[1], b"not json")  # ignored; the listener carries on
    await _publish(redis, names[1], "cam-a", 50, 150)
    await _until(lambda: _heard(registry) == 1)
    assert len(cache) == len(keys)  # marked, not dropped
    changed = {"overlap", "all_overlap"}
    for name, key in keys.items():
        # Served at once, the changed ones too: they start their refresh.
        assert await cache.get_or_compute(key, answers(name)) == f"{name}#1".encode(), name
    assert _sample(registry, "query_cache_stale_hits_total") == len(changed)
    # Stored, not only started: a refresh counts as computed once its answer is in L1.
    await _until(lambda: _refreshes(registry, "computed") == len(changed))
    assert all(answers.calls[name] == 2 for name in changed)
    for name, key in keys.items():
        expected = f"{name}#{2 if name in changed else 1}".encode()
        assert await cache.get_or_compute(key, answers(name)) == expected, name
    # The refreshes found L2 copies older than the commit, and computed; requests never
    # waited, so L2 saw only the first computations.
    assert _refreshes(registry, "computed") == len(changed)
    assert _refreshes(registry, "l2") == 0
    assert _requests(registry, "l1", "hit") == 2 * len(keys)
    assert _requests(registry, "l2", "miss") == len(keys)


async def test_events_commit_marks_stale_only_that_cameras_events(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    registry, woken = CollectorRegistry(), []
    cache = make(
        redis,
        registry=registry,
        on_events=lambda: woken.append(True),
        refresh_interval_seconds=0.01,
    )
    await _subscribed(cache)
    assert len(woken) == 1  # announcements before the subscription may be lost
    answers = _Answers()
    keys = {
        "events_a": _key("cam-a", 0, END_OF_TIME_NS, kind="events"),
        "events_a_filtered": _key("cam-a", 0, 10, kind="events"),
        "events_b": _key("cam-b", 0, END_OF_TIME_NS, kind="events"),
        "events_all": _key(None, 0, END_OF_TIME_NS, kind="events"),
        "counts_a": _key("cam-a", 0, 100),
    }
    for name, key in keys.items():
        await cache.get_or_compute(key, answers(name))
    await _publish(redis, names[1], "cam-a", 1000, 1001, events=True)
    await _until(lambda: _heard(registry) == 1)
    changed = {"events_a", "events_a_filtered", "events_all"}
    for name, key in keys.items():
        assert await cache.get_or_compute(key, answers(name)) == f"{name}#1".encode(), name
    # Stored, not only started: a refresh counts as computed once its answer is in L1.
    await _until(lambda: _refreshes(registry, "computed") == len(changed))
    assert all(answers.calls[name] == 2 for name in changed)
    for name, key in keys.items():
        expected = f"{name}#{2 if name in changed else 1}".encode()
        assert await cache.get_or_compute(key, answers(name)) == expected, name
    assert len(woken) == 2
    await _publish(redis, names[1], "cam-a", 0, 10)  # traffic only: no event stream wakes
    await _until(lambda: _heard(registry) == 2)
    assert len(woken) == 2


async def test_l2_is_shared_between_caches(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    first, registry = make(redis), CollectorRegistry()
    second = make(redis, registry=registry)
    await _subscribed(first)
    await _subscribed(second)
    answers = _Answers()
    assert await first.get_or_compute(_key(), answers("a")) == b"a#1"
    await _l2_written(redis, names, 1)
    assert await second.get_or_compute(_key(), answers("a")) == b"a#1"
    assert await second.get_or_compute(_key(), answers("a")) == b"a#1"
    assert answers.calls["a"] == 1
    assert _requests(registry, "l2", "hit") == 1
    assert _requests(registry, "l1", "hit") == 1
    assert second.hit_ratios().l2 == 1.0


async def test_l2_value_older_than_a_heard_commit_is_served_stale_and_refreshed(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    first, registry = make(redis), CollectorRegistry()
    second = make(redis, registry=registry, refresh_interval_seconds=0.01)
    await _subscribed(first)
    await _subscribed(second)
    answers = _Answers()
    changed, unchanged = _key("cam-a", 0, 100), _key("cam-a", 200, 300)
    await first.get_or_compute(changed, answers("changed"))
    await first.get_or_compute(unchanged, answers("unchanged"))
    await _l2_written(redis, names, 2)
    await _publish(redis, names[1], "cam-a", 50, 60)
    await _until(lambda: _heard(registry) == 1)
    # Within its TTL an L2 value a commit covers serves like a stale L1 entry: at once,
    # refreshed in the background (its refresh cannot take it again, so it computes).
    assert await second.get_or_compute(changed, answers("changed")) == b"changed#1"
    assert await second.get_or_compute(unchanged, answers("unchanged")) == b"unchanged#1"
    assert _requests(registry, "l2", "hit") == 2
    await _until(lambda: _refreshes(registry, "computed") == 1)
    assert await second.get_or_compute(changed, answers("changed")) == b"changed#2"
    assert answers.calls == {"changed": 2, "unchanged": 1}


async def test_a_refresh_takes_an_l2_value_newer_than_the_commit(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    first_registry, second_registry = CollectorRegistry(), CollectorRegistry()
    first = make(redis, registry=first_registry, refresh_interval_seconds=0.01)
    second = make(redis, registry=second_registry, refresh_interval_seconds=0.01)
    await _subscribed(first)
    await _subscribed(second)
    answers = _Answers()
    assert await first.get_or_compute(_key(), answers("a")) == b"a#1"
    await _l2_written(redis, names, 1)
    assert await second.get_or_compute(_key(), answers("a")) == b"a#1"  # from L2
    await _publish(redis, names[1], "cam-a", 0, 10)
    await _until(lambda: _heard(first_registry) == _heard(second_registry) == 1)
    await asyncio.sleep(_PAST_MARGIN_SECONDS)  # a computation from now is after the commit
    assert await first.get_or_compute(_key(), answers("a")) == b"a#1"  # stale: refreshes
    await _until(lambda: _refreshes(first_registry, "computed") == 1)
    await asyncio.sleep(0.05)  # its L2 write
    assert await second.get_or_compute(_key(), answers("a")) == b"a#1"  # stale: refreshes
    await _until(lambda: _refreshes(second_registry, "l2") == 1)
    assert await second.get_or_compute(_key(), answers("a")) == b"a#2"
    assert answers.calls["a"] == 2
    assert _refreshes(second_registry, "computed") == 0


async def test_concurrent_misses_compute_once(make: Make) -> None:
    registry = CollectorRegistry()
    cache = make(None, registry=registry)
    answers = _Answers()
    results = await asyncio.gather(
        *(cache.get_or_compute(_key(), answers("a", delay=0.05)) for _ in range(10))
    )
    assert results == [b"a#1"] * 10
    assert answers.calls["a"] == 1
    assert _requests(registry, "l1", "miss") == 10


async def test_a_failed_computation_reaches_every_caller_and_is_not_cached(
    make: Make,
) -> None:
    cache = make(None)
    answers = _Answers()
    failing = answers("a", delay=0.05, fail=RuntimeError("database gone"))
    results = await asyncio.gather(
        *(cache.get_or_compute(_key(), failing) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert answers.calls["a"] == 1
    assert len(cache) == 0
    assert await cache.get_or_compute(_key(), answers("a")) == b"a#2"


async def test_a_commit_during_a_computation_leaves_its_answer_stale(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    registry = CollectorRegistry()
    cache = make(redis, registry=registry, refresh_interval_seconds=0.01)
    await _subscribed(cache)
    gates: list[asyncio.Event] = []

    async def gated() -> bytes:
        gates.append(gate := asyncio.Event())
        n = len(gates)
        await gate.wait()
        return f"a#{n}".encode()

    before = asyncio.create_task(cache.get_or_compute(_key(), gated))
    await _until(lambda: len(gates) == 1)
    await _publish(redis, names[1], "cam-a", 0, 10)
    await _until(lambda: _heard(registry) == 1)
    # A caller arriving after the commit joins the computation: its answer is at most
    # l1_ttl old, and a refresh follows.
    after = asyncio.create_task(cache.get_or_compute(_key(), gated))
    await asyncio.sleep(0.05)
    assert len(gates) == 1
    gates[0].set()
    assert await before == await after == b"a#1"
    assert len(cache) == 1  # stored, stale: the callers' answer started a refresh
    await _until(lambda: len(gates) == 2)
    assert await cache.get_or_compute(_key(), gated) == b"a#1"  # still served meanwhile
    gates[1].set()
    await _until(lambda: _refreshes(registry, "computed") == 1)
    assert await cache.get_or_compute(_key(), gated) == b"a#2"
    assert len(gates) == 2


async def test_answers_above_the_size_limit_are_not_cached(make: Make) -> None:
    cache = make(None, max_entry_bytes=1024)
    calls = 0

    async def big() -> bytes:
        nonlocal calls
        calls += 1
        return b"x" * 2048

    for _ in range(2):
        assert await cache.get_or_compute(_key(), big) == b"x" * 2048
    assert calls == 2


async def test_redis_down_degrades_to_l1_and_counts_errors(make: Make) -> None:
    dead = Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2, socket_connect_timeout=0.2
    )
    try:
        registry = CollectorRegistry()
        cache = make(dead, registry=registry, l1_ttl_seconds=0.3)
        cache.start()
        answers = _Answers()
        keys = [_key(from_ns=i * 100, to_ns=i * 100 + 100) for i in range(3)]
        for _ in range(2):
            for i, key in enumerate(keys):
                answer = await cache.get_or_compute(key, answers(str(i)), alias=f"{i}".encode())
                assert answer == f"{i}#1".encode()
        assert _requests(registry, "l2", "error") == 3
        assert _requests(registry, "l1", "hit") == 3
        assert cache.lookup(b"0") == b"0#1"
        await asyncio.sleep(0.3)  # past l1_ttl: computed again, still without an error
        assert cache.lookup(b"0") is None
        assert await cache.get_or_compute(keys[0], answers("0")) == b"0#2"
        assert _requests(registry, "l2", "error") == 4
        await asyncio.sleep(0.2)  # the listener keeps failing without harm
        assert not cache.subscribed
        assert _sample(registry, "query_cache_subscribed") == 0
    finally:
        await dead.aclose()


async def test_open_breaker_skips_redis(make: Make) -> None:
    dead = Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2, socket_connect_timeout=0.2
    )
    try:
        registry = CollectorRegistry()
        breaker = CircuitBreaker(
            "redis", failure_threshold=1, reset_timeout_seconds=60, failures=REDIS_FAILURES
        )
        cache = make(dead, registry=registry, breaker=breaker)
        answers = _Answers()
        assert await cache.get_or_compute(_key(), answers("a")) == b"a#1"
        assert breaker.state is BreakerState.OPEN
        assert await cache.get_or_compute(_key("cam-b"), answers("b")) == b"b#1"
        assert _requests(registry, "l2", "error") == 2
    finally:
        await dead.aclose()


async def test_hit_path_cost(make: Make) -> None:
    """Not a gate: prints what an L1 hit costs (the dashboards' ~3,000 hits/s)."""
    cache = make(None, l1_ttl_seconds=60)
    answers = _Answers()
    cameras = [f"cam-{i}" for i in range(100)]
    for camera in cameras:
        await cache.get_or_compute(_key(camera), answers(camera))
    compute = answers("unused")
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        for camera in cameras:
            # As a servicer would: a key built per request (its hash is not cached).
            key = CacheKey("counts", f"counts/{camera}/0/100", frozenset((camera,)), 0, 100)
            await cache.get_or_compute(key, compute)
    per_hit_us = (time.perf_counter() - started) / (rounds * len(cameras)) * 1e6
    print(f"\nL1 hit: {per_hit_us:.2f} us/hit ({per_hit_us * 3000 / 1e4:.3f}% of a core at 3k/s)")
    assert answers.calls["unused"] == 0


# -- stale-while-revalidate ---------------------------------------------------------------------


async def _commit(
    redis: Redis, names: tuple[str, str], registry: CollectorRegistry, camera: str = "cam-a"
) -> None:
    """Announces a commit covering ``_key(camera)`` and waits until the cache heard it."""
    heard = _heard(registry)
    await _publish(redis, names[1], camera, 0, 10)
    await _until(lambda: _heard(registry) > heard)


async def test_a_stale_entry_is_served_at_once_and_refreshed_once(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    registry = CollectorRegistry()
    cache = make(redis, registry=registry, refresh_interval_seconds=0.01)
    await _subscribed(cache)
    answers = _Answers()
    slow = answers("a", delay=0.3)  # what the entry keeps for its refreshes
    assert await cache.get_or_compute(_key(), slow) == b"a#1"
    await asyncio.sleep(0.02)  # past the refresh interval
    await _commit(redis, names, registry)
    started = time.monotonic()
    results = await asyncio.gather(*(cache.get_or_compute(_key(), slow) for _ in range(50)))
    assert time.monotonic() - started < 0.1, "a caller waited for the refresh"
    assert results == [b"a#1"] * 50
    await _until(lambda: answers.calls["a"] == 2)  # one refresh for all of them
    for _ in range(50):  # more requests while it runs: no second refresh
        assert await cache.get_or_compute(_key(), slow) == b"a#1"
    await _until(lambda: _refreshes(registry, "computed") == 1)
    assert await cache.get_or_compute(_key(), slow) == b"a#2"
    assert answers.calls["a"] == 2
    assert _requests(registry, "l1", "hit") == 101
    assert _sample(registry, "query_cache_stale_hits_total") == 100
    assert cache.hit_ratios().l1 == pytest.approx(101 / 102)


async def test_refreshes_of_a_key_are_rate_limited(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    # The margin leaves room for a request that starts just before a loop's deadline on a
    # loaded machine (CI runs the whole suite on two cores).
    registry, interval, margin = CollectorRegistry(), 0.5, 0.2
    cache = make(redis, registry=registry, refresh_interval_seconds=interval)
    await _subscribed(cache)
    answers = _Answers()
    computed = time.monotonic()
    assert await cache.get_or_compute(_key(), answers("a")) == b"a#1"
    await _commit(redis, names, registry)
    # Commits keep coming, requests too: the refresh waits for the interval, then runs once
    # (also when no request comes at that moment) and then again only an interval later.
    while time.monotonic() < computed + interval - margin:
        assert await cache.get_or_compute(_key(), answers("a")) == b"a#1"
        await _commit(redis, names, registry)
    assert answers.calls["a"] == 1
    await _until(lambda: answers.calls["a"] == 2)
    refreshed = time.monotonic()
    assert refreshed - computed >= interval
    await _commit(redis, names, registry)
    while time.monotonic() < refreshed + interval - margin:
        assert await cache.get_or_compute(_key(), answers("a")) in (b"a#1", b"a#2")
    assert answers.calls["a"] == 2
    # Stored, not only started: a refresh counts as computed once its answer is in L1.
    await _until(lambda: _refreshes(registry, "computed") == 2)
    assert answers.calls["a"] == 3
    assert await cache.get_or_compute(_key(), answers("a")) == b"a#3"


async def test_an_entry_past_its_ttl_is_never_served(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    registry = CollectorRegistry()
    cache = make(redis, registry=registry, l1_ttl_seconds=0.3, l2_ttl_seconds=0.3)
    await _subscribed(cache)
    answers = _Answers()
    computed = time.monotonic()
    assert await cache.get_or_compute(_key(), answers("a")) == b"a#1"
    await _commit(redis, names, registry)  # stale; nobody asks, so no refresh runs
    await asyncio.sleep(computed + 0.4 - time.monotonic())
    assert cache.lookup(b"never recorded") is None
    started = time.monotonic()
    assert await cache.get_or_compute(_key(), answers("a", delay=0.1)) == b"a#2"
    assert time.monotonic() - started >= 0.1  # it waited for the computation
    assert _requests(registry, "l1", "miss") == 2


async def test_a_failed_refresh_keeps_the_stale_entry_until_its_ttl(
    make: Make, redis: Redis, names: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    cache = make(
        redis,
        registry=registry,
        l1_ttl_seconds=0.5,
        l2_ttl_seconds=0.5,
        refresh_interval_seconds=0.05,
    )
    await _subscribed(cache)
    failing = False

    async def compute() -> bytes:
        if failing:
            raise RuntimeError("database gone")
        return b"a#1"

    computed = time.monotonic()
    assert await cache.get_or_compute(_key(), compute) == b"a#1"
    failing = True
    await _commit(redis, names, registry)
    while time.monotonic() < computed + 0.4:
        assert await cache.get_or_compute(_key(), compute) == b"a#1"  # never raises
        await asyncio.sleep(0.02)
    assert _refreshes(registry, "failed") >= 3
    warnings = [r for r in caplog.records if "refresh failed" in r.getMessage()]
    assert [r.levelname for r in warnings].count("WARNING") == 1  # then at debug
    assert warnings[0].exc_info is not None
    await asyncio.sleep(computed + 0.6 - time.monotonic())
    with pytest.raises(RuntimeError, match="database gone"):
        await cache.get_or_compute(_key(), compute)
    failing = False
    assert await cache.get_or_compute(_key(), compute) == b"a#1"


async def test_close_cancels_refreshes(make: Make, redis: Redis, names: tuple[str, str]) -> None:
    registry = CollectorRegistry()
    cache = make(redis, registry=registry, refresh_interval_seconds=0.3)
    await _subscribed(cache)
    calls: Counter[str] = Counter()
    cancelled: list[str] = []

    def compute(name: str) -> Callable[[], Awaitable[bytes]]:
        async def run() -> bytes:
            calls[name] += 1
            if calls[name] == 1:
                return f"{name}#1".encode()
            try:
                await asyncio.sleep(30)  # a refresh that would outlive the cache
            except asyncio.CancelledError:
                cancelled.append(name)
                raise
            return f"{name}#{calls[name]}".encode()

        return run

    await cache.get_or_compute(_key("cam-a"), compute("a"))
    await asyncio.sleep(0.3)
    await cache.get_or_compute(_key("cam-b"), compute("b"))
    await _commit(redis, names, registry, "cam-a")
    await _commit(redis, names, registry, "cam-b")
    # a's refresh runs (and blocks); b's waits for its interval.
    assert await cache.get_or_compute(_key("cam-a"), compute("a")) == b"a#1"
    assert await cache.get_or_compute(_key("cam-b"), compute("b")) == b"b#1"
    await _until(lambda: calls["a"] == 2)
    started = time.monotonic()
    await cache.close()
    assert time.monotonic() - started < 1.0
    assert cancelled == ["a"]
    await asyncio.sleep(0.35)  # b's refresh would have started by now
    assert await cache.get_or_compute(_key("cam-a"), compute("a")) == b"a#1"  # no refresh
    await asyncio.sleep(0.05)
    assert calls == {"a": 2, "b": 1}


async def test_waiters_count_as_l1_misses_and_one_l2_lookup(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    registries = [CollectorRegistry(), CollectorRegistry()]
    first, second = (make(redis, registry=r) for r in registries)
    answers = _Answers()
    for cache, registry in zip((first, second), registries, strict=True):
        results = await asyncio.gather(
            *(cache.get_or_compute(_key(), answers("a", delay=0.05)) for _ in range(10))
        )
        assert results == [b"a#1"] * 10
        await _l2_written(redis, names, 1)
        assert _requests(registry, "l1", "miss") == 10
    assert _requests(registries[0], "l2", "miss") == 1  # one computation, one lookup
    assert _requests(registries[1], "l2", "hit") == 1
    assert second.hit_ratios().l2 == 1.0
    assert answers.calls["a"] == 1


# -- aliases ------------------------------------------------------------------------------------


async def test_lookup_by_alias(make: Make) -> None:
    registry = CollectorRegistry()
    cache = make(None, registry=registry, l1_max_entries=2)
    answers = _Answers()
    assert cache.lookup(b"req-a") is None  # unknown: counts nothing
    assert await cache.get_or_compute(_key("cam-a"), answers("a"), alias=b"req-a") == b"a#1"
    assert cache.lookup(b"req-a") == b"a#1"
    # Another request with the same answer (from a hit this time) is an alias too.
    assert await cache.get_or_compute(_key("cam-a"), answers("a"), alias=b"req-a2") == b"a#1"
    assert cache.lookup(b"req-a2") == b"a#1"
    assert _requests(registry, "l1", "hit") == 3
    assert _requests(registry, "l1", "miss") == 1
    # Evicted (least recently used), its aliases go with it: misses that count nothing.
    await cache.get_or_compute(_key("cam-b"), answers("b"), alias=b"req-b")
    await cache.get_or_compute(_key("cam-c"), answers("c"), alias=b"req-c")
    assert cache.lookup(b"req-a") is None
    assert cache.lookup(b"req-a2") is None
    assert cache.lookup(b"req-b") == b"b#1"
    assert _requests(registry, "l1", "hit") == 4
    assert _requests(registry, "l1", "miss") == 3
    assert answers.calls == {"a": 1, "b": 1, "c": 1}


async def test_aliases_are_bounded_and_expire_with_their_entry(make: Make) -> None:
    registry = CollectorRegistry()
    cache = make(None, registry=registry, l1_ttl_seconds=0.2)
    answers = _Answers()
    aliases = [f"req-{i}".encode() for i in range(20)]
    for alias in aliases:
        await cache.get_or_compute(_key(), answers("a"), alias=alias)
    assert cache.lookup(aliases[-1]) == b"a#1"
    assert cache.lookup(aliases[0]) is None  # an entry keeps its latest few aliases only
    huge = b"x" * 10_000
    await cache.get_or_compute(_key(), answers("a"), alias=huge)
    assert cache.lookup(huge) is None  # too long to keep
    await asyncio.sleep(0.25)
    counted = _requests(registry, "l1", "hit") + _requests(registry, "l1", "miss")
    assert cache.lookup(aliases[-1]) is None  # past its TTL: a miss, counting nothing
    assert _requests(registry, "l1", "hit") + _requests(registry, "l1", "miss") == counted
    assert await cache.get_or_compute(_key(), answers("a"), alias=aliases[-1]) == b"a#2"
    assert cache.lookup(aliases[-1]) == b"a#2"


async def test_lookup_of_a_stale_entry_refreshes_it(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    registry = CollectorRegistry()
    cache = make(redis, registry=registry, refresh_interval_seconds=0.01)
    await _subscribed(cache)
    answers = _Answers()
    slow = answers("a", delay=0.1)
    assert await cache.get_or_compute(_key(), slow, alias=b"req") == b"a#1"
    await _commit(redis, names, registry)
    assert [cache.lookup(b"req") for _ in range(20)] == [b"a#1"] * 20
    await _until(lambda: _refreshes(registry, "computed") == 1)
    assert cache.lookup(b"req") == b"a#2"
    assert answers.calls["a"] == 2
    assert _sample(registry, "query_cache_stale_hits_total") == 20


async def test_caches_sharing_l2_under_a_stream_of_commits(
    make: Make, redis: Redis, names: tuple[str, str]
) -> None:
    """Two query processes, many clients, few answers, each changed every 50 ms."""
    interval, registries = 0.1, [CollectorRegistry(), CollectorRegistry()]
    first, second = (
        make(redis, registry=r, l1_ttl_seconds=1.0, refresh_interval_seconds=interval)
        for r in registries
    )
    await _subscribed(first)
    await _subscribed(second)
    keys = [_key("cam-a", 0, 100 + i) for i in range(5)]
    computations: Counter[int] = Counter()
    stop = asyncio.Event()

    def compute(i: int) -> Callable[[], Awaitable[bytes]]:
        async def run() -> bytes:
            computations[i] += 1
            await asyncio.sleep(0.01)  # the database
            return f"{i}#{computations[i]}".encode()

        return run

    async def commits() -> None:
        while not stop.is_set():
            await _publish(redis, names[1], "cam-a", 0, 10)
            await asyncio.sleep(0.05)

    async def client(cache: AnswerCache) -> None:
        while not stop.is_set():
            for i, key in enumerate(keys):
                await cache.get_or_compute(key, compute(i), alias=f"{i}".encode())
                await asyncio.sleep(0.002)

    tasks = [asyncio.create_task(commits())]
    tasks += [asyncio.create_task(client(first)) for _ in range(10)]
    await asyncio.sleep(0.5)  # the second process starts later: its cold misses find L2
    tasks += [asyncio.create_task(client(second)) for _ in range(10)]
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*tasks)
    ratios = [first.hit_ratios(), second.hit_ratios()]
    print(
        f"\nL1 hit {ratios[0].l1:.1%} / {ratios[1].l1:.1%}, L2 hit {ratios[0].l2:.0%} / "
        f"{ratios[1].l2:.0%}, commits heard {_heard(registries[0]):.0f}, refreshes "
        f"computed {[_refreshes(r, 'computed') for r in registries]}, "
        f"from L2 {[_refreshes(r, 'l2') for r in registries]}"
    )
    assert ratios[0].l1 > 0.85
    assert ratios[1].l1 > 0.85
    assert ratios[1].l2 > 0.7
    # Database work per answer: at most one refresh per interval in each process.
    assert sum(computations.values()) <= 2 * len(keys) * (1.5 / interval + 2)
    assert _refreshes(registries[0], "failed") == 0


async def test_lookup_hit_cost(make: Make) -> None:
    """Not a gate: prints what a ``lookup`` hit costs (the servicer's path for a repeat)."""
    cache = make(None, l1_ttl_seconds=60)
    answers = _Answers()
    cameras = [f"cam-{i}" for i in range(100)]
    raw = {c: f"\x0a\x0ccameras/{c}\x12\x0c\x08\x80\xa3\xc3\xa6\x06".encode() for c in cameras}
    tag = b"GetTrafficCountsRequest\0"
    for camera in cameras:
        await cache.get_or_compute(_key(camera), answers(camera), alias=tag + raw[camera])
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        for camera in cameras:
            # As the servicer does: the alias is built per request (its hash is not cached).
            assert cache.lookup(tag + raw[camera]) is not None
    per_hit_us = (time.perf_counter() - started) / (rounds * len(cameras)) * 1e6
    print(f"\nlookup hit: {per_hit_us:.2f} us/hit (alias concatenation included)")
