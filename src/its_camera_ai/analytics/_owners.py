"""Producer identity: each producer id is bound to the principal that first used it.

The binding is a row of ``analytics_producer_owners`` (shared by every analytics instance,
so a producer moving between instances keeps it), cached here once seen. A new producer
id cannot be bound while PostgreSQL is down: that stream is refused with UNAVAILABLE
(its producer retries) rather than trusted; ids bound earlier keep streaming and spool.
"""

from __future__ import annotations

import asyncpg

from its_camera_ai.common import POSTGRES_FAILURES, PermissionDeniedError, UnavailableError

__all__ = ["ProducerOwners"]

# Bindings remembered in memory; beyond it the oldest are forgotten (and re-read).
_MAX_CACHED = 10_000


class ProducerOwners:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._owners: dict[str, str] = {}

    async def claim(self, producer_id: str, actor: str) -> None:
        """Bind ``producer_id`` to ``actor`` if unbound; refuse another actor's id."""
        owner = self._owners.get(producer_id)
        if owner is None:
            try:
                owner = await self._pool.fetchval(
                    """
                    WITH claimed AS (
                        INSERT INTO analytics_producer_owners (producer_id, actor)
                        VALUES ($1, $2) ON CONFLICT (producer_id) DO NOTHING
                        RETURNING actor
                    )
                    SELECT actor FROM claimed
                    UNION ALL
                    SELECT actor FROM analytics_producer_owners WHERE producer_id = $1
                    LIMIT 1
                    """,
                    producer_id,
                    actor,
                )
            except POSTGRES_FAILURES as exc:
                raise UnavailableError(
                    "cannot check the producer's identity while the database is down",
                    metadata={"dependency": "postgresql"},
                ) from exc
            assert owner is not None
            if len(self._owners) >= _MAX_CACHED:
                self._owners.pop(next(iter(self._owners)))
            self._owners[producer_id] = owner
        if owner != actor:
            raise PermissionDeniedError(
                f"batch.producer_id {producer_id!r} belongs to another principal;"
                " use a producer id of your own"
            )
