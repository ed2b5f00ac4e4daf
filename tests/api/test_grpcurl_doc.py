"""docs/grpcurl.md works: every grpcurl line of it, replayed in order against real servers.

The replayer is a reflection-only grpcurl: it knows no generated code. Services, methods and
message types come from each server's reflection API (``ProtoReflectionDescriptorDatabase``),
requests are built from the ``-d`` JSON with ``json_format`` and sent as raw bytes over
generic channel calls (unary, server streams ended by ``-max-time``, client streams). It
reads the page's shell as a shell would (quotes, ``$VAR`` in double quotes and unquoted,
line continuations, here-documents) and refuses a flag, a construct or a variable it does
not know, so the page cannot use one it would skip. A ``text`` block right after a command
is that command's output: ``ERROR:`` / ``Code: X`` is the status the command must end
with, a ``list`` listing must be exact, JSON must parse as the response type.

Two hosts with every unit: a dev host (plaintext, anonymous callers are admin) at ``$DEV``
and an mTLS host (client certificates required, JWTs, traffic with a wrong-way driver
streamed into analytics for ``$CAMERA``) at ``$ITS``. ``$TOKEN`` is, per command, a token
with the least role the method's access rule names, so the page's roles are tested too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import asyncpg
import av
import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from its.camera.v1 import camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.analytics import EventType
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import (
    EgressSettings,
    InferenceSettings,
    QueryServiceSettings,
    ServiceHost,
    Settings,
)
from its_camera_ai.decoder.server import decoder_unit
from its_camera_ai.inference.server import inference_unit
from its_camera_ai.query.server import UNIT as QUERY_UNIT
from its_camera_ai.security import ACCESS, DevCertificates, mint_dev_certificates
from its_camera_ai.testing import TokenIssuer, sim_frames
from tests.analytics import synth
from tests.analytics.test_service_support import camera_proto, recent_start_ns, stream, to_batches
from tests.api._contract import REPO
from tests.conftest import POSTGRES_ADMIN_DSN, REDIS_URL
from tests.security.conftest import mtls_security, secure_settings

DOC = REPO / "docs" / "grpcurl.md"
CAMERA = "a4-km12-nb"
_TOKEN = "\x00token\x00"  # stands for $TOKEN until the command's method is known
_VALUE_FLAGS = {"-cacert", "-cert", "-key", "-H", "-d", "-max-time"}
_BOOL_FLAGS = {"-plaintext"}
_ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


# -- the page's shell --------------------------------------------------------------------


@dataclass
class Command:
    words: list[str]
    stdin: str | None  # a here-document's body
    output: str | None = None  # the ``text`` block shown after it


@dataclass
class ShellReader:
    """The shell subset the page may use: words, quotes, variables, ``\\`` continuations,
    ``#`` comments, ``NAME=...`` definitions (recorded, not run) and here-documents."""

    env: dict[str, str]
    defined: set[str] = field(default_factory=set)

    def expand(self, text: str) -> str:
        if "$(" in text or "`" in text:
            raise AssertionError(f"command substitution is not replayed: {text!r}")

        def value(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            assert name in self.defined, f"${name} is used before the page defines it"
            assert name in self.env, f"${name} has no value in the replayer"
            return self.env[name]

        return _VARIABLE.sub(value, text)

    def commands(self, block: str) -> list[Command]:
        lines = block.split("\n")
        commands: list[Command] = []
        while lines:
            line = lines.pop(0)
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if _ASSIGNMENT.match(line):
                self.defined.add(line.split("=", 1)[0])
                continue
            while line.endswith("\\") or not _quotes_closed(line):
                line = (line[:-1] + " " if line.endswith("\\") else line + "\n") + lines.pop(0)
            commands.append(self._command(line, lines))
        return commands

    def _command(self, line: str, rest: list[str]) -> Command:
        words, heredoc = self._words(line)
        stdin = None
        if heredoc is not None:
            delimiter, literal = heredoc
            body = []
            while (next_line := rest.pop(0)) != delimiter:
                body.append(next_line)
            text = "\n".join(body) + "\n"
            stdin = text if literal else self.expand(re.sub(r"\\([$`\\])", r"\1", text))
        return Command(words, stdin)

    def _words(self, line: str) -> tuple[list[str], tuple[str, bool] | None]:
        lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;<>()")
        lexer.whitespace_split = True
        heredoc: tuple[str, bool] | None = None
        words: list[str] = []
        raw = _raw_words(line)
        posix = list(lexer)
        assert len(raw) == len(posix), f"quoting the replayer cannot follow: {line!r}"
        for index, word in enumerate(posix):
            if word in ("<<",):
                delimiter = raw[index + 1]
                heredoc = (delimiter.strip("'\""), delimiter[0] in "'\"")
                break
            if word and set(word) <= set("|&;<>()"):
                raise AssertionError(f"shell operator {word!r} is not replayed: {line!r}")
            words.append(self.expand(word) if _expands(raw[index]) else word)
        return words, heredoc


def _quotes_closed(line: str) -> bool:
    try:
        shlex.split(line.split("<<", maxsplit=1)[0])
    except ValueError:  # "No closing quotation": the word goes on on the next line
        return False
    return True


def _raw_words(line: str) -> list[str]:
    """The words as written (quotes kept): whether a word expands depends on its quotes."""
    lexer = shlex.shlex(line, posix=False, punctuation_chars="|&;<>()")
    lexer.whitespace_split = True
    return list(lexer)


def _expands(raw: str) -> bool:
    """Variables expand outside single quotes (the page never mixes quotes in one word)."""
    return not raw.startswith("'")


def doc_commands(env: dict[str, str]) -> list[Command]:
    """The page's commands in order, each with the output block that follows it."""
    reader = ShellReader(env)
    commands: list[Command] = []
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", DOC.read_text(encoding="utf-8"), re.M | re.S)
    for language, body in blocks:
        if language == "sh":
            commands += reader.commands(body)
        elif language == "text":
            assert commands, f"output before any command: {body}"
            assert commands[-1].output is None, f"two outputs for one command: {body}"
            commands[-1].output = body
    return commands


# -- grpcurl ---------------------------------------------------------------------------


@dataclass
class Grpcurl:
    flags: dict[str, str]
    headers: list[tuple[str, str]]
    address: str
    verb: list[str]  # ["list"], ["describe", symbol] or [service/method]


def parse_grpcurl(words: list[str]) -> Grpcurl:
    assert words[0] == "grpcurl", f"not a grpcurl command: {words}"
    flags: dict[str, str] = {}
    headers: list[tuple[str, str]] = []
    args = iter(words[1:])
    positional: list[str] = []
    for word in args:
        if not word.startswith("-") or positional:
            positional.append(word)
        elif word in _BOOL_FLAGS:
            flags[word] = "true"
        elif word in _VALUE_FLAGS:
            value = next(args)
            if word == "-H":
                name, _, header = value.partition(":")
                headers.append((name.strip().lower(), header.strip()))
            else:
                flags[word] = value
        else:
            raise AssertionError(f"grpcurl flag {word} is not replayed (docs/grpcurl.md)")
    return Grpcurl(flags, headers, positional[0], positional[1:])


def open_channel(command: Grpcurl, cwd: Path) -> grpc.Channel:
    flags = command.flags
    if "-plaintext" in flags:
        assert not {"-cacert", "-cert", "-key"} & flags.keys(), "-plaintext with TLS flags"
        return grpc.insecure_channel(command.address)
    assert "-cacert" in flags, "TLS without -cacert trusts the system roots: not replayed"
    assert ("-cert" in flags) == ("-key" in flags), "-cert and -key go together"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(cwd / flags["-cacert"]).read_bytes(),
        private_key=(cwd / flags["-key"]).read_bytes() if "-key" in flags else None,
        certificate_chain=(cwd / flags["-cert"]).read_bytes() if "-cert" in flags else None,
    )
    return grpc.secure_channel(command.address, credentials)


