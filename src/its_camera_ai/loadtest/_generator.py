"""The asyncio load generator: closed loop (``concurrency`` callers back to back) or open loop
(arrivals at ``rate`` per second, at most ``concurrency`` in flight), over raw bytes so the
client spends as little CPU as it can beside the servers it loads."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from its_camera_ai.loadtest._report import CallStats, LoadReport, Progress
from its_camera_ai.loadtest._rpcs import PlannedCall
from its_camera_ai_client import TlsOptions, aio_channel

__all__ = ["LoadPlan", "run_load"]

_Call = Callable[..., "grpc.aio.UnaryUnaryCall[bytes, bytes]"]


@dataclass(frozen=True)
class LoadPlan:
    """What to call, where, how hard and for how long.

    ``rate`` None is a closed loop; a rate is an open loop whose latencies count from each
    call's scheduled time (a server that stalls cannot hide its backlog from the figures).
    ``total`` stops the run after that many calls (ghz's ``total``). ``metadata`` is sent
    with every call (besides the credential of ``token``/``api_key``). Each caller makes one
    attempt per call: retries would hide the errors a load test is for.
    """

    target: str
    calls: Sequence[PlannedCall]
    concurrency: int = 16
    rate: float | None = None
    duration_s: float = 10.0
    total: int | None = None
    timeout_s: float = 10.0
    connections: int = 1
    token: str | None = None
    api_key: str | None = None
    tls: TlsOptions | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    seed: int = 0
    label: str = field(default="load")

    def __post_init__(self) -> None:
        if not self.calls:
            raise ValueError("calls: at least one RPC to call")
        if self.concurrency < 1:
            raise ValueError(f"concurrency: must be at least 1, not {self.concurrency}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate: must be positive, not {self.rate}")
        if self.duration_s <= 0:
            raise ValueError(f"duration: must be positive, not {self.duration_s}")
        if self.total is not None and self.total < 1:
            raise ValueError(f"total: must be at least 1, not {self.total}")
        if self.connections < 1:
            raise ValueError(f"connections: must be at least 1, not {self.connections}")


class _Run:
    """The state one run shares between its callers."""

    def __init__(self, plan: LoadPlan, channels: Sequence[grpc.aio.Channel]) -> None:
        self.plan = plan
        self.stats = {call.name: CallStats() for call in plan.calls}
        self.callables: list[dict[str, _Call]] = [
            {c.name: channel.unary_unary(c.method) for c in plan.calls} for channel in channels
        ]
        self.chooser = random.Random(plan.seed)
        self.issued = 0
        self.shed = 0
        self.deadline = 0.0

    def more(self) -> bool:
        if time.monotonic() >= self.deadline:
            return False
        return self.plan.total is None or self.issued < self.plan.total

    async def call(self, caller: int, scheduled: float) -> None:
        """One call by ``caller``, its latency counted from ``scheduled`` (monotonic)."""
        self.issued += 1
        planned = self.plan.calls[self.chooser.randrange(len(self.plan.calls))]
        method: _Call = self.callables[caller % len(self.callables)][planned.name]
        stats = self.stats[planned.name]
        try:
            await method(
                planned.pick(self.chooser),
                timeout=self.plan.timeout_s,
                metadata=self.plan.metadata or None,
            )
        except grpc.aio.AioRpcError as exc:
            stats.errors[exc.code().name] += 1
            return
        stats.latencies_s.append(time.monotonic() - scheduled)

    def detail(self) -> str:
        ok = sum(len(s.latencies_s) for s in self.stats.values())
        failed = sum(sum(s.errors.values()) for s in self.stats.values())
        return f"{ok} ok, {failed} failed" + (f", {self.shed} shed" if self.shed else "")


async def _closed_loop(run: _Run, progress: Progress) -> None:
    async def caller(index: int) -> None:
        while run.more():
            await run.call(index, time.monotonic())

    async def report() -> None:
        while True:
            await asyncio.sleep(0.5)
            progress.update(run.detail())

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*(caller(i) for i in range(run.plan.concurrency)))
    finally:
        reporter.cancel()


async def _open_loop(run: _Run, rate: float, progress: Progress) -> None:
    in_flight: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    for arrival in itertools.count():
        if not run.more():
            break
        scheduled = started + arrival / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= run.plan.concurrency:
            run.shed += 1  # the server is behind: count it, never queue without bound
            continue
        task = asyncio.create_task(run.call(arrival, scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        if arrival % 64 == 0:
            progress.update(run.detail())
    if in_flight:
        await asyncio.wait(in_flight, timeout=run.plan.timeout_s)


async def run_load(plan: LoadPlan) -> LoadReport:
    """Run ``plan`` and report what it measured (every call's latency; errors by code)."""
    channels = [
        aio_channel(
            plan.target,
            token=plan.token,
            api_key=plan.api_key,
            tls=plan.tls,
            unary_timeout_seconds=plan.timeout_s,
            max_attempts=1,
            # Distinct options: gRPC would otherwise share one connection between channels.
            options=[("grpc.channel_id", index)],
        )
        for index in range(plan.connections)
    ]
    run = _Run(plan, channels)
    progress = Progress(plan.duration_s, plan.label)
    started = time.monotonic()
    run.deadline = started + plan.duration_s
    try:
        if plan.rate is None:
            await _closed_loop(run, progress)
        else:
            await _open_loop(run, plan.rate, progress)
    finally:
        progress.close()
        for channel in channels:
            await channel.close()
    return LoadReport(
        target=plan.target,
        mode="closed" if plan.rate is None else "open",
        concurrency=plan.concurrency,
        rate=plan.rate,
        elapsed_s=time.monotonic() - started,
        by_rpc=run.stats,
        shed=run.shed,
    )
