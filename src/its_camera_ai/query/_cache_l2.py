"""The answer cache's parts around its policy: the Redis side (L2 values, the commit
channel) and the metrics.

Analytics publishes ``{"camera", "from_ns", "to_ns", "events"}`` on ``<its prefix>:commits``
after each durable commit. ``CommitChannel`` follows it (resubscribing with backoff) and
hands each commit to the cache; ``CommitLog`` remembers the commits heard for ``l2_ttl`` so
that an L2 value, which carries the wall time its computation started, can be compared with
them: other processes' values cannot be found by span when a commit arrives.

Private to ``_cache``: the policy (what is served, when it is refreshed, what each counter
counts) lives there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from its_camera_ai.common import REDIS_DOWN, CircuitBreaker, follow_channel

if TYPE_CHECKING:
    from its_camera_ai.query._cache import CacheKey

__all__ = [
    "CLOCK_MARGIN_SECONDS",
    "CacheCollector",
    "CacheStats",
    "Commit",
    "CommitChannel",
    "CommitLog",
    "L2Store",
    "changes",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")

# Clock skew between query hosts that comparing an L2 value's time with a commit's tolerates:
# a value computed this soon after a commit was heard counts as older than it.
CLOCK_MARGIN_SECONDS = 0.05
# Commits heard this close together are remembered as one (the hull of their spans): this
# bounds what an L2 lookup scans, at the price of treating the gaps between spans as changed.
_COALESCE_SECONDS = 0.1
# An L2 value: the wall time its computation started, then the answer.
_STAMP = struct.Struct("!d")
_L2_FORMAT = "v1"


@dataclass(frozen=True, slots=True)
class Commit:
    camera: str
    from_ns: int
    to_ns: int
    events: bool


def _parse_commit(data: Any) -> Commit | None:
    try:
        body = json.loads(data)
    except (TypeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    camera, from_ns, to_ns, events = (body.get(k) for k in ("camera", "from_ns", "to_ns", "events"))
    if not (
        isinstance(camera, str)
        and isinstance(from_ns, int)
        and isinstance(to_ns, int)
        and isinstance(events, bool)
    ):
        return None
    return Commit(camera, from_ns, to_ns, events)


def changes(key: CacheKey, from_ns: int, to_ns: int, events: bool) -> bool:
    """Whether a commit of one of ``key``'s cameras changes its answer: a span overlap, or
    for events any commit that changed events (a changed event may have started earlier)."""
    if key.kind == "events":
        return events
    return key.from_ns < to_ns and from_ns < key.to_ns


@dataclass(slots=True)
class _Mark:
    """Commits heard (``heard``: wall time of the last of them), merged into one span."""

    heard: float
    from_ns: int
    to_ns: int
    events: bool

    def merge(self, heard: float, commit: Commit) -> None:
        self.heard = heard
        self.from_ns = min(self.from_ns, commit.from_ns)
        self.to_ns = max(self.to_ns, commit.to_ns)
        self.events = self.events or commit.events


class CommitLog:
    """The commits heard in the last ``keep`` seconds, per camera and all together."""

    def __init__(self, keep: float) -> None:
        self._keep = keep
        self._by_camera: dict[str, deque[_Mark]] = {}
        self._all: deque[_Mark] = deque()

    def record(self, commit: Commit, heard: float) -> None:
        for marks in (self._by_camera.setdefault(commit.camera, deque()), self._all):
            while marks and marks[0].heard < heard - self._keep:
                marks.popleft()
            if marks and heard - marks[-1].heard < _COALESCE_SECONDS:
                marks[-1].merge(heard, commit)
            else:
                marks.append(_Mark(heard, commit.from_ns, commit.to_ns, commit.events))

    def covers(self, key: CacheKey, stamp: float) -> bool:
        """Whether a commit heard after ``stamp`` (wall time, less the clock margin) changed
        ``key``'s answer."""
        if key.cameras is None:
            logs: Iterable[deque[_Mark]] = (self._all,)
        else:
            logs = (self._by_camera[c] for c in key.cameras if c in self._by_camera)
        for marks in logs:
            for mark in reversed(marks):
                if mark.heard + CLOCK_MARGIN_SECONDS <= stamp:
                    break
                if changes(key, mark.from_ns, mark.to_ns, mark.events):
                    return True
        return False


