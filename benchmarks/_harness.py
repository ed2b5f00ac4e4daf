"""What the benchmark scripts share: their processes, progress line, database and report head.

The scripts run as files (``.venv/bin/python benchmarks/query_service.py``), so their folder
is on ``sys.path`` and ``import _harness as harness`` finds this module (benchmarks/ is no
package). Used by ``query_service.py`` and ``security_overhead.py``:

- ``open_session``: one run's frame: a temporary directory for logs and files, the progress
  line (``Progress``), a fresh database next to the admin one, and the cleanup whatever
  happens (processes stopped, database dropped, files removed unless kept or the run failed);
  ``argument_parser`` (the options every script has), ``run_and_report`` (runs the
  orchestration, prints and writes its Markdown report) and ``report_head`` (its first lines).
- ``Processes`` and ``run_child``: servers and one-shot child processes, each in its own
  session (Ctrl-C reaches the benchmark only; it stops them); ``service_command``,
  ``service_env`` and ``wait_http_ready`` for ``its-camera-ai serve query`` on loopback.
- ``Measured``: req/s and the error count of a measurement's dataclass.
- Small helpers: ``free_port``, ``machine``, ``percentile``, ``clock``, ``cpu_seconds``,
  ``http_get``, ``admin_dsn_for``, ``apply_schema``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import grpc

from its_camera_ai.analytics.server import MIGRATIONS
from its_camera_ai.common import MigrationSet, apply_migrations

__all__ = [
    "ROOT",
    "Measured",
    "Processes",
    "Progress",
    "ServiceFailed",
    "Session",
    "admin_dsn_for",
    "apply_schema",
    "argument_parser",
    "clock",
    "cpu_seconds",
    "free_port",
    "http_get",
    "machine",
    "open_session",
    "percentile",
    "report_head",
    "run_and_report",
    "run_child",
    "service_command",
    "service_env",
    "wait_http_ready",
]

ROOT = Path(__file__).resolve().parent.parent  # the checkout: every process's working directory


class ServiceFailed(RuntimeError):
    """A process of the benchmark exited or never became ready; the message has its log."""


# -- small helpers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def machine() -> str:
    """The CPU, the Python and grpcio versions, and the load average now (for the report)."""
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    models = re.findall(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    model = models[0].strip() if models else platform.processor() or "unknown CPU"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{model}, {len(models) or os.cpu_count()} logical CPUs"
        f" ({len(os.sched_getaffinity(0))} usable), Python {platform.python_version()},"
        f" grpcio {grpc.__version__}, load average at the end {load}"
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of values sorted ascending (NaN for none)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def clock(seconds: float) -> str:
    """Seconds as ``m:ss``."""
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of these processes so far (0 for one that is gone)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1]
            utime, stime = stat.split()[11:13]  # fields 14 and 15 of proc(5)
            total += (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")
    return total


def admin_dsn_for(dsn: str, name: str) -> str:
    """``dsn`` with its database replaced by ``name`` (query parameters kept)."""
    head, _, query = dsn.partition("?")
    return head.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


async def apply_schema(dsn: str) -> None:
    """The core and analytics migrations, applied to the database at ``dsn``."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        await apply_migrations(pool, [MigrationSet("core", "its_camera_ai.common"), MIGRATIONS])
    finally:
        await pool.close()


class Measured:
    """A mixin for a measurement's dataclass: ``calls`` answered in ``seconds`` measured, and
    ``errors`` by gRPC code; gives req/s and the error count."""

    calls: int
    seconds: float
    errors: dict[str, int]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


# -- the progress line -------------------------------------------------------------------------


