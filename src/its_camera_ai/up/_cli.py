"""``its-camera-ai up``: the command line, the signals, and the live view in front.

Without a view the instance runs on the main thread's event loop and SIGINT/SIGTERM ask it
to stop. With the view, the terminal is the view's (it runs on the main thread, where
Ctrl-C lands, and returns on Ctrl-C or q); the instance runs on a thread of its own and is
stopped when the view returns. ``up``'s own messages go to ``<data>/logs/up.log`` and, while
no view owns the terminal, to standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from its_camera_ai.common import ConfigError, Settings, load_settings
from its_camera_ai.up._instance import Instance, InstanceOptions
from its_camera_ai.up._plan import Plan, make_plan

__all__ = ["main"]

DEFAULT_DATA_DIR = Path("var/up")
DEFAULT_BASE_PORT = 50051


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="its-camera-ai up",
        description="Run decoder, inference, analytics and query as separate processes on"
        " this host under one supervisor, with a development token and a sample camera.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="the instance's files: up.json, token, logs, embedded PostgreSQL (default var/up)",
    )
    parser.add_argument("--no-view", action="store_true", help="no live terminal view")
    parser.add_argument(
        "--no-sample", action="store_true", help="do not create the sample camera 'sample'"
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help="gRPC ports from here, HTTP ports from here + 4 (default 50051)",
    )
    parser.add_argument("--config", type=Path, help="YAML file (default: config/<env>.yaml)")
    parser.add_argument("--environment", choices=["dev"], help="up runs dev only (default)")
    return parser


class _Messages:
    """``up``'s own lines: always to its log file, to the terminal while it is ours."""

    def __init__(self, log_file: Path, terminal: TextIO) -> None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_file.open("a", encoding="utf-8")
        self._terminal = terminal
        self._on_terminal = True
        self._lock = threading.Lock()

    def say(self, message: str) -> None:
        with self._lock:
            self._log.write(message + "\n")
            self._log.flush()
            if self._on_terminal:
                print(message, file=self._terminal, flush=True)

    def use_terminal(self, on: bool) -> None:
        """Off while the view draws on it."""
        with self._lock:
            self._on_terminal = on

    def close(self) -> None:
        self._log.close()


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config, args.environment)
    if settings.environment != "dev":
        raise ConfigError(
            f"environment: up runs the local development instance (got {settings.environment});"
            " deploy staging and production with the Helm chart"
        )
    return settings


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        plan = make_plan(args.data_dir, args.base_port)
        settings = _settings(args)
    except (ValueError, ConfigError) as exc:
        print(f"its-camera-ai up: {exc}", file=sys.stderr)
        return 2
    messages = _Messages(plan.logs_dir / "up.log", sys.stdout)
    instance = Instance(plan, settings, InstanceOptions(sample=not args.no_sample), messages.say)
    try:
        if args.no_view:
            return asyncio.run(_run_in_foreground(instance))
        return _run_behind_view(instance, plan, messages)
    finally:
        messages.close()


async def _run_in_foreground(instance: Instance) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, instance.request_stop)
    return await instance.run()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_behind_view(instance: Instance, plan: Plan, messages: _Messages) -> int:
    try:
        from its_camera_ai.view import run_view  # noqa: PLC0415 - the view's stack (rich)
    except ImportError:
        messages.say("the live view is not installed; running without it (Ctrl-C stops)")
        return asyncio.run(_run_in_foreground(instance))
    result: list[int] = []
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=lambda: result.append(loop.run_until_complete(instance.run())), name="up"
    )
    # SIGTERM as Ctrl-C: whichever arrives ends the wait or the view on the main thread.
    signal.signal(signal.SIGTERM, _interrupt)
    thread.start()
    try:
        while thread.is_alive() and not instance.ready.is_set():
            thread.join(0.2)
        if instance.ready.is_set() and instance.credentials is not None:
            messages.use_terminal(False)
            run_view(
                str(plan.data_dir),
                token=instance.credentials.token,
                http_targets={unit.name: unit.http_target for unit in plan.units},
            )
    except KeyboardInterrupt:
        pass
    finally:
        print(flush=True)  # the view may leave its cursor at the end of its last line
        messages.use_terminal(True)
        loop.call_soon_threadsafe(instance.request_stop)
        thread.join()
        loop.close()
    return result[0] if result else 1
