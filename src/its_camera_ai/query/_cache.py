"""The query service's answer cache: L1 in this process, L2 in Redis shared by every query
process, kept fresh by the commits analytics announces (stale-while-revalidate).

Answers are serialised protobuf bytes keyed by ``CacheKey``: the request's fingerprint plus
what the answer covers (kind, cameras, capture-time span), which is what invalidation needs.
A caller may also name an answer by an *alias* (its raw request and scope, opaque here), so
that ``lookup`` answers a repeated request without parsing it.

Freshness. An answer's age runs from the start of its computation and is never renewed: it
is served at most ``l1_ttl`` old from L1 and ``l2_ttl`` from L2 (an L2 value moved into L1
keeps that bound), and at most ``l1_ttl`` where no commit could have reached this process
(channel not subscribed, or value computed before the subscription began, when
announcements may have been lost). A commit announcement covering an L1 entry (its camera,
or all cameras, and an overlapping span; any events commit for events) marks it stale, not
dropped: dashboards ask for spans that include the bin being filled, which analytics
commits every ~100 ms, so dropping would leave nothing to serve. A stale entry is served and
starts one background refresh of it: one per key at a time, none sooner than
``refresh_interval`` after the previous one started (one wanted sooner is scheduled for that
moment), which bounds the database work per distinct answer. A refresh takes the L2 value
when no commit heard since that value's computation began changes it, else computes and
writes both levels; a commit heard while it computes leaves the stored answer stale, so the
next request refreshes it again. A stale L2 value newer than the entry also does for a
refresh (stored stale, its next refresh timed from that value's start): under a commit every
~100 ms no value is ever clean, and this way N processes share the work instead of each
computing every hot answer once per interval. Callers wait only when L1 holds nothing
servable: they join the key's computation (or running refresh), which tries L2 first and
there also takes a value a commit covers while within its bound (served stale and
refreshed, as from L1).

Accounting (``query_cache_requests_total``), so that a hit means "served without waiting for
the database": a request served from L1, stale or not, is an L1 hit; one that waits is an
L1 miss, also when it joins a running computation; each waiting computation asks L2 once,
one hit or miss however many callers wait for it; a ``lookup`` that finds nothing counts
nothing (its caller goes on to ``get_or_compute``, which counts). Background refreshes are
no requests: ``query_cache_refreshes_total{result}`` counts them (l2, computed, failed).

Without Redis, while it is down or while the breaker is open, the cache is L1 plus
computation; Redis errors are counted, never raised. A failed refresh is logged and its
stale entry served until its bound; a waiting computation's error reaches its callers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal, TypeVar

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from its_camera_ai.common import REDIS_DOWN, CircuitBreaker, QueryCacheSettings
from its_camera_ai.query._cache_l2 import (
    CLOCK_MARGIN_SECONDS,
    CacheCollector,
    CacheStats,
    Commit,
    CommitChannel,
    CommitLog,
    L2Store,
    changes,
)

__all__ = ["END_OF_TIME_NS", "AnswerCache", "CacheKey", "HitRatios", "Kind"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

Kind = Literal["counts", "summary", "events"]

Compute = Callable[[], Awaitable[bytes]]

# The span of an answer that covers the whole time line (unfiltered event lists).
END_OF_TIME_NS = 2**63 - 1

# Aliases kept per entry, the oldest dropped first: requests that differ in bytes may share
# an answer (ranges inside the same bins), and the alias table must stay bounded with L1.
_MAX_ALIASES = 8
# Longer raw requests are not kept as aliases: parsing them costs little next to the memory.
_MAX_ALIAS_BYTES = 4096


@dataclass(frozen=True, slots=True)
class CacheKey:
    """What identifies an answer (``kind`` and ``request_fingerprint``: a stable hash of the
    request and the caller's scope) and what it covers, for invalidation: ``cameras`` (None:
    all) and the capture-time span [from_ns, to_ns)."""

    kind: Kind
    request_fingerprint: str
    cameras: frozenset[str] | None
    from_ns: int
    to_ns: int


@dataclass(frozen=True, slots=True)
class HitRatios:
    """Hits per request at each level since start (0.0 before the first): L1 over every
    request answered, L2 over the computations requests waited for (see the module)."""

    l1: float
    l2: float


@dataclass(slots=True, eq=False)
class _Entry:
    key: CacheKey
    value: bytes
    stamp: float  # time.time() its computation started: L2 writes, commit comparisons
    expires: float  # time.monotonic() until which it may be served
    refresh_after: float  # time.monotonic() before which no refresh of it starts
    compute: Compute  # what a refresh runs
    stale: bool  # a commit changed it since its computation started
    aliases: dict[bytes, None] = field(default_factory=dict)  # oldest first
    timer: asyncio.TimerHandle | None = None  # a refresh waiting for refresh_after
    failures: int = 0  # refreshes failed in a row: the first one only is a warning


class _Flight:
    """One computation of a key, joined by the callers that wait for it."""

    __slots__ = ("overtaken", "refresh", "task")

    task: asyncio.Task[bytes]

    def __init__(self, refresh: bool) -> None:
        self.refresh = refresh  # started by a stale hit, not by a waiting caller
        self.overtaken = False  # a commit changing its key was heard while it computed


class AnswerCache:
    def __init__(
        self,
        settings: QueryCacheSettings,
        redis: Redis | RedisCluster | None,
        breaker: CircuitBreaker | None,
        registry: CollectorRegistry,
        *,
        key_prefix: str,
        channel: str,
        on_events: Callable[[], None] | None = None,
    ) -> None:
        """``on_events`` is called when a commit that changed events is heard, and on each
        (re)subscription, since announcements may have been lost before it."""
        self._enabled = settings.enabled
        self._l1_ttl = settings.l1_ttl_seconds
        self._l2_ttl = settings.l2_ttl_seconds
        self._refresh_interval = settings.refresh_interval_seconds
        self._max_entries = settings.l1_max_entries
        self._max_bytes = settings.max_entry_bytes
        self._on_events = on_events
        self._l2: L2Store | None = None
        self._channel: CommitChannel | None = None
        if redis is not None:
            self._l2 = L2Store(redis, breaker, key_prefix, self._l2_ttl)
            self._channel = CommitChannel(redis, channel, self._on_commit, self._on_subscribed)
        self._l1: OrderedDict[CacheKey, _Entry] = OrderedDict()  # least recently used first
        self._aliases: dict[bytes, _Entry] = {}  # each entry's aliases: dropped with it
        self._by_camera: dict[str, set[CacheKey]] = {}
        self._all_cameras: set[CacheKey] = set()
        self._flights: dict[CacheKey, _Flight] = {}  # at most one computation per key
        self._log = CommitLog(self._l2_ttl + CLOCK_MARGIN_SECONDS)
        self._stats = CacheStats()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        registry.register(CacheCollector(self._stats, self.__len__, lambda: self.subscribed))

    def __len__(self) -> int:
        return len(self._l1)

    @property
    def subscribed(self) -> bool:
        """Whether commit announcements reach this cache now."""
        return self._channel is not None and self._channel.trusted_since is not None

    def hit_ratios(self) -> HitRatios:
        s = self._stats
        l1 = s.l1_hit + s.l1_miss
        l2 = s.l2_hit + s.l2_miss + s.l2_error
        return HitRatios(s.l1_hit / l1 if l1 else 0.0, s.l2_hit / l2 if l2 else 0.0)

    def start(self) -> None:
        """Follow the commit channel (with Redis; enabled, or someone waits for events)."""
        listens = self._enabled or self._on_events is not None
        if listens and self._channel is not None and self._listener is None:
            self._listener = asyncio.create_task(
                self.run_invalidations(), name="query-cache-invalidations"
            )

    async def close(self) -> None:
        """Stop listening and cancel computations and refreshes (the caller owns the
        client); no refresh starts afterwards."""
        self._closed = True
        for entry in self._l1.values():
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
        tasks = [*self._tasks, *([self._listener] if self._listener is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._listener = None

    def lookup(self, alias: bytes) -> bytes | None:
        """The answer ``get_or_compute`` recorded ``alias`` for, if L1 may serve it (an L1
        hit; a stale one is refreshed as there); else None, counting nothing. Cheap: a dict
        lookup and a few comparisons. Called from the event loop (a refresh may be due)."""
        entry = self._aliases.get(alias)
        if entry is None or entry.expires <= time.monotonic():
            return None
        self._l1.move_to_end(entry.key)
        self._stats.l1_hit += 1
        if entry.stale:
            self._stats.stale_hits += 1
            self._want_refresh(entry)
        return entry.value

    async def get_or_compute(
        self, key: CacheKey, compute: Compute, *, alias: bytes | None = None
    ) -> bytes:
        """The cached answer for ``key`` (a stale one too, refreshed in the background), else
        ``compute()``'s, computed once for concurrent callers: its exception reaches every
        one of them and nothing is cached. ``alias`` is recorded for ``lookup``."""
        if not self._enabled:
            return await compute()
        entry = self._l1.get(key)
        if entry is not None:
            if entry.expires > time.monotonic():
                self._l1.move_to_end(key)
                self._stats.l1_hit += 1
                if alias is not None and self._aliases.get(alias) is not entry:
                    self._add_alias(entry, alias)
                if entry.stale:
                    self._stats.stale_hits += 1
                    self._want_refresh(entry)
                return entry.value
            self._drop(key)
        self._stats.l1_miss += 1
        flight = self._flights.get(key) or self._launch(key, compute, refresh=False)
        # A caller that gives up (deadline, cancellation) leaves the computation to the others.
        value = await asyncio.shield(flight.task)
        entry = self._l1.get(key)
        if entry is not None and entry.value is value:
            if alias is not None and self._aliases.get(alias) is not entry:
                self._add_alias(entry, alias)
            if entry.stale:  # overtaken by a commit, or a stale L2 value
                self._want_refresh(entry)
        return value

    async def run_invalidations(self) -> None:
        """Apply commit announcements until cancelled, resubscribing with backoff while Redis
        is down (the TTLs bound staleness meanwhile)."""
        if self._channel is not None:
            await self._channel.run()

    def _on_subscribed(self) -> None:
        if self._on_events is not None:
            self._on_events()

    def _on_commit(self, commit: Commit) -> None:
        self._invalidate(commit)
        if commit.events and self._on_events is not None:
            self._on_events()

    def _invalidate(self, commit: Commit) -> None:
        self._stats.invalidations += 1
        self._log.record(commit, time.time())
        span = (commit.from_ns, commit.to_ns, commit.events)
        for key in chain(self._by_camera.get(commit.camera, ()), self._all_cameras):
            if changes(key, *span):
                self._l1[key].stale = True
        for key, flight in self._flights.items():
            if (key.cameras is None or commit.camera in key.cameras) and changes(key, *span):
                flight.overtaken = True

    # -- computations and refreshes ------------------------------------------------------------

    def _want_refresh(self, entry: _Entry) -> None:
        """One refresh of a stale entry: now, or when its ``refresh_after`` comes."""
        if entry.timer is not None or self._closed or entry.key in self._flights:
            return
        delay = entry.refresh_after - time.monotonic()
        if delay > 0:
            entry.timer = asyncio.get_running_loop().call_later(delay, self._deferred, entry)
        else:
            self._launch(entry.key, entry.compute, refresh=True)

    def _deferred(self, entry: _Entry) -> None:
        entry.timer = None
        # Not for an entry gone, refreshed meanwhile, or too old to serve: nobody would get it.
        if self._l1.get(entry.key) is entry and entry.stale and entry.expires > time.monotonic():
            self._want_refresh(entry)

    def _launch(self, key: CacheKey, compute: Compute, *, refresh: bool) -> _Flight:
        flight = _Flight(refresh)
        flight.task = self._spawn(self._fly(key, compute, flight))
        flight.task.add_done_callback(functools.partial(self._landed, key, flight))
        self._flights[key] = flight
        entry = self._l1.get(key)
        if entry is not None:
            entry.refresh_after = max(
                entry.refresh_after, time.monotonic() + self._refresh_interval
            )
        return flight

    async def _fly(self, key: CacheKey, compute: Compute, flight: _Flight) -> bytes:
        """One computation of ``key``: L2 first, else ``compute``; stores the answer."""
        try:
            redis_key, reachable = "", False
            if self._l2 is not None:
                redis_key = self._l2.key(key)
                found, reachable = await self._from_l2(key, redis_key, compute, flight.refresh)
                if found is not None:
                    return found
            # A commit heard before the computation starts is in what it reads.
            flight.overtaken = False
            started_wall, started = time.time(), time.monotonic()
            value = await compute()
            if flight.refresh:
                self._stats.refresh_computed += 1
            if len(value) > self._max_bytes:
                self._drop(key)  # what L1 holds is older than this answer
                return value
            expires, refresh_after = started + self._l1_ttl, started + self._refresh_interval
            self._store(_Entry(key, value, started_wall, expires, refresh_after, compute,
                               flight.overtaken))  # fmt: skip
            # Not after a failed GET: Redis is down, a second timeout would change nothing.
            if self._l2 is not None and reachable:
                self._spawn(self._l2.set(redis_key, started_wall, value))
            return value
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]

    def _landed(self, key: CacheKey, flight: _Flight, task: asyncio.Task[bytes]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]  # cancelled before it ran
        if task.cancelled():
            return
        exc = task.exception()  # retrieved: its callers got it, asyncio need not log it
        if exc is None or not flight.refresh:
            return
        self._stats.refresh_failed += 1
        entry = self._l1.get(key)
        failures = 1
        if entry is not None:
            entry.failures += 1
            failures = entry.failures
        # A warning per key and outage, not per refresh interval while the database is down.
        _log.log(
            logging.WARNING if failures == 1 else logging.DEBUG,
            "answer cache: refresh failed (%d in a row); the stale answer is served until its TTL",
            failures,
            exc_info=exc,
            extra={"kind": key.kind},
        )

    async def _from_l2(
        self, key: CacheKey, redis_key: str, compute: Compute, refresh: bool
    ) -> tuple[bytes | None, bool]:
        """The L2 answer when it may be served (kept in L1 too), and whether Redis answered."""
        assert self._l2 is not None
        try:
            found = await self._l2.get(redis_key)
        except REDIS_DOWN as exc:
            self._stats.l2_error += not refresh
            _log.debug("answer cache: Redis GET failed: %r", exc)
            return None, False
        value = None if found is None else self._accept(key, *found, compute, refresh)
        if refresh:
            self._stats.refresh_l2 += value is not None
        elif value is None:
            self._stats.l2_miss += 1
        else:
            self._stats.l2_hit += 1
        return value, True

    def _accept(
        self, key: CacheKey, stamp: float, value: bytes, compute: Compute, refresh: bool
    ) -> bytes | None:
        """An L2 value within its age bound, stored in L1 (stale when a commit heard since
        covers it); for a refresh only one newer than the entry it would replace: another
        process's refresh then stands for ours, so a fleet computes each hot answer about
        once per refresh interval, not once per process."""
        trusted_since = None if self._channel is None else self._channel.trusted_since
        trusted = trusted_since is not None and stamp >= trusted_since + CLOCK_MARGIN_SECONDS
        wall, now = time.time(), time.monotonic()
        left = stamp + (self._l2_ttl if trusted else self._l1_ttl) - wall
        if left <= 0 or len(value) > self._max_bytes:
            return None
        stale = self._log.covers(key, stamp)
        current = self._l1.get(key)
        if refresh and stale and (current is None or stamp <= current.stamp):
            return None
        # Its computation started at stamp, somewhere: the next refresh waits as after ours.
        started = now - (wall - stamp)
        self._store(_Entry(key, value, stamp, now + min(left, self._l1_ttl),
                           started + self._refresh_interval, compute, stale))  # fmt: skip
        return value

    # -- L1 --------------------------------------------------------------------------------------

    def _store(self, new: _Entry) -> None:
        """Keeps ``new``, or updates the key's entry in place (its aliases point to it)."""
        old = self._l1.get(new.key)
        if old is not None:
            self._l1.move_to_end(new.key)
            old.value, old.stamp, old.expires = new.value, new.stamp, new.expires
            old.refresh_after = max(old.refresh_after, new.refresh_after)
            old.compute, old.stale, old.failures = new.compute, new.stale, 0
            return
        key = new.key
        self._l1[key] = new
        if key.cameras is None:
            self._all_cameras.add(key)
        else:
            for camera in key.cameras:
                self._by_camera.setdefault(camera, set()).add(key)
        while len(self._l1) > self._max_entries:
            self._drop(next(iter(self._l1)))

    def _add_alias(self, entry: _Entry, alias: bytes) -> None:
        if len(alias) > _MAX_ALIAS_BYTES:
            return
        previous = self._aliases.get(alias)
        if previous is not None:
            del previous.aliases[alias]
        self._aliases[alias] = entry
        entry.aliases[alias] = None
        if len(entry.aliases) > _MAX_ALIASES:
            oldest = next(iter(entry.aliases))
            del entry.aliases[oldest], self._aliases[oldest]

    def _drop(self, key: CacheKey) -> None:
        entry = self._l1.pop(key, None)
        if entry is None:
            return
        for alias in entry.aliases:
            del self._aliases[alias]
        if entry.timer is not None:
            entry.timer.cancel()
        if key.cameras is None:
            self._all_cameras.discard(key)
        for camera in key.cameras or ():
            keys = self._by_camera.get(camera)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_camera[camera]

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