class Progress:
    """One line on stderr for the whole run: the planned steps (seconds each, in the order
    ``begin`` starts them), the current one and the ETA (the remaining planned seconds,
    scaled by how far the finished steps overran their plan)."""

    def __init__(
        self, plan: Sequence[float], stream: TextIO = sys.stderr, *, label_width: int = 48
    ) -> None:
        self._plan, self._stream, self._tty = list(plan), stream, stream.isatty()
        self._width = label_width
        self._index, self._label = -1, ""
        self._started = self._step_started = time.monotonic()
        self._planned_done = self._spent_done = self._last_plain = 0.0

    def begin(self, label: str) -> None:
        self.end()
        self._index = min(self._index + 1, len(self._plan) - 1)
        self._label, self._step_started = label, time.monotonic()
        self.render(force=True)

    def end(self) -> None:
        if self._index >= 0 and self._label:
            self._planned_done += self._plan[self._index]
            self._spent_done += time.monotonic() - self._step_started
            self._label = ""

    def render(self, *, force: bool = False) -> None:
        now, total = time.monotonic(), sum(self._plan) or 1.0
        planned_now = self._plan[self._index] if 0 <= self._index < len(self._plan) else 0.0
        in_step = now - self._step_started if self._label else 0.0
        done = self._planned_done + min(in_step, 0.95 * planned_now)
        ran = self._spent_done / self._planned_done if self._planned_done else 1.0
        scale = min(3.0, max(0.5, ran))
        width = self._width
        line = (
            f"[{'#' * round(30 * done / total):<30}] {100 * done / total:3.0f}%"
            f" {self._label[:width]:<{width}} elapsed {clock(now - self._started)}"
            f" ETA {clock(max(0.0, (total - done) * scale))}"
        )
        if self._tty:
            self._stream.write("\r" + line)
        elif force or now - self._last_plain >= 15.0:
            self._stream.write(line + "\n")
            self._last_plain = now
        self._stream.flush()

    def close(self) -> None:
        self.end()
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    async def tick(self) -> None:
        while True:
            self.render()
            await asyncio.sleep(0.5)


# -- processes ---------------------------------------------------------------------------------


class Processes:
    """Every process the benchmark started, each logging to ``log_dir/NAME.log``; ``stop``
    and ``stop_all`` end them (SIGTERM, then SIGKILL after ``stop_grace_s``)."""

    def __init__(self, log_dir: Path, stop_grace_s: float = 10.0) -> None:
        self.log_dir = log_dir
        self._grace_s = stop_grace_s
        self._running: list[asyncio.subprocess.Process] = []

    async def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
                    ) -> asyncio.subprocess.Process:  # fmt: skip
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=log, stderr=asyncio.subprocess.STDOUT, env=env, cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches the benchmark only; it stops them
            )  # fmt: skip
        self._running.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self._grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self._running = [p for p in self._running if p is not proc]

    async def stop_all(self) -> None:
        for proc in reversed(list(self._running)):
            await self.stop(proc)


async def run_child(argv: Sequence[str], what: str, stdin: bytes | None = None) -> str:
    """Run a child process to its end (its own session, killed if the benchmark is
    cancelled) and return the last line of its stdout; ServiceFailed with the end of its
    stderr when it fails. ``stdin``, if given, is written to its standard input."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=None if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = await proc.communicate(stdin)
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise ServiceFailed(f"{what} failed:\n{err.decode()[-3000:]}")
    return out.decode().splitlines()[-1]


def service_command() -> list[str]:
    """``its-camera-ai serve query`` from this interpreter's environment."""
    script = Path(sys.executable).parent / "its-camera-ai"  # .venv/bin/its-camera-ai
    if script.exists():
        return [str(script), "serve", "query"]
    return [sys.executable, "-m", "its_camera_ai", "serve", "query"]


def service_env(dsn: str, grpc_port: int, http_port: int) -> dict[str, str]:
    """A query process's environment on loopback: this one's without ``ITS_*`` variables,
    then the database, the ports, a decoder target nothing listens on, WARNING logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ITS_")}
    env.update({
        "ITS_DATABASE__DSN": dsn,
        "ITS_GRPC__HOST": "127.0.0.1",
        "ITS_GRPC__PORT": str(grpc_port),
        "ITS_HTTP__HOST": "127.0.0.1",
        "ITS_HTTP__PORT": str(http_port),
        "ITS_QUERY__DECODER_TARGET": f"127.0.0.1:{free_port()}",  # nothing listens there
        "ITS_LOGGING__LEVEL": "WARNING",
    })  # fmt: skip
    return env


async def http_get(port: int, path: str) -> tuple[int, str]:
    """GET ``http://127.0.0.1:PORT/PATH``: (status, body); (0, "") when nothing answers."""

    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    return await asyncio.to_thread(get)


