"""Following a Redis pub/sub channel for as long as a service runs.

Subscriptions die quietly: a restarted Redis, a proxy that drops idle connections. So the
follower PINGs a subscription silent for ``PING_AFTER_SECONDS`` and gives it up when the
PING is not answered either, then subscribes again with capped backoff for as long as
Redis is down. Each (re)subscription reaches the handler as a ``subscribe`` message: what
was published meanwhile was not heard, and the handler decides how to catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from its_camera_ai.common._backoff import Backoff
from its_camera_ai.common._storage import REDIS_FAILURES

__all__ = ["PING_AFTER_SECONDS", "follow_channel"]

_log = logging.getLogger(__name__)

PING_AFTER_SECONDS = 5.0
_BACKOFF_INITIAL_SECONDS = 0.1
_BACKOFF_MAX_SECONDS = 5.0

MessageHandler = Callable[[Mapping[str, Any]], Awaitable[None]]


async def follow_channel(
    redis: Redis | RedisCluster,
    channel: str,
    on_message: MessageHandler,
    *,
    on_lost: Callable[[BaseException], None] = lambda _exc: None,
    closing: Callable[[], bool] = lambda: False,
) -> None:
    """Hand every message of ``channel`` (subscription confirmations included) to
    ``on_message`` until cancelled or ``closing()``; ``on_lost`` hears each lost
    subscription before the next attempt."""
    backoff = Backoff(_BACKOFF_INITIAL_SECONDS, _BACKOFF_MAX_SECONDS)
    while not closing():
        try:
            await _listen(redis, channel, on_message, backoff, closing)
        except REDIS_FAILURES as exc:
            on_lost(exc)
        except Exception as exc:
            # A cluster client's own errors are no RedisError; letting one end the follower
            # would stop it for good, where retrying only costs a log line.
            _log.exception("channel %s failed", channel)
            on_lost(exc)
        await asyncio.sleep(backoff.next_delay())


async def _listen(
    redis: Redis | RedisCluster,
    channel: str,
    on_message: MessageHandler,
    backoff: Backoff,
    closing: Callable[[], bool],
) -> None:
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(channel)
        silent_since, pinged = time.monotonic(), False
        while not closing():
            message = await pubsub.get_message(timeout=PING_AFTER_SECONDS)
            now = time.monotonic()
            if message is not None:
                silent_since, pinged = now, False
                if message.get("type") == "subscribe":
                    backoff.reset()  # Redis answers: the next loss starts afresh
                await on_message(message)
            elif now - silent_since >= 2 * PING_AFTER_SECONDS:
                raise TimeoutError(f"channel {channel}: no answer to PING")
            elif now - silent_since >= PING_AFTER_SECONDS and not pinged:
                await pubsub.ping()
                pinged = True
    finally:
        with contextlib.suppress(*REDIS_FAILURES):
            await pubsub.aclose()