class CommitChannel:
    """Follows the commit channel: ``on_commit`` for each well-formed announcement,
    ``on_subscribed`` on each (re)subscription. ``trusted_since`` is the wall time the
    current subscription began (None while not subscribed: commits may go unheard)."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        channel: str,
        on_commit: Callable[[Commit], None],
        on_subscribed: Callable[[], None],
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._on_commit = on_commit
        self._on_subscribed = on_subscribed
        self.trusted_since: float | None = None

    async def run(self) -> None:
        """Until cancelled, resubscribing with backoff while Redis is down."""
        await follow_channel(self._redis, self._channel, self._on_message, on_lost=self._lost)

    def _lost(self, exc: BaseException) -> None:
        level = logging.WARNING if self.trusted_since is not None else logging.DEBUG
        _log.log(level, "commit channel lost: %r", exc, extra={"channel": self._channel})
        self.trusted_since = None

    async def _on_message(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            # Also after redis-py reconnected on its own: commits of the gap are unknown.
            self.trusted_since = time.time()
            _log.info("commit channel subscribed", extra={"channel": self._channel})
            self._on_subscribed()
        elif kind == "message":
            commit = _parse_commit(message.get("data"))
            if commit is None:
                _log.warning("malformed commit ignored: %.200r", message.get("data"))
            else:
                self._on_commit(commit)


class L2Store:
    """Answers in Redis, each with the wall time its computation started, expiring
    ``ttl`` after it; every call goes through the Redis breaker when there is one."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        breaker: CircuitBreaker | None,
        key_prefix: str,
        ttl: float,
    ) -> None:
        self._redis = redis
        self._breaker = breaker
        self._key_prefix = key_prefix
        self._ttl = ttl

    def key(self, key: CacheKey) -> str:
        cameras = None if key.cameras is None else sorted(key.cameras)
        body = json.dumps([key.request_fingerprint, cameras, key.from_ns, key.to_ns])
        digest = hashlib.blake2b(body.encode(), digest_size=16).hexdigest()
        return f"{self._key_prefix}:{_L2_FORMAT}:{key.kind}:{digest}"

    async def get(self, redis_key: str) -> tuple[float, bytes] | None:
        """The stored (stamp, answer), None when absent; raises ``REDIS_DOWN`` errors."""
        raw = await self._call(lambda: self._redis.get(redis_key))
        if not isinstance(raw, bytes) or len(raw) < _STAMP.size:
            return None
        (stamp,) = _STAMP.unpack_from(raw)
        return stamp, raw[_STAMP.size :]

    async def set(self, redis_key: str, stamp: float, value: bytes) -> None:
        """Stores the answer for what is left of its TTL; a Redis failure is only logged."""
        ttl_ms = int((stamp + self._ttl - time.time()) * 1000)
        if ttl_ms <= 0:
            return
        payload = _STAMP.pack(stamp) + value
        try:
            await self._call(lambda: self._redis.set(redis_key, payload, px=ttl_ms))
        except REDIS_DOWN as exc:
            # Not a lookup, so not in query_cache_requests: the breaker's metrics show outages.
            _log.debug("answer cache: Redis SET failed: %r", exc)

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        if self._breaker is None:
            return await operation()
        return await self._breaker.call(operation)


@dataclass(slots=True)
class CacheStats:
    """The cache's counters (see ``_cache`` for what each counts)."""

    invalidations: int = 0
    l1_hit: int = 0
    l1_miss: int = 0
    l2_error: int = 0
    l2_hit: int = 0
    l2_miss: int = 0
    stale_hits: int = 0
    refresh_computed: int = 0
    refresh_failed: int = 0
    refresh_l2: int = 0


class CacheCollector:
    """Exports plain counters at scrape time: the hit path adds to an int, takes no lock."""

    def __init__(
        self, stats: CacheStats, entries: Callable[[], int], subscribed: Callable[[], bool]
    ) -> None:
        self._stats = stats
        self._entries = entries
        self._subscribed = subscribed

    def collect(self) -> Iterable[Metric]:
        s = self._stats
        requests = CounterMetricFamily(
            "query_cache_requests",
            "Answer cache requests per level and result (hit: served without waiting for the "
            "database; L2 errors: Redis down or breaker open).",
            labels=["level", "result"],
        )
        for labels, value in (
            (("l1", "hit"), s.l1_hit),
            (("l1", "miss"), s.l1_miss),
            (("l2", "hit"), s.l2_hit),
            (("l2", "miss"), s.l2_miss),
            (("l2", "error"), s.l2_error),
        ):
            requests.add_metric(labels, value)
        yield requests
        yield CounterMetricFamily(
            "query_cache_stale_hits",
            "L1 hits served an answer a commit has changed since (its refresh under way).",
            value=s.stale_hits,
        )
        refreshes = CounterMetricFamily(
            "query_cache_refreshes",
            "Background refreshes of stale answers by outcome (l2: taken from Redis).",
            labels=["result"],
        )
        for result, value in (
            ("l2", s.refresh_l2),
            ("computed", s.refresh_computed),
            ("failed", s.refresh_failed),
        ):
            refreshes.add_metric((result,), value)
        yield refreshes
        yield GaugeMetricFamily(
            "query_cache_entries", "Answers held in this process (L1).", value=self._entries()
        )
        yield CounterMetricFamily(
            "query_cache_invalidations",
            "Commit announcements applied to the answer cache.",
            value=s.invalidations,
        )
        yield GaugeMetricFamily(
            "query_cache_subscribed",
            "1 while the commit channel is subscribed (else answers live at most l1_ttl).",
            value=float(self._subscribed()),
        )
