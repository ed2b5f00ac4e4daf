"""The container recipe (``Dockerfile``, ``.dockerignore``), checked without a Docker engine.

A small, strict parser reads the Dockerfile. The builder stage's RUN lines run for real in
/bin/sh with its ENV/ARG values, image paths mapped under a temporary root, into a fresh venv,
every package from a local wheelhouse (standing in for PyTorch's CPU index and PyPI: tests
download nothing). The production stage is held to its promises: a numeric non-root user,
only the venv, config and extra models copied in, no build tools, and a HEALTHCHECK that
passes against the service served from that venv and fails once the service stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
# Filled by an install step (.ci/run), so the clean install below needs no network.
WHEELHOUSE = Path(os.environ.get("ITS_TEST_WHEELHOUSE", REPO / "var" / "wheelhouse"))
FILL_WHEELHOUSE = (
    f".venv/bin/pip download -q -d {WHEELHOUSE} torch==2.13.0 'setuptools>=77' ./clients/python ."
)
INSTRUCTION = re.compile(
    r"FROM|ARG|ENV|RUN|COPY|WORKDIR|USER|HEALTHCHECK|ENTRYPOINT|CMD|EXPOSE|LABEL"
)
# python:3.11-slim's own search path, which `ENV PATH=...:$PATH` extends.
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Image directories the recipe writes; the test maps them under its temporary root.
IMAGE_PATH = re.compile(r"(?<![\w.:/-])(/opt|/srv|/etc/its)(?=/|$|[\s:\"'])")
TIMEOUT_S = 240  # one builder step, or one command of the built venv
SERVICE_START_WITHIN_S = 90.0


class DockerfileError(ValueError):
    """A Dockerfile the parser refuses; the message names the line."""


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name}: {len(found)} {keyword} instructions"
        return found[0]


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, instruction text): comments dropped, continuations joined."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending = ""
    if pending:
        raise DockerfileError(f"line {start}: continuation runs past the end of the file")


def parse_dockerfile(text: str) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for number, line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        if not INSTRUCTION.fullmatch(keyword):
            raise DockerfileError(f"line {number}: unsupported instruction {keyword!r}")
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+) AS ([a-z][a-z0-9_-]*)", args.strip())
            if match is None:
                raise DockerfileError(f"line {number}: FROM must be 'FROM image AS name'")
            if match[2] in stages:
                raise DockerfileError(f"line {number}: stage {match[2]!r} defined twice")
            current = stages[match[2]] = Stage(match[2], match[1])
        elif current is None:
            raise DockerfileError(f"line {number}: {keyword} before the first FROM")
        else:
            current.instructions.append(Instruction(number, keyword, args.strip()))
    return stages


def expand(word: str, variables: dict[str, str], line: int) -> str:
    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in variables:
            raise DockerfileError(f"line {line}: ${name} is not defined")
        return variables[name]

    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", value, word)


def assignments(instruction: Instruction, variables: dict[str, str]) -> dict[str, str]:
    """``KEY=value`` words of ENV, ARG and LABEL, quotes removed and variables expanded."""
    result: dict[str, str] = {}
    for word in shlex.split(instruction.args):
        key, equals, raw = word.partition("=")
        if not equals:  # an ARG without a default too: every build argument has one here
            raise DockerfileError(f"line {instruction.line}: {word!r} is not KEY=value")
        result[key] = expand(raw, {**variables, **result}, instruction.line)
    return result


def exec_form(text: str, line: int) -> list[str]:
    try:
        words = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DockerfileError(f"line {line}: not a JSON array: {exc}") from None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise DockerfileError(f"line {line}: exec form must be a JSON array of strings")
    return words


@dataclass(frozen=True)
class Copy:
    source_stage: str | None  # None: the build context
    sources: list[str]
    destination: str


def parse_copy(instruction: Instruction, variables: dict[str, str]) -> Copy:
    words = [expand(w, variables, instruction.line) for w in shlex.split(instruction.args)]
    source_stage = None
    while words and words[0].startswith("--"):
        flag, _, value = words.pop(0).partition("=")
        if flag == "--from":
            source_stage = value
        elif flag not in ("--chown", "--chmod", "--link"):
            raise DockerfileError(f"line {instruction.line}: unsupported COPY flag {flag}")
    if len(words) < 2:
        raise DockerfileError(f"line {instruction.line}: COPY needs a source and a destination")
    if len(words) > 2 and not words[-1].endswith("/"):
        raise DockerfileError(f"line {instruction.line}: several sources need a dest ending in /")
    return Copy(source_stage, words[:-1], words[-1])


def parse_healthcheck(instruction: Instruction) -> tuple[dict[str, str], list[str]]:
    options, rest = {}, instruction.args
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        rest = rest.lstrip()
    keyword, _, command = rest.partition(" ")
    if keyword != "CMD":
        raise DockerfileError(f"line {instruction.line}: HEALTHCHECK needs CMD [...]")
    return options, exec_form(command, instruction.line)


def stage_variables(stage: Stage, base: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(environment of the finished image, ARG values) of a stage."""
    environment, arguments = dict(base), dict[str, str]()
    for instruction in stage.instructions:
        if instruction.keyword == "ARG":
            arguments.update(assignments(instruction, {**environment, **arguments}))
        elif instruction.keyword == "ENV":
            environment.update(assignments(instruction, {**environment, **arguments}))
    return environment, arguments


