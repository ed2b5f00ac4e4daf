"""The README's quick start works on a fresh clone (issue #20).

The committed state (``git clone`` of this repository's HEAD) gets the README's "Run it"
command, parsed from README.md: the first ```` ```bash ```` block under ``## Run it``, run
by bash as written but for two explicit adaptations (``offline`` and ``headless``):

(a) pip installs from the wheelhouse that ``.ci/run`` fills (this checkout's
    ``var/wheelhouse``, ``$ITS_TEST_WHEELHOUSE``), with no index and no machine pip config:
    tests download nothing;
(b) ``up`` gets ``--no-view`` (no terminal here) and a free ``--base-port`` (the default
    ports may be taken); the README's other commands name the default ports, so their
    ``127.0.0.1:5005x`` addresses move by the same offset.

``ITS_*`` variables are cleared, so ``up`` runs on its embedded PostgreSQL. What ``up``
prints is checked (the README's port table, the token's export line, the sample camera),
then the README's next blocks run in order: the export line in bash, grpcurl lines replayed
by the reflection-only grpcurl of ``tests/api/test_grpcurl_doc.py`` (grpcurl is not
installed), ``curl ... | grep`` lines with urllib and the same pattern, ``its-camera-ai``
lines as written. Then a Ctrl-C (SIGINT to the job's process group, as a terminal sends it):
exit 0, nothing left in /dev/shm under the run's ring prefix, no process left.

It installs torch and the project into a fresh venv (about a minute), so it is a ``stress``
test: the default run skips it; ``pytest -m stress tests/package/test_quickstart.py``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from tests.api.test_grpcurl_doc import ShellReader, check, run_grpcurl
from tests.deploy.test_dockerfile import FILL_WHEELHOUSE, WHEELHOUSE
from tests.up.processes import Proc, children_of, free_port_block

REPO = Path(__file__).resolve().parents[2]
README_BASE_PORT = 50051  # the ports the README shows: up's default block of eight
INSTALL_AND_START_WITHIN_S = 360.0
COUNTED_AFTER_S = 20.0  # the sample street's first vehicles cross its line within this
STOP_WITHIN_S = 60.0
COMMAND_TIMEOUT_S = 60.0


# -- the README ------------------------------------------------------------------------


def run_it_section(readme: str) -> str:
    found = re.search(r"^## Run it\b.*?(?=^## )", readme, re.M | re.S)
    assert found, "README.md has no '## Run it' section"
    return found.group(0)


def fenced_blocks(section: str, language: str) -> list[str]:
    """The bodies of the section's code blocks in ``language`` ("" for none), in order."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", section, re.M | re.S)
    return [body for kind, body in blocks if kind == language]


def logical_commands(block: str) -> list[str]:
    """The block's commands: ``\\`` continuations joined, blank and comment lines dropped."""
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append(pending + line)
        pending = ""
    assert not pending, f"a continuation runs past the block: {pending!r}"
    return commands


def moved(text: str, base_port: int) -> str:
    """Adaptation (b) for the README's other commands: its default ports moved to ours."""

    def port(match: re.Match[str]) -> str:
        offset = int(match.group(1)) - README_BASE_PORT
        return f"127.0.0.1:{base_port + offset}" if 0 <= offset < 8 else match.group(0)

    return re.sub(r"127\.0\.0\.1:(\d+)", port, text)


def headless(command: str, base_port: int) -> str:
    """Adaptation (b): ``up``, the command's last step, without the view, on our ports."""
    *steps, up = command.strip().split("&&")
    assert re.fullmatch(r"\s*\S*its-camera-ai up\b.*", up), f"not ending in `up`: {command}"
    flags = "" if "--no-view" in up else " --no-view"
    if "--base-port" not in up:
        flags += f" --base-port {base_port}"
    return "&&".join([*steps, up.rstrip() + flags])


def offline(environment: dict[str, str]) -> dict[str, str]:
    """Adaptation (a): pip from the wheelhouse only (no index, no machine pip config)."""
    return {
        **environment,
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(WHEELHOUSE),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }


# -- the fresh clone and its `up` ---------------------------------------------------------


