"""Rate limits per principal: a token bucket for each actor, sized by its role."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from its_camera_ai.common._security_settings import RateLimitSettings, RoleName
from its_camera_ai.security._principal import Principal, Role

__all__ = ["RateLimiter"]

# Buckets of actors not seen for a while are forgotten beyond this many (a full bucket is
# what a new actor gets anyway, so forgetting an idle one changes nothing).
_MAX_ACTORS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``acquire`` takes one token from the principal's bucket; a role without a limit is
    never refused. One limiter per process: a principal calling several instances of a
    service gets each instance's budget."""

    def __init__(
        self,
        limits: Mapping[RoleName, RateLimitSettings],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = {Role.parse(name): limit for name, limit in limits.items()}
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def acquire(self, principal: Principal) -> float | None:
        """None if the call may go ahead, else the seconds until a token is available."""
        limit = self._limits.get(principal.role)
        if limit is None:
            return None
        now = self._clock()
        bucket = self._buckets.get(principal.actor)
        if bucket is None:
            bucket = self._buckets[principal.actor] = _Bucket(float(limit.burst), now)
            if len(self._buckets) > _MAX_ACTORS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(principal.actor)
            refill = (now - bucket.updated) * limit.requests_per_second
            bucket.tokens = min(float(limit.burst), bucket.tokens + refill)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / limit.requests_per_second