class DockerIgnore:
    """``.dockerignore`` as BuildKit reads it: the last pattern matching a path or any of its
    parent directories decides; ``!`` lets back in; ``*``/``?`` stop at ``/``, ``**`` does not."""

    def __init__(self, text: str) -> None:
        self.patterns: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclude = not line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            self.patterns.append((exclude, re.compile(self._regex(pattern))))

    @staticmethod
    def _regex(pattern: str) -> str:
        parts = re.split(r"(\*\*/|\*\*|\*|\?|\[[^]]+\])", pattern)
        wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        return "".join(
            re.sub(r"^\[!", "[^", p) if p.startswith("[") else wildcards.get(p, re.escape(p))
            for p in parts
        )

    def excludes(self, relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for exclude, regex in self.patterns:
            if any(regex.fullmatch(p) for p in prefixes):
                excluded = exclude
        return excluded


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def dockerignore() -> DockerIgnore:
    return DockerIgnore((REPO / ".dockerignore").read_text())


def test_parser_names_the_line_of_bad_input() -> None:
    with pytest.raises(DockerfileError, match=r"line 2: unsupported instruction 'ADD'"):
        parse_dockerfile("FROM python:3.11-slim AS base\nADD . /app\n")
    with pytest.raises(DockerfileError, match=r"line 1: continuation runs past"):
        parse_dockerfile("FROM python:3.11-slim AS base \\\n")
    stage = parse_dockerfile("FROM scratch AS base\n\nENV A=$MISSING\n")["base"]
    with pytest.raises(DockerfileError, match=r"line 3: \$MISSING is not defined"):
        stage_variables(stage, {})
    with pytest.raises(DockerfileError, match=r"line 2: exec form"):
        exec_form('{"not": "a list"}', 2)


def test_stages_and_pinned_torch_match_the_project(stages: dict[str, Stage]) -> None:
    assert list(stages) == ["models", "builder", "production"]
    # Empty unless the build names a `models` context (--build-context models=DIR).
    assert stages["models"].base == "scratch"
    assert stages["models"].instructions == []
    # The venv's interpreter link points into the base image: both stages need the same one.
    assert stages["builder"].base == stages["production"].base == "python:3.11-slim"
    _, arguments = stage_variables(stages["builder"], {"PATH": BASE_IMAGE_PATH})
    assert arguments["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert f"torch=={arguments['TORCH_VERSION']}" in (REPO / ".ci" / "run").read_text()
    (torch_step,) = [r.args for r in stages["builder"].all("RUN") if "torch==" in r.args]
    assert torch_step == 'pip install --extra-index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"'


def test_production_stage_runs_as_non_root_without_build_tools(stages: dict[str, Stage]) -> None:
    production = stages["production"]
    environment, arguments = stage_variables(production, {"PATH": BASE_IMAGE_PATH})
    user = expand(production.one("USER").args, {**environment, **arguments}, 0)
    assert re.fullmatch(r"[1-9][0-9]*:[0-9]+", user), f"USER {user} is not a numeric non-root uid"
    for step in production.all("RUN"):
        found = re.findall(r"\b(apt-get|apt|dpkg|pip|gcc|g\+\+|make|build-essential)\b", step.args)
        assert not found, f"line {step.line}: the production stage installs {found}"
    copies = sorted(
        (c.source_stage or "", tuple(c.sources), c.destination)
        for c in (parse_copy(i, environment) for i in production.all("COPY"))
    )
    assert copies == [
        ("", ("config",), "/etc/its/config"),
        ("builder", ("/opt/venv",), "/opt/venv"),  # same path: the venv's scripts name it
        ("models", (".",), "/opt/its/models/"),
    ]
    assert production.one("WORKDIR").args == "/srv/its"
    setup = production.one("RUN").args
    assert "install -d -o its -g its /srv/its/var" in setup
    assert "ln -s /etc/its/config /srv/its/config" in setup  # config/<environment>.yaml
    assert environment["PYTHONDONTWRITEBYTECODE"] == environment["PYTHONUNBUFFERED"] == "1"
    assert environment["PATH"].startswith("/opt/venv/bin:")


def test_production_stage_entrypoint_ports_and_labels(stages: dict[str, Stage]) -> None:
    production = stages["production"]
    environment, _ = stage_variables(production, {"PATH": BASE_IMAGE_PATH})
    entrypoint = production.one("ENTRYPOINT")
    assert exec_form(entrypoint.args, entrypoint.line) == ["its-camera-ai"]
    assert exec_form(production.one("CMD").args, 0) == ["serve", "all"]
    config = yaml.safe_load((REPO / "config" / "production.yaml").read_text())
    assert environment["ITS_ENVIRONMENT"] == config["environment"] == "production"
    exposed = {int(p.split("/")[0]) for p in production.one("EXPOSE").args.split()}
    assert exposed == {config["grpc"]["port"], config["http"]["port"]}
    labels = assignments(production.one("LABEL"), environment)
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    options, command = parse_healthcheck(production.one("HEALTHCHECK"))
    assert set(options) == {"interval", "timeout", "start-period", "retries"}
    assert command[0] == "python"


def test_dockerignore_lets_in_what_is_copied_and_keeps_local_state_out(
    stages: dict[str, Stage], dockerignore: DockerIgnore
) -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()
    for stage in stages.values():
        environment, arguments = stage_variables(stage, {"PATH": BASE_IMAGE_PATH})
        for instruction in stage.all("COPY"):
            copy = parse_copy(instruction, {**environment, **arguments})
            if copy.source_stage is not None:
                assert copy.source_stage in stages, f"line {instruction.line}: no such stage"
                continue
            for source in copy.sources:
                assert (REPO / source).exists(), f"line {instruction.line}: {source} missing"
                inside = [f for f in tracked if f == source or f.startswith(f"{source}/")]
                assert inside, f"line {instruction.line}: {source} holds no tracked file"
                ignored = [f for f in inside if dockerignore.excludes(f)]
                assert not ignored, f"line {instruction.line}: .dockerignore drops {ignored}"
    local_state = [
        ".git/HEAD", ".venv/bin/python", ".venv-xds/pyvenv.cfg", "var/postgres/PG_VERSION",
        "tools/buf/node_modules/@bufbuild/buf/package.json", "clients/node/node_modules/x.js",
        "src/its_camera_ai/__pycache__/cli.cpython-311.pyc", "src/its_camera_ai.egg-info/PKG-INFO",
        "clients/python/its_camera_ai_client.egg-info/PKG-INFO", ".pytest_cache/v/x", ".coverage",
        "its_camera_ai.egg-info/PKG-INFO", "tests/conftest.py", "docs/architecture.md",
    ]  # fmt: skip
    assert [p for p in local_state if not dockerignore.excludes(p)] == []


def copy_from_context(copy: Copy, destination: Path, dockerignore: DockerIgnore) -> None:
    """COPY from the build context: a directory's contents, minus what .dockerignore drops."""
    for source in copy.sources:
        origin = REPO / source
        files = [origin] if origin.is_file() else sorted(origin.rglob("*"))
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if not file.is_file() or dockerignore.excludes(relative):
                continue
            if origin.is_file():
                target = destination / file.name if copy.destination.endswith("/") else destination
            else:
                target = destination / file.relative_to(origin)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def map_paths(text: str, root: Path) -> str:
    return IMAGE_PATH.sub(lambda match: f"{root}{match[1]}", text)


def run_builder(stage: Stage, root: Path, dockerignore: DockerIgnore) -> None:
    """The builder's steps in order; RUN lines as Docker runs them, in /bin/sh -c."""
    shim = root / "shim"  # `python` is the base image's interpreter (3.11) before the venv
    shim.mkdir(parents=True)
    (shim / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    host = {"HOME": str(root), "LANG": "C.UTF-8"}
    packages_offline = {
        # No pip configuration of this machine, no index: the wheelhouse stands in for the
        # PyTorch CPU index and PyPI alike (an --extra-index-url is ignored with no index).
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(WHEELHOUSE),
        # Bytecode is only a cache: compiling torch's would double the CPU this test takes.
        "PIP_NO_COMPILE": "1",
    }
    variables: dict[str, str] = {"PATH": f"{shim}:{os.environ['PATH']}"}
    workdir = root
    for step in stage.instructions:
        if step.keyword in ("ARG", "ENV"):
            new = assignments(step, variables)
            variables.update({key: map_paths(value, root) for key, value in new.items()})
        elif step.keyword == "WORKDIR":
            workdir = Path(map_paths(expand(step.args, variables, step.line), root))
            assert workdir.is_relative_to(root), f"line {step.line}: WORKDIR outside {root}"
            workdir.mkdir(parents=True, exist_ok=True)
        elif step.keyword == "COPY":
            copy = parse_copy(step, variables)
            assert copy.source_stage is None, f"line {step.line}: the builder copies from {copy}"
            destination = workdir / map_paths(copy.destination, root)
            assert destination.resolve().is_relative_to(root), f"line {step.line}: outside root"
            copy_from_context(copy, destination, dockerignore)
        elif step.keyword == "RUN":
            command = ["/bin/sh", "-c", map_paths(step.args, root)]
            result = run(command, {**host, **variables, **packages_offline}, workdir)
            assert result.returncode == 0, (
                f"line {step.line} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                f"\n(a missing package? refresh the wheelhouse: {FILL_WHEELHOUSE})"
            )
        else:
            raise DockerfileError(f"line {step.line}: {step.keyword} in the builder stage")


@dataclass
class BuiltImage:
    root: Path  # the image's / for the paths the recipe writes
    environment: dict[str, str]  # the production stage's ENV, paths mapped
    workdir: Path


@pytest.fixture(scope="module")
def built(stages: dict[str, Stage], dockerignore: DockerIgnore) -> Iterator[BuiltImage]:
    """The builder stage run into a temporary root: a clean install, about 60 s of CPU."""
    if not any(WHEELHOUSE.glob("torch-*.whl")):
        pytest.fail(f"no wheelhouse at {WHEELHOUSE}: fill it first with `{FILL_WHEELHOUSE}`")
    root = Path(tempfile.mkdtemp(prefix="its-image-"))
    try:
        run_builder(stages["builder"], root, dockerignore)
        image_env, _ = stage_variables(stages["production"], {"PATH": os.environ["PATH"]})
        workdir = root / "srv" / "its"
        (workdir / "var" / "cache").mkdir(parents=True)
        environment = {key: map_paths(value, root) for key, value in image_env.items()}
        yield BuiltImage(root, {"HOME": str(workdir), "LANG": "C.UTF-8", **environment}, workdir)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_builder_installs_the_command_model_and_stubs(built: BuiltImage) -> None:
    venv = built.root / "opt" / "venv"
    # A clean install: nothing of this machine's site-packages shows through.
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    help_text = run(["its-camera-ai", "--help"], built.environment, built.workdir)
    assert help_text.returncode == 0, help_text.stderr
    assert "serve" in help_text.stdout
    # Every generated stub module, and the client distribution's packages.
    clients = REPO / "clients" / "python"
    modules = sorted(
        ".".join(p.relative_to(clients).with_suffix("").parts)
        for p in [*clients.glob("its/**/*_pb2*.py"), *clients.glob("*/__init__.py")]
    )
    probe = (
        "import importlib, its_camera_ai\n"
        "from its_camera_ai.common import InferenceSettings\n"
        "from its_camera_ai.inference.models import (\n"
        "    ITS_DETECTOR_MANIFEST, SHIPPED_MODELS, load_model)\n"
        f"for name in {modules!r}: importlib.import_module(name.removesuffix('.__init__'))\n"
        "assert InferenceSettings().model in SHIPPED_MODELS\n"
        "for model in SHIPPED_MODELS: load_model(model)\n"
        "print(its_camera_ai.__file__, ITS_DETECTOR_MANIFEST)\n"
    )
    shown = run(["python", "-c", probe], built.environment, built.workdir)
    assert shown.returncode == 0, shown.stderr
    package, manifest = (Path(p) for p in shown.stdout.split())
    assert package.is_relative_to(venv)
    assert manifest.is_relative_to(venv)
    shipped = REPO / "src" / "its_camera_ai" / "inference" / "models"
    # Every shipped model's weights, manifest and licence, as in the repository.
    for path in shipped.iterdir():
        if path.suffix in (".pt", ".json", ".LICENSE"):
            assert (manifest.parent / path.name).read_bytes() == path.read_bytes(), path.name


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVICE_START_WITHIN_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the service exited with {process.returncode}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {SERVICE_START_WITHIN_S} s")


def test_healthcheck_passes_while_the_service_runs_and_fails_after(
    built: BuiltImage, stages: dict[str, Stage], postgres_dsn: str
) -> None:
    production = stages["production"]
    _, probe = parse_healthcheck(production.one("HEALTHCHECK"))
    entrypoint, cmd = production.one("ENTRYPOINT"), production.one("CMD")
    http_port = free_port()
    environment = {
        **built.environment,
        # dev: production wants TLS files, a metrics token and its collector; the probe and
        # the HTTP side port are the same in every environment.
        "ITS_ENVIRONMENT": "dev",
        "ITS_GRPC__HOST": "127.0.0.1",
        "ITS_GRPC__PORT": str(free_port()),
        "ITS_GRPC__DRAIN_SECONDS": "1",
        "ITS_HTTP__HOST": "127.0.0.1",
        "ITS_HTTP__PORT": str(http_port),
        "ITS_DATABASE__DSN": postgres_dsn,
        "ITS_LOGGING__LEVEL": "WARNING",
    }
    command = exec_form(entrypoint.args, entrypoint.line) + exec_form(cmd.args, cmd.line)
    service = subprocess.Popen(command, env=environment, cwd=built.workdir)
    try:
        wait_for_port(http_port, service)
        assert run(probe, environment, built.workdir).returncode == 0
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0
        assert run(probe, environment, built.workdir).returncode == 1
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