def fresh_clone(parent: Path) -> Path:
    clone = parent / "its-camera-ai"
    subprocess.run(
        ["git", "clone", "--quiet", str(REPO), str(clone)],
        check=True,
        capture_output=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    return clone


class Job:
    """The README's first command in bash, in a session of its own like a terminal's job;
    its output in a file."""

    def __init__(self, command: str, cwd: Path, environment: dict[str, str]) -> None:
        self.output = cwd.parent / "run-it.out"
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                ["bash", "-c", command],
                cwd=cwd,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, pattern: str, within: float) -> re.Match[str]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if (found := re.search(pattern, self.text(), re.M)) is not None:
                return found
            assert self.process.poll() is None, f"the command ended:\n{self.text()[-6000:]}"
            time.sleep(0.5)
        raise AssertionError(f"no {pattern!r} within {within} s:\n{self.text()[-6000:]}")

    def processes(self) -> list[Proc]:
        """Every process below bash, at any depth (services, the embedded PostgreSQL)."""
        found: list[Proc] = []
        parents = [self.process.pid]
        while parents:
            children = children_of(parents.pop())
            found += children
            parents += [child.pid for child in children]
        return found

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the job's process group, as the terminal sends it."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(STOP_WITHIN_S)

    def kill(self) -> None:
        if self.process.poll() is None:
            for proc in self.processes():
                if proc.running():
                    proc.kill()
            self.process.kill()
            self.process.wait()


# -- the README's next commands -----------------------------------------------------------


def eventually(attempt: Callable[[], str | None], within: float) -> None:
    """Repeats ``attempt`` until it returns None (done) or ``within`` s have passed; its
    last answer says what was missing."""
    deadline = time.monotonic() + within
    while (missing := attempt()) is not None:
        assert time.monotonic() < deadline, missing
        time.sleep(2)


