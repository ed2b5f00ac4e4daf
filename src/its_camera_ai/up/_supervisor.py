"""The service processes of ``up``: started in order, restarted when they die, stopped in
reverse.

Each child is ``python -m its_camera_ai serve <unit>`` in its own session (a Ctrl-C at the
terminal reaches ``up`` alone, which then stops the children in the order the design
needs: inference drains into analytics before analytics stops, rings outlive their
readers), with ``PR_SET_PDEATHSIG`` so that children never outlive a killed ``up``. A
child that exits while it should run is restarted after ``Backoff`` (0.5 s doubling to
30 s, jittered; back to 0.5 s once a run lasted a minute), every restart counted and
logged. Stopping is SIGTERM, a wait, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from its_camera_ai.common import Backoff
from its_camera_ai.up._plan import UnitPlan

__all__ = ["Child", "Supervisor"]

Say = Callable[[str], None]

# A child that ran this long before it died is restarted from the shortest delay again.
STABLE_AFTER_SECONDS = 60.0
# SIGTERM, then this long to drain and stop (drain_seconds plus inference's 5 s of
# delivery plus closing rings and pools), then SIGKILL.
STOP_TIMEOUT_SECONDS = 30.0
# prctl(2): the signal a child gets when the thread that started it ends.
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` tying the child to ``parent`` (Linux), or None elsewhere."""
    libc = _LIBC
    if libc is None:
        return None

    def tie() -> None:  # runs in the child between fork and exec: no allocation, no locks
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the tie was made
            os.kill(os.getpid(), signal.SIGTERM)

    return tie


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


class Child:
    """One service process and its restarts."""

    def __init__(self, unit: UnitPlan, environment: Mapping[str, str], log_file: Path) -> None:
        self.unit = unit
        self.restarts = 0
        # Served once since up started (health SERVING).
        self.ready = False
        self.process: asyncio.subprocess.Process | None = None
        self._environment = dict(environment)
        self._log_file = log_file
        self._backoff = Backoff(initial=0.5, maximum=30.0)

    @property
    def name(self) -> str:
        return self.unit.name

    async def _spawn(self) -> asyncio.subprocess.Process:
        command = [sys.executable, "-m", "its_camera_ai", "serve", self.name]
        with self._log_file.open("ab") as log:  # the child writes to its own copy
            return await asyncio.create_subprocess_exec(
                *command,
                env=self._environment,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),  # see _die_with_parent
            )

    async def keep_running(self, stopping: asyncio.Event, say: Say) -> None:
        """Run the process, and run it again after each unexpected exit, until ``stopping``."""
        while not stopping.is_set():
            self.process = await self._spawn()
            if stopping.is_set():  # stop() ran while this one was being started
                await self.stop(say)
                return
            started = time.monotonic()
            returncode = await self.process.wait()
            if stopping.is_set():
                return
            lived = time.monotonic() - started
            if lived >= STABLE_AFTER_SECONDS:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            self.restarts += 1
            say(
                f"{self.name} (pid {self.process.pid}) ended with {_describe_exit(returncode)}"
                f" after {lived:.1f} s; restart {self.restarts} in {delay:.1f} s"
                f" (log: {self._log_file})"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)

    async def stop(self, say: Say) -> None:
        """SIGTERM; SIGKILL if it has not exited within ``STOP_TIMEOUT_SECONDS``."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            say(f"{self.name} did not stop within {STOP_TIMEOUT_SECONDS:.0f} s; killing it")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        say(f"{self.name} stopped ({_describe_exit(process.returncode or 0)})")

    async def serving(self) -> bool:
        """Whether the process runs and its gRPC health says SERVING (every service)."""
        if self.process is None or self.process.returncode is not None:
            return False
        async with grpc.aio.insecure_channel(self.unit.grpc_target) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1.0
                )
            except grpc.aio.AioRpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class Supervisor:
    """The children in start order: ``start`` launches them, ``stop`` ends them in reverse."""

    def __init__(self, children: list[Child], say: Say) -> None:
        self.children = children
        self._say = say
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def child(self, name: str) -> Child:
        return next(child for child in self.children if child.name == name)

    def start(self) -> None:
        """Launch every child at once, in start order: peers find each other by address and
        reconnect with backoff, so nobody waits for the slowest import to begin its own."""
        for child in self.children:
            task = asyncio.create_task(
                child.keep_running(self._stopping, self._say), name=f"up-{child.name}"
            )
            self._tasks.append(task)

    async def stop(self) -> None:
        self._stopping.set()
        for child in reversed(self.children):
            await child.stop(self._say)
        # Each ends on its own now: its process is gone and it will not start another.
        await asyncio.gather(*self._tasks)
