"""Feature flags: the release's switches (``FEATURE_FLAGS``) and how every service follows
their current values without a restart.

A flag has its release default until an administrator sets it
(``AdminService.UpdateFeatureFlag``); then the ``feature_flags`` row holds the value and a
revision counting the updates, which is also the etag. Each ``FeatureFlags`` keeps the
values in memory (``enabled`` is a dictionary read) and learns of a change two ways:

* Redis: the updating service writes the new value to the hash ``<channel>:state`` and
  publishes it on ``<channel>``; subscribed services apply it at once. Whenever they
  (re)subscribe they catch up on what they missed: from the table if they have a database,
  else from the hash (so a restarted service without a database is not back on defaults).
* PostgreSQL: services with a database read the table every ``poll_seconds``, so changes
  arrive without Redis too (and when a publication was lost).

A value is applied only if its revision is newer than the one held, so the two ways can
deliver in any order. Services without a database learn only through Redis: with Redis
absent, or before anybody set a flag, they run with the release defaults. Redis being
down is never an error here: it is logged, and the poll (where there is one) carries on.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from its.admin.v1 import feature_flag_pb2
from its_camera_ai.common import (
    POSTGRES_DOWN,
    REDIS_FAILURES,
    AbortedError,
    Database,
    FailedPreconditionError,
    FieldKind,
    ListField,
    ListingSpec,
    NotFoundError,
    follow_channel,
    page_token_after,
)

__all__ = ["FEATURE_FLAGS", "FeatureFlags", "FlagDefinition", "feature_flag_name"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FlagDefinition:
    """What a flag controls, and its value in this release when nobody has set it."""

    description: str
    default: bool


# Every flag of this release, by {feature_flag} id (lower-case letters, digits, hyphens).
FEATURE_FLAGS: Mapping[str, FlagDefinition] = MappingProxyType(
    {
        "on-demand-detect": FlagDefinition(
            "InferenceService.Detect accepts frames on demand; off: FAILED_PRECONDITION",
            default=True,
        ),
        "query-cache": FlagDefinition(
            "QueryService answers repeated reads from its two-level cache; off: every read"
            " goes to PostgreSQL",
            default=True,
        ),
    }
)

_NAMES = "featureFlags/"
_PUBLISH_TIMEOUT_SECONDS = 2.0
_CLOSE_RETRY_SECONDS = 0.1
_DATABASE_FAILURES: tuple[type[BaseException], ...] = (*POSTGRES_DOWN, asyncpg.PostgresError)

_FLAG_COLUMNS = "name, enabled, update_time, updater, revision"
_NAME = ListField("name", FieldKind.TEXT)
# ListFeatureFlags: no filter, ordered by name.
_FLAGS = ListingSpec(filters={}, orders={"name": _NAME}, default_order="name", tie_breakers=())
# Every flag of the release with its row, if it has one (revision 0: never set).
_WITH_ROWS = (
    "SELECT d.name, f.enabled, f.update_time, f.updater, coalesce(f.revision, 0) AS revision"
    " FROM unnest({}::text[]) AS d(name) LEFT JOIN feature_flags AS f ON f.name = d.name"
)
# Statements built from the constants above only (hence the noqa: S608).
_UPSERT = (
    "INSERT INTO feature_flags AS f (name, enabled, updater, revision) VALUES ($1, $2, $3, 1)"  # noqa: S608
    " ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled, updater = excluded.updater,"
    " update_time = greatest(now(), f.update_time + interval '1 microsecond'),"
    f" revision = f.revision + 1 RETURNING {_FLAG_COLUMNS}"
)
_INSERT_FIRST = (
    "INSERT INTO feature_flags (name, enabled, updater, revision) VALUES ($1, $2, $3, 1)"  # noqa: S608
    f" ON CONFLICT (name) DO NOTHING RETURNING {_FLAG_COLUMNS}"
)
_UPDATE_IF = (
    "UPDATE feature_flags AS f SET enabled = $2, updater = $3,"  # noqa: S608
    " update_time = greatest(now(), f.update_time + interval '1 microsecond'),"
    f" revision = f.revision + 1 WHERE name = $1 AND revision = $4 RETURNING {_FLAG_COLUMNS}"
)


def feature_flag_name(flag: str) -> str:
    return f"{_NAMES}{flag}"


def _not_found(flag: str) -> NotFoundError:
    name = feature_flag_name(flag)
    return NotFoundError(
        f"{name} not found (this release's flags: {', '.join(sorted(FEATURE_FLAGS))})",
        metadata={"resource": name},
    )


def _revision_of(etag: str) -> int | None:
    return int(etag) if etag.isascii() and etag.isdigit() and len(etag) <= 18 else None


def _message(row: asyncpg.Record) -> feature_flag_pb2.FeatureFlag:
    definition = FEATURE_FLAGS[row["name"]]
    flag = feature_flag_pb2.FeatureFlag(
        name=feature_flag_name(row["name"]),
        description=definition.description,
        enabled=definition.default if row["enabled"] is None else row["enabled"],
        default_enabled=definition.default,
        updater=row["updater"] or "",
        etag=str(row["revision"]),
    )
    if row["update_time"] is not None:
        flag.update_time.FromDatetime(row["update_time"])
    return flag


def _parse_change(data: Any) -> tuple[str, bool, int] | None:
    try:
        body = json.loads(data)
    except (TypeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    name, enabled, revision = body.get("name"), body.get("enabled"), body.get("revision")
    if isinstance(name, str) and isinstance(enabled, bool) and type(revision) is int:
        return name, enabled, revision
    return None


class FeatureFlags:
    """The current values of ``FEATURE_FLAGS`` in this service (see the module docstring).

    ``database``: where values are stored and polled from (None: Redis only; ``get``,
    ``list`` and ``update`` then answer FAILED_PRECONDITION, they are AdminService's).
    ``redis``: where changes are published and heard (None: the poll only). ``start()``
    begins following changes; until then, and without either, the values are the defaults.
    """

    def __init__(
        self,
        database: Database | None,
        redis: Redis | RedisCluster | None,
        *,
        channel: str = "its:feature-flags",
        poll_seconds: float = 5.0,
    ) -> None:
        if poll_seconds <= 0:
            raise ValueError("poll_seconds must be positive")
        self._pool = None if database is None else database.pool
        self._redis = redis
        self._channel = channel
        self._state_key = f"{channel}:state"
        self._poll_seconds = poll_seconds
        self._values = {name: flag.default for name, flag in FEATURE_FLAGS.items()}
        self._revisions = dict.fromkeys(FEATURE_FLAGS, 0)
        self._tasks: builtins.list[asyncio.Task[None]] = []
        self._database_failing = False
        self._closing = False
        self._subscribed_before = False

    def enabled(self, name: str) -> bool:
        """The flag's current value; a name not in ``FEATURE_FLAGS`` is a bug: KeyError."""
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"unknown feature flag {name!r}") from None

    async def start(self) -> None:
        """Load the stored values (a database failure leaves the defaults, logged) and
        start following changes."""
        if self._pool is not None:
            await self._load()
            self._tasks.append(asyncio.create_task(self._poll(), name="feature-flags-poll"))
        if self._redis is not None:
            self._tasks.append(asyncio.create_task(self._follow(), name="feature-flags-redis"))

    async def close(self) -> None:
        self._closing = True
        tasks, self._tasks = self._tasks, []
        # Cancelled again until they end: redis-py's read timeout can turn a cancellation
        # arriving with it into a TimeoutError, which the follower takes for a lost link.
        while tasks:
            for task in tasks:
                task.cancel()
            done, pending = await asyncio.wait(tasks, timeout=_CLOSE_RETRY_SECONDS)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    _log.error("feature flag task failed", exc_info=task.exception())
            tasks = builtins.list(pending)

    # --- administration (AdminService) ----------------------------------------------------

    async def get(self, name: str) -> feature_flag_pb2.FeatureFlag:
        """The flag ``name`` (its {feature_flag} id) as stored; NOT_FOUND if no such flag."""
        if name not in FEATURE_FLAGS:
            raise _not_found(name)
        pool = self._database()
        row = await pool.fetchrow(f"{_WITH_ROWS.format('$1')} WHERE d.name = $2", [name], name)
        assert row is not None
        self._apply_row(row, "database")
        return _message(row)

    async def list(
        self, page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[feature_flag_pb2.FeatureFlag], str]:
        """One page of the release's flags ordered by name, and the next page's token ('' on
        the last). INVALID_ARGUMENT names ``page_size`` or ``page_token``."""
        query = _FLAGS.compile("", "", page_size, page_token)
        pool = self._database()
        names_param = f"${len(query.params) + 1}"
        # The clauses are compiled by ListingSpec from a fixed vocabulary; every value the
        # client sent travels as a parameter.
        rows = await pool.fetch(
            f"SELECT * FROM ({_WITH_ROWS.format(names_param)}) AS flags"  # noqa: S608
            f" WHERE {query.where} ORDER BY {query.order_by} LIMIT {query.limit + 1}",
            *query.params,
            builtins.list(FEATURE_FLAGS),
        )
        page = rows[: query.limit]
        for row in page:
            self._apply_row(row, "database")
        token = page_token_after(query, dict(page[-1])) if len(rows) > query.limit else ""
        return [_message(row) for row in page], token

    async def update(
        self, name: str, enabled: bool, etag: str, updater: str
    ) -> feature_flag_pb2.FeatureFlag:
        """Set the flag (``etag`` non-empty: only if it is still current, else ABORTED) and
        tell every service. NOT_FOUND if no such flag."""
        if name not in FEATURE_FLAGS:
            raise _not_found(name)
        pool = self._database()
        if not etag:
            row = await pool.fetchrow(_UPSERT, name, enabled, updater)
        elif (expected := _revision_of(etag)) is None:
            row = None
        elif expected == 0:
            row = await pool.fetchrow(_INSERT_FIRST, name, enabled, updater)
        else:
            row = await pool.fetchrow(_UPDATE_IF, name, enabled, updater, expected)
        if row is None:
            resource = feature_flag_name(name)
            raise AbortedError(
                f"{resource} changed since it was read (etag mismatch): read it again",
                metadata={"resource": resource},
            )
        self._apply_row(row, "update")
        await self._publish(name, row["enabled"], row["revision"])
        return _message(row)

    def _database(self) -> asyncpg.Pool[Any]:
        if self._pool is None:
            raise FailedPreconditionError(
                "feature flags are administered by a service with a database; this one has none"
            )
        return self._pool

    # --- following changes ----------------------------------------------------------------

    def _apply(self, name: str, enabled: bool, revision: int, source: str) -> None:
        if name not in self._values or revision <= self._revisions[name]:
            return  # another release's flag, or news older than what is held
        self._revisions[name] = revision
        if self._values[name] != enabled:
            self._values[name] = enabled
            _log.info(
                "feature flag switched",
                extra={"flag": name, "enabled": enabled, "revision": revision, "via": source},
            )

    def _apply_row(self, row: asyncpg.Record, source: str) -> None:
        if row["enabled"] is not None:
            self._apply(row["name"], row["enabled"], row["revision"], source)

    async def _load(self) -> None:
        assert self._pool is not None
        try:
            rows = await self._pool.fetch("SELECT name, enabled, revision FROM feature_flags")
        except _DATABASE_FAILURES as exc:
            if not self._database_failing:
                _log.warning(
                    "cannot read feature flags; keeping the values held",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )
            self._database_failing = True
            return
        self._database_failing = False
        for row in rows:
            self._apply_row(row, "database")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            await self._load()

    async def _publish(self, name: str, enabled: bool, revision: int) -> None:
        if self._redis is None:
            return
        change = json.dumps({"name": name, "enabled": enabled, "revision": revision})
        state = json.dumps({"enabled": enabled, "revision": revision})
        try:
            async with asyncio.timeout(_PUBLISH_TIMEOUT_SECONDS):
                # The hash first: a service subscribing meanwhile reads it, then hears the rest.
                await self._redis.hset(self._state_key, name, state)
                await self._redis.publish(self._channel, change)
        except REDIS_FAILURES as exc:
            _log.warning(
                "cannot publish a feature flag change; services poll it from the database",
                extra={"flag": name, "error": f"{type(exc).__name__}: {exc}"},
            )

    async def _follow(self) -> None:
        """Until closed, resubscribing with backoff while Redis is down."""
        assert self._redis is not None
        await follow_channel(
            self._redis,
            self._channel,
            self._on_message,
            on_lost=self._lost,
            closing=lambda: self._closing,
        )

    def _lost(self, exc: BaseException) -> None:
        _log.debug("feature flag channel lost: %r", exc, extra={"channel": self._channel})

    async def _on_message(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            # Also after redis-py reconnected on its own: catch up on what changed meanwhile,
            # from the database where there is one (the record; start() has just read it
            # before the first subscription, whose gap the poll covers), else from the hash.
            if self._pool is None:
                await self._read_state()
            elif self._subscribed_before:
                await self._load()
            self._subscribed_before = True
        elif kind == "message":
            change = _parse_change(message.get("data"))
            if change is None:
                _log.warning("malformed feature flag change ignored: %.200r", message.get("data"))
            else:
                self._apply(*change, "redis")

    async def _read_state(self) -> None:
        assert self._redis is not None
        state = await self._redis.hgetall(self._state_key)
        for raw_name, data in state.items():
            name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            try:
                body = json.loads(data)
                change = _parse_change(json.dumps({"name": name, **body}))
            except (TypeError, ValueError):
                change = None
            if change is not None:
                self._apply(*change, "redis")