async def wait_http_ready(procs: Processes, name: str, proc: asyncio.subprocess.Process,
                          port: int, timeout_s: float = 90.0) -> None:  # fmt: skip
    """Until the process answers 200 on ``/health``; ServiceFailed with its log's tail when
    it exits first or does not answer in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise ServiceFailed(f"{name} exited ({proc.returncode}):\n{procs.log_tail(name)}")
        status, _ = await http_get(port, "/health")
        if status == 200:
            return
        await asyncio.sleep(0.25)
    raise ServiceFailed(f"{name}: not SERVING after {timeout_s:.0f} s:\n{procs.log_tail(name)}")


# -- one run: its frame, its report ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Session:
    """What ``open_session`` made for a run."""

    procs: Processes  # logging to ``tmp``
    progress: Progress
    dsn: str  # the fresh database
    tmp: Path  # the run's temporary directory
    started: float  # time.monotonic() when it opened


@contextlib.asynccontextmanager
async def open_session(
    admin_dsn: str, kind: str, plan: Sequence[float], *, keep_files: bool, label_width: int = 48
) -> AsyncIterator[Session]:
    """A run's frame: a temporary directory, the progress line (ticking), SIGTERM cancelling
    the run, and a fresh database ``its_bench_KIND_*`` next to ``admin_dsn``. On the way out,
    whatever happened: every process stopped, the database dropped, the directory removed
    unless ``keep_files`` or the run failed (its path is printed then)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"its-bench-{kind}-"))
    procs, progress = Processes(tmp), Progress(plan, label_width=label_width)
    ticker = asyncio.create_task(progress.tick())
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    name = f"its_bench_{kind}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    keep = keep_files
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield Session(procs, progress, admin_dsn_for(admin_dsn, name), tmp, time.monotonic())
    except Exception:
        keep = True  # a failure: the processes' logs say why (interrupted: nothing to see)
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        ticker.cancel()
        progress.close()
        await procs.stop_all()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if keep:
            print(f"logs and files of the run: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def report_head(title: str, script: Path, elapsed_s: float) -> list[str]:
    """A report's first lines: its title, the command that ran it, the date and machine."""
    exe = Path(sys.executable)
    shown = os.path.relpath(exe, ROOT) if exe.is_relative_to(ROOT) else str(exe)
    where = os.path.relpath(script, ROOT) if script.is_relative_to(ROOT) else str(script)
    command = shlex.join([shown, where, *sys.argv[1:]])
    return [
        title, "",
        f"Command: `{command}` (whole run {clock(elapsed_s)} min:s)", "",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Machine: {machine()}.",
        "",
    ]  # fmt: skip


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser (its docstring's first line as description) with the options every
    benchmark has: ``--dsn`` (the admin database), ``--markdown``, ``--keep-logs``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument(
        "--dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="admin database; a fresh one is created next to it and dropped",
    )
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the processes' logs and files of the run"
    )
    return parser


def run_and_report(orchestrate: Coroutine[Any, Any, str], markdown: Path | None) -> None:
    """Run the orchestration, print its report and write it to ``markdown`` if given; a
    failed or interrupted run exits with a message instead (its cleanup done)."""
    try:
        report = asyncio.run(orchestrate)
    except ServiceFailed as exc:
        sys.exit(f"benchmark failed: {exc}")
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM
        sys.exit("interrupted; processes stopped, database dropped")
    print(report)
    if markdown:
        markdown.write_text(report, encoding="utf-8")