def export_variable(command: str, cwd: Path) -> tuple[str, str]:
    """An ``export NAME=...`` line, run by bash: the variable and the value it got."""
    name = re.fullmatch(r"export (\w+)=.*", command)
    assert name, f"not an export line: {command}"
    printed = subprocess.run(
        ["bash", "-c", f'{command} && printf %s "${name.group(1)}"'],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert printed.stdout, f"{command} set nothing"
    return name.group(1), printed.stdout


def grpcurl(command: str, cwd: Path, variables: dict[str, str]) -> Any:
    """The replayed grpcurl's responses as JSON objects (or its listing), status OK."""
    reader = ShellReader(dict(variables), defined=set(variables))
    (replayed,) = reader.commands(command)
    outcome = run_grpcurl(replayed, cwd, lambda _path: variables.get("ITS_TOKEN", ""))
    check(replayed, outcome)
    if outcome.listing:
        return outcome.listing
    return [json_format.MessageToDict(response) for response in outcome.responses]


def curl_grep(command: str) -> str | None:
    """``curl -s URL | grep -E PATTERN``: None once a matching line shows a count > 0."""
    words = shlex.split(command, comments=True)
    assert words[:2] == ["curl", "-s"], command
    assert words[3:6] == ["|", "grep", "-E"], command
    url, pattern = words[2], words[6]
    with urllib.request.urlopen(f"http://{url}", timeout=10) as reply:
        text = reply.read().decode()
    matched = [line for line in text.splitlines() if re.search(pattern, line)]
    if not any(float(line.rsplit(" ", 1)[1]) > 0 for line in matched):
        return f"{command}: no line counting anything yet: {matched}"
    return None


def cli(command: str, cwd: Path, environment: dict[str, str]) -> str:
    """An ``.venv/bin/its-camera-ai`` line, run by bash as written; its output."""
    done = subprocess.run(
        ["bash", "-c", command],
        check=False,
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stderr}"
    return done.stdout


# -- the test -------------------------------------------------------------------------------


def check_start(job: Job, readme_table: str, clone: Path, base_port: int) -> Path:
    """What ``up`` printed: the README's port table (moved), the export line, the sample
    camera, on the embedded database. Returns the token file the export line reads."""
    job.wait_for(r"^ready in [\d.]+ s", INSTALL_AND_START_WITHIN_S)
    printed = job.text()
    table = moved(readme_table.rstrip("\n"), base_port)
    assert table in printed, f"the README's table (moved) is not what up printed:\n{printed}"
    services = {line.split()[0] for line in table.splitlines()[1:]}
    assert services == {"decoder", "analytics", "inference", "query"}, table
    assert f"embedded PostgreSQL in {clone / 'var' / 'up' / 'postgres'}" in printed
    assert "sample camera 'sample': created" in printed, printed
    export = re.search(r"^token: export ITS_TOKEN=\$\(cat (\S+)\)$", printed, re.M)
    assert export, f"no export line for the token:\n{printed}"
    token_file = Path(export.group(1))
    assert token_file == clone / "var" / "up" / "token", printed
    return token_file


def try_the_api(block: str, clone: Path, base_port: int, variables: dict[str, str]) -> None:
    """The README's second block: the export, a camera created, metrics, the stats."""
    for command in logical_commands(moved(block, base_port)):
        if command.startswith("export "):
            name, value = export_variable(command, clone)
            variables[name] = value
        elif command.startswith("grpcurl "):
            eventually(functools.partial(grpcurl_answer, command, clone, variables), 30)
        elif command.startswith("curl "):
            eventually(functools.partial(curl_grep, command), 30)
        else:
            raise AssertionError(f"a command the test does not replay: {command}")


def grpcurl_answer(command: str, clone: Path, variables: dict[str, str]) -> str | None:
    """None once the grpcurl line's answer is what the README says it shows."""
    (answer,) = grpcurl(command, clone, variables)
    if "CreateCamera" in command:
        assert answer["camera"]["name"] == "cameras/demo", answer
        assert answer["camera"]["enabled"], answer
    elif "GetCameraStats" in command:
        stats = answer["stats"]
        assert stats["name"] == "cameras/sample/stats", answer
        # Not processedFps: without Redis (up's default) the figures come from the stored
        # engine state, which keeps no frame rate; the last frame's time shows it is live.
        last_frame = datetime.fromisoformat(stats.get("lastFrameTime", "1970-01-01T00:00:00Z"))
        if datetime.now(UTC) - last_frame > timedelta(seconds=30):
            return f"{command}: analytics processes no frame of sample now: {answer}"
    return None


def read_the_traffic(block: str, clone: Path, environment: dict[str, str]) -> None:
    """The README's third block, as written (any port moved): counts, summary, events."""
    commands = logical_commands(block)
    assert [shlex.split(c)[:2] for c in commands] == [
        [".venv/bin/its-camera-ai", report] for report in ("counts", "summary", "events")
    ], commands

    def counted() -> str | None:
        printed = cli(commands[0], clone, environment)
        total = re.search(r"^total (\d+)$", printed, re.M)
        assert total, printed
        return None if int(total.group(1)) > 0 else f"nothing counted yet:\n{printed}"

    eventually(counted, 60)
    summary = cli(commands[1], clone, environment)
    assert re.search(r"^sample +[1-9]\d* ", summary, re.M), summary
    events = cli(commands[2], clone, environment)
    assert events.splitlines()[0].split()[:4] == ["start", "(UTC)", "end", "type"], events


@pytest.mark.stress
@pytest.mark.timeout(900)
def test_the_readme_quick_start_runs_on_a_fresh_clone(embedded_data_dir: Path) -> None:
    if not any(WHEELHOUSE.glob("torch-*.whl")):
        pytest.fail(f"no wheelhouse at {WHEELHOUSE}: fill it first with `{FILL_WHEELHOUSE}`")
    # Outside pytest's 0700 tree: the embedded PostgreSQL runs as another user.
    clone = fresh_clone(embedded_data_dir.parent)
    section = run_it_section((clone / "README.md").read_text(encoding="utf-8"))
    run_it, try_it, read_it, *_ = fenced_blocks(section, "bash")
    (readme_table,) = [b for b in fenced_blocks(section, "") if b.startswith("service ")]
    base_port = free_port_block()
    # ITS_DATABASE__DSN and the rest unset: up's embedded defaults, as on a fresh machine.
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ITS_", "PIP_"))}
    environment.pop("VIRTUAL_ENV", None)
    started = time.monotonic()
    job = Job(headless(run_it, base_port), clone, offline(environment))
    try:
        token_file = check_start(job, readme_table, clone, base_port)
        ready = time.monotonic()
        print(f"\ninstalled and ready in {ready - started:.0f} s")
        up_info = json.loads((clone / "var" / "up" / "up.json").read_text())
        processes = job.processes()
        assert any("serve" in p.command for p in processes), processes

        (listing,) = re.findall(r"`(grpcurl [^`]* list)`", section)
        listed = grpcurl(moved(listing, base_port), clone, {})
        assert {"grpc.health.v1.Health", "its.camera.v1.CameraService"} <= set(listed), listed
        variables: dict[str, str] = {}
        try_the_api(try_it, clone, base_port, variables)
        assert variables["ITS_TOKEN"] == token_file.read_text().strip()
        time.sleep(max(0.0, ready + COUNTED_AFTER_S - time.monotonic()))
        read_the_traffic(moved(read_it, base_port), clone, {**environment, **variables})

        assert job.interrupt() == 0, job.text()[-6000:]
        print(f"whole quick start {time.monotonic() - started:.0f} s")
        stopped = re.findall(r"^(\w+) stopped \(exit code 0\)$", job.text(), re.M)
        assert sorted(stopped) == sorted(up_info["grpc"]), job.text()[-6000:]
        left = [entry for entry in os.listdir("/dev/shm") if up_info["ring_prefix"] in entry]
        assert not left, left
        assert not [p.command for p in processes if p.running()], "processes outlived up"
    finally:
        job.kill()
