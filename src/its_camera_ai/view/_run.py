"""``its-camera-ai view`` and ``run_view``: the live terminal view, refreshed in place.

It stops cleanly (exit 0) on ``q`` (when stdin is a terminal), Ctrl-C or SIGTERM: the
screen is restored, the channels closed, a fetch in flight abandoned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import termios
import tty
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.live import Live

from its_camera_ai.client import (
    DEFAULT_TARGET,
    Endpoints,
    add_connection_arguments,
    channel_from_arguments,
    read_up_dir,
    resolve_endpoints,
)
from its_camera_ai.view._fetch import ViewFetcher
from its_camera_ai.view._render import render_view
from its_camera_ai_client import AsyncClient, TlsOptions, connect_async

__all__ = ["run_view", "view_main"]

_Result = TypeVar("_Result")
Connect = Callable[[str], AsyncClient]


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    # asyncio leaves SIG_DFL behind on removal: a caller's own handlers (`up` turns SIGTERM
    # into KeyboardInterrupt for its shutdown) are put back instead.
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            handler = signal.getsignal(signum)
            loop.add_signal_handler(signum, stop.set)
            previous[signum] = handler
        except (RuntimeError, ValueError):  # not the main thread: KeyboardInterrupt ends it
            pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(signum, handler)


@contextlib.contextmanager
def _stop_on_q(stop: asyncio.Event) -> Iterator[None]:
    """Reads single keys from a terminal stdin (cbreak: no Enter needed, Ctrl-C still a
    signal); without a terminal there is nothing to read."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        yield
        return
    loop = asyncio.get_running_loop()
    saved = termios.tcgetattr(fd)

    def key_pressed() -> None:
        keys = os.read(fd, 64)
        if not keys:  # end of input
            loop.remove_reader(fd)
        elif b"q" in keys.lower():
            stop.set()

    tty.setcbreak(fd)
    loop.add_reader(fd, key_pressed)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _unless_stopped(work: Awaitable[_Result], stop: asyncio.Event) -> _Result | None:
    """``work``'s result, or None (and ``work`` cancelled) if ``stop`` is set first."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


async def _live(
    endpoints: Endpoints, connect: Connect, refresh_seconds: float, console: Console
) -> int:
    cameras = connect(endpoints.cameras)
    query = cameras if endpoints.query == endpoints.cameras else connect(endpoints.query)
    fetcher = ViewFetcher(cameras, query, source=endpoints.describe(), http_targets=endpoints.http)
    stop = asyncio.Event()
    try:
        with (
            _stop_on_signals(stop),
            _stop_on_q(stop),
            Live(console=console, auto_refresh=False, redirect_stderr=False) as live,
        ):
            while not stop.is_set():
                snapshot = await _unless_stopped(fetcher.fetch(), stop)
                if snapshot is None:
                    break
                live.update(render_view(snapshot), refresh=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), refresh_seconds)
    finally:
        await cameras.close()
        if query is not cameras:
            await query.close()
    return 0


def _run(endpoints: Endpoints, connect: Connect, refresh_seconds: float) -> int:
    if not refresh_seconds > 0:
        print(f"its-camera-ai view: refresh: must be > 0, got {refresh_seconds}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_live(endpoints, connect, refresh_seconds, Console()))
    except ValueError as exc:  # options that cannot make a connection
        print(f"its-camera-ai view: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a SIGINT before the handler was in place
        return 0


def _endpoints_of(target: str, http_targets: Mapping[str, str] | None) -> Endpoints:
    """``target`` is ``HOST:PORT`` or an ``up`` data directory (or its up.json)."""
    if target.endswith(".json") or Path(target).is_dir():
        endpoints = read_up_dir(Path(target))
        if http_targets is None:
            return endpoints
        return dataclasses.replace(endpoints, http=dict(http_targets))
    return Endpoints.single(target, http_targets)


def run_view(
    target: str,
    *,
    token: str | None = None,
    refresh_seconds: float = 1.0,
    http_targets: Mapping[str, str] | None = None,
    api_key: str | None = None,
    tls: TlsOptions | None = None,
) -> int:
    """Shows the live view of the system at ``target`` until ``q``, Ctrl-C or SIGTERM;
    returns the exit code (0 then, 2 for unusable arguments).

    ``target``: ``HOST:PORT`` serving every API (``serve all``), or the data directory of
    ``its-camera-ai up`` (its up.json names each service's port, the HTTP ports and the
    token file). ``http_targets``: service name -> ``HOST:PORT`` of HTTP side ports whose
    ``/metrics`` give the latency per stage. The credential is ``token`` or ``api_key``,
    else up.json's token file."""
    try:
        endpoints = _endpoints_of(target, http_targets)
    except ValueError as exc:
        print(f"its-camera-ai view: {exc}", file=sys.stderr)
        return 2
    if token is None and api_key is None:
        token, api_key = endpoints.token, endpoints.api_key

    def connect(address: str) -> AsyncClient:
        return connect_async(address, token=token, api_key=api_key, tls=tls)

    return _run(endpoints, connect, refresh_seconds)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="its-camera-ai view", description=__doc__)
    add_connection_arguments(parser, default_target=DEFAULT_TARGET)
    parser.set_defaults(target=None)  # unset: up.json in var/up if there is one
    parser.add_argument(
        "--up-dir", type=Path, help="data directory of `its-camera-ai up` (default var/up if any)"
    )
    parser.add_argument(
        "--metrics",
        action="append",
        metavar="HOST:PORT",
        help="HTTP port whose /metrics give the latency per stage (repeat; default: up.json)",
    )
    parser.add_argument("--refresh", type=float, default=1.0, help="seconds (default 1)")
    return parser


def view_main(argv: Sequence[str]) -> int:
    """``its-camera-ai view``: the connection options of every client command, or
    ``--up-dir``."""
    args = _parser().parse_args(list(argv))
    try:
        endpoints = resolve_endpoints(args.target, args.up_dir)
    except ValueError as exc:
        print(f"its-camera-ai view: {exc}", file=sys.stderr)
        return 2
    if args.metrics:
        endpoints = dataclasses.replace(endpoints, http={a: a for a in args.metrics})
    if args.token is None and args.api_key is None:
        args.token, args.api_key = endpoints.token, endpoints.api_key

    def connect(address: str) -> AsyncClient:
        options = argparse.Namespace(**{**vars(args), "target": address})
        return AsyncClient(channel_from_arguments(options))

    return _run(endpoints, connect, args.refresh)