def _messages(data: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a ``-d`` value, one per stream message (grpcurl's format)."""
    decoder, position = json.JSONDecoder(), 0
    while data[position:].strip():
        position += len(data[position:]) - len(data[position:].lstrip())
        message, position = decoder.raw_decode(data, position)
        yield message


@dataclass
class Outcome:
    code: grpc.StatusCode
    responses: list[Message]
    listing: list[str] = field(default_factory=list)
    response_type: Any = None


def run_grpcurl(cmd: Command, cwd: Path, token_for: Callable[[str], str]) -> Outcome:
    command = parse_grpcurl(cmd.words)
    with open_channel(command, cwd) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        if command.verb[0] in ("list", "describe"):
            return Outcome(grpc.StatusCode.OK, [], _discover(pool, channel, command.verb))
        service_name, _, method_name = command.verb[0].partition("/")
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        given = command.flags.get("-d", "{}")
        data = cmd.stdin if given == "@" else given
        assert data is not None, "-d @ without a here-document"
        requests = [json_format.ParseDict(m, request_type()) for m in _messages(data)]
        path = f"/{service_name}/{method_name}"
        metadata = tuple((k, v.replace(_TOKEN, token_for(path))) for k, v in command.headers)
        timeout = float(command.flags["-max-time"]) if "-max-time" in command.flags else None
        if method.server_streaming and not method.client_streaming:
            assert timeout is not None, f"{path} streams until cancelled: give -max-time"
        outcome = _call(channel, method, path, requests, metadata, timeout, response_type)
        outcome.response_type = response_type
        return outcome


def _discover(pool: Any, channel: grpc.Channel, verb: list[str]) -> list[str]:
    if verb == ["list"]:
        return sorted(ProtoReflectionDescriptorDatabase(channel).get_services())
    if verb[0] == "list":
        service = pool.FindServiceByName(verb[1])
        return [method.full_name for method in service.methods]
    for find in (pool.FindServiceByName, pool.FindMessageTypeByName, pool.FindEnumTypeByName):
        try:
            return [find(verb[1]).full_name]
        except KeyError:
            continue
    raise AssertionError(f"describe: {verb[1]} not found by reflection")


def _call(
    channel: grpc.Channel,
    method: Any,
    path: str,
    requests: list[Message],
    metadata: tuple[tuple[str, str | bytes], ...],
    timeout: float | None,
    response_type: Any,
) -> Outcome:
    serialize, parse = (lambda m: m.SerializeToString()), response_type.FromString
    responses: list[Message] = []
    try:
        if method.client_streaming:
            streams = channel.stream_stream(path, serialize, parse)
            responses += streams(iter(requests), metadata=metadata, timeout=timeout)
        elif method.server_streaming:
            (request,) = requests
            answers = channel.unary_stream(path, serialize, parse)
            responses += answers(request, metadata=metadata, timeout=timeout)
        else:
            (request,) = requests
            unary = channel.unary_unary(path, serialize, parse)
            responses.append(unary(request, metadata=metadata, timeout=timeout))
    except grpc.RpcError as error:
        code = error.code()
        # -max-time ending a stream that delivered is how the page ends its watches.
        if not (code is grpc.StatusCode.DEADLINE_EXCEEDED and method.server_streaming):
            return Outcome(code, responses)
        assert responses, f"{path}: nothing arrived before -max-time"
    return Outcome(grpc.StatusCode.OK, responses)


def go_code_name(code: grpc.StatusCode) -> str:
    """grpcurl's (Go's) spelling of a status code: NOT_FOUND is NotFound."""
    return "OK" if code is grpc.StatusCode.OK else code.name.title().replace("_", "")


def check(cmd: Command, outcome: Outcome) -> None:
    where = " ".join(cmd.words)
    output = cmd.output or ""
    if output.startswith("ERROR:"):
        expected = re.search(r"^\s*Code: (\w+)$", output, re.M)
        assert expected, f"an ERROR block without Code: {output}"
        assert go_code_name(outcome.code) == expected.group(1), where
        return
    assert outcome.code is grpc.StatusCode.OK, f"{where}: {outcome.code}"
    if outcome.listing and output:
        assert outcome.listing == output.split(), where
    elif output:
        for shown in _messages(output):
            json_format.ParseDict(shown, outcome.response_type())


# -- the servers -----------------------------------------------------------------------


@dataclass
class Served:
    dev: ServiceHost
    tls: ServiceHost
    issuer: TokenIssuer
    certs: DevCertificates
    event_id: str


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    name = f"its_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _units() -> list[Any]:
    return [decoder_unit(), analytics_unit(), inference_unit(InferenceSettings()), QUERY_UNIT]


def tls_settings(dsn: str, issuer: TokenIssuer, certs: DevCertificates, tmp: Path) -> Settings:
    settings = secure_settings(dsn, issuer, tmp, **mtls_security(certs))
    # The page's camera network, and heartbeats often enough for a 2 s watch.
    egress = EgressSettings(allowed_networks=("10.20.0.0/16",))
    return settings.model_copy(update={
        "decoder": settings.decoder.model_copy(update={"egress": egress}),
        "query": QueryServiceSettings(stream_heartbeat_seconds=0.5),
    })  # fmt: skip


async def seed(host: ServiceHost, issuer: TokenIssuer, certs: DevCertificates, dsn: str) -> str:
    """$CAMERA with 16 s of traffic and a wrong-way driver, through analytics;
    the wrong-way event's id."""
    cert, key = certs.clients["operator"]
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(certs.ca_cert.read_bytes(), key.read_bytes(),
                                     cert.read_bytes()),
        grpc.access_token_call_credentials(issuer.mint("seeder", "admin")),
    )  # fmt: skip
    camera = camera_proto(synth.road_scene())
    camera.display_name, camera.source_uri = "A4 km 12 northbound", "rtsp://10.20.4.11/stream1"
    frames = synth.wrong_way_traffic(16.0, recent_start_ns(16.0))
    async with grpc.aio.secure_channel(f"localhost:{host.grpc_port}", credentials) as channel:
        await camera_service_pb2_grpc.CameraServiceStub(channel).CreateCamera(
            camera_service_pb2.CreateCameraRequest(camera=camera, camera_id=CAMERA)
        )
        # Analytics learns the camera from the decoder's watch: probe with the first frame.
        for attempt in range(100):
            probe = to_batches(frames[:1], f"probe-{attempt}", camera=CAMERA)
            if (await stream(channel, probe))[0].accepted_frames == 1:
                break
            await asyncio.sleep(0.1)
        await stream(channel, to_batches(frames[1:], "inference-0", camera=CAMERA))
    connection = await asyncpg.connect(dsn)
    try:
        event_id: str = await connection.fetchval(
            "SELECT event_id FROM analytics_events WHERE camera_id = $1 AND type = $2",
            CAMERA, int(EventType.WRONG_WAY),
        )  # fmt: skip
    finally:
        await connection.close()
    assert event_id, "the seeded traffic raised no wrong-way event"
    return event_id


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    certs = mint_dev_certificates(tmp_path / "certs")
    issuer = TokenIssuer.create(tmp_path / "issuer")
    async with database() as dev_dsn, database() as tls_dsn:
        dev = ServiceHost(
            Settings(grpc={"host": "127.0.0.1", "port": 0}, http={"host": "127.0.0.1", "port": 0},
                     database={"dsn": dev_dsn}, redis={"url": REDIS_URL},
                     analytics={"spool_dir": tmp_path / "dev-spool"}),
            _units(),
        )  # fmt: skip
        tls = ServiceHost(tls_settings(tls_dsn, issuer, certs, tmp_path), _units())
        await dev.start()
        try:
            await tls.start()
            try:
                yield Served(dev, tls, issuer, certs, await seed(tls, issuer, certs, tls_dsn))
            finally:
                await tls.stop()
        finally:
            await dev.stop()


def _png() -> str:
    rgb = sim_frames(1)[0][0]
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = rgb.shape[1], rgb.shape[0], "rgb24"
    codec.time_base = Fraction(1, 25)
    picture = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    data = b"".join(bytes(p) for p in [*codec.encode(picture), *codec.encode(None)])
    return base64.b64encode(data).decode()


async def test_every_grpcurl_line_of_the_page_does_what_it_says(served: Served) -> None:
    now = datetime.now(UTC)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    env = {
        "DEV": f"localhost:{served.dev.grpc_port}",
        "ITS": f"localhost:{served.tls.grpc_port}",
        "TOKEN": _TOKEN,
        "CAMERA": CAMERA,
        "START": (now - timedelta(hours=1)).strftime(stamp),
        "END": (now + timedelta(minutes=1)).strftime(stamp),
        "NOW": now.strftime(stamp),
        "EVENT": served.event_id,
        "IMAGE": _png(),
    }
    commands = doc_commands(env)
    methods = {c.words[-1] for c in commands if "/" in c.words[-1]}
    assert methods >= {m.lstrip("/") for m in ACCESS}, "the page misses RPCs"

    def token_for(path: str) -> str:
        role = ACCESS[path].role
        return served.issuer.mint(f"{role.name.lower()}-user", role.name.lower())

    def replay() -> None:
        for command in commands:
            check(command, run_grpcurl(command, served.certs.ca_cert.parent.parent, token_for))

    started = time.monotonic()
    await asyncio.to_thread(replay)
    assert time.monotonic() - started < 30
