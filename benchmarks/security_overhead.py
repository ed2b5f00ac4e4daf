"""What security costs a call: authenticated TLS 1.3 calls against plaintext anonymous ones.

    .venv/bin/python benchmarks/security_overhead.py               # ~4.5 min
    .venv/bin/python benchmarks/security_overhead.py --quick       # smoke run, ~1 min
    .venv/bin/python benchmarks/security_overhead.py --markdown out.md --keep-logs

Options: ``--rounds`` per row, ``--slice``/``--warmup`` seconds per slice, ``--dsn`` (admin
database), ``--keep-logs`` (the servers' logs stay in the temporary directory; they always
do when the run fails).

What it does, in order (a progress line on stderr shows the run with its ETA):

1. A fresh PostgreSQL database (core and analytics migrations) holding 25 h of 900 s
   camera bins of 4 cameras; dev certificates (``mint_dev_certificates``, EC P-256) and a
   JWT issuer (``TokenIssuer``, ES256) in a temporary directory.
2. Three ``its-camera-ai serve query`` processes on loopback against that database (no
   Redis, no decoder: the query service accepts cameras with recorded data), configured
   by ``ITS_*`` variables over an empty config file (no ``config/*.yaml``: no rate limits,
   no tracing, the same settings but for security):
   A: dev, plaintext, anonymous callers (admin in dev): the baseline;
   S: staging, TLS 1.3 (``GRPC_SSL_CIPHER_SUITES`` in its environment, as ``serve`` would
   set it by re-executing itself), JWTs from the issuer's JWKS file, API keys, anonymous
   ``none``. Variant B calls it with a viewer JWT, C with a viewer API key that an admin
   JWT created through ``AdminService.CreateApiKey``;
   P: staging, plaintext, JWT: variant D, which splits B's cost into TLS and credential.
3. Rows: ``GetTrafficCounts`` of one camera, the last hour in 15 min bins ("cheap", 4
   bins), at 100 callers and at 1; and the last 24 h in 15 min bins ("typical", 96 bins,
   one of the 4 cameras per call) at 100 callers. Both are answered from the query
   cache's L1 after the first call (the request bytes never change), so a row measures
   gRPC, the interceptors and the transport, not the database.
4. Per row, one client process (grpc.aio) holds min(C, 16) connections to each variant's
   server (TCP and TLS handshakes done before any clock starts), checks each variant's
   answers, warms each with 0.5 s of calls, then runs ``--rounds`` rounds of one slice per
   variant, each round starting one variant later (A B C D, B C D A, ...): C callers back
   to back with the credential as call metadata (``authorization: Bearer`` or
   ``x-api-key``), ``--warmup`` seconds discarded, then ``--slice`` seconds measured.
   Slices of a few seconds, in turn, put every variant under the same drift of this
   shared machine (other tenants' load moves req/s by +-30 % within a minute).

Figures per variant and row: req/s (answered calls inside the measured parts, over their
time) and each slice's range, p50/p99 ms (client side, call issued to answer held),
errors (any fails the row), req/s and p99 against A, the throughput cost (1 - variant / A)
pooled and per round (against A's slice of the same round: median and range), server CPU
(/proc) and client CPU (its process time) µs per answered call: the server process is
what limits throughput here, and its CPU per call moves less with other tenants' load
than req/s. Target (the issue): at 100 concurrent, B and C cost at most 15 % of A's
throughput, without errors.

Size: one script (data, servers, client, report) like the other benchmarks; what it shares
with query_service.py (processes, progress line, database, report head) is in _harness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _harness as harness
import asyncpg
import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from its.admin.v1 import admin_service_pb2, admin_service_pb2_grpc, api_key_pb2
from its.common.v1 import time_range_pb2
from its.query.v1 import query_service_pb2
from its_camera_ai.analytics import UPSERT_BIN, BinKey, BinRecord, ObjectClass, Scope, bin_row
from its_camera_ai.scene import Direction
from its_camera_ai.security import mint_dev_certificates
from its_camera_ai.testing import TokenIssuer

_NS = 1_000_000_000
_QUARTER_NS = 900 * _NS
_CAMERAS = ("cam-01", "cam-02", "cam-03", "cam-04")
_COUNTS = "/its.query.v1.QueryService/GetTrafficCounts"
_MAX_CHANNELS = 16
_CALL_TIMEOUT_S = 30.0
_CLIENT_START_S = 1.5  # a client process's imports and connections, for the ETA
# What `serve` puts in its environment for TLS 1.3 (security/_tls.py, enforce_tls13).
_TLS13_SUITES = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
_SELF = Path(__file__).resolve()
_VARIANTS = {
    "A": "plaintext, anonymous (dev)",
    "B": "TLS 1.3 + JWT",
    "C": "TLS 1.3 + API key",
    "D": "plaintext + JWT",
}
_SERVER_OF = {"A": "A", "B": "S", "C": "S", "D": "P"}
_RPCS = {"cheap": "GetTrafficCounts 1 h / 4 bins", "typical": "GetTrafficCounts 24 h / 96 bins"}
_QUARTERS = {"cheap": 4, "typical": 96}  # 15 min bins of each RPC's answer
_ROWS = (("cheap", 100), ("typical", 100), ("cheap", 1))


# -- the database ------------------------------------------------------------------------------


async def _seed(dsn: str, end_ns: int) -> int:
    """Migrations, then 25 h of 900 s camera bins (cars and trucks) up to ``end_ns``."""
    await harness.apply_schema(dsn)
    rows, now_ns = [], time.time_ns()
    for i, camera in enumerate(_CAMERAS):
        for start in range(end_ns - 100 * _QUARTER_NS, end_ns, _QUARTER_NS):
            busy = 7 <= (start // (3600 * _NS)) % 24 <= 19
            for cls, share in ((ObjectClass.CAR, 0.85), (ObjectClass.TRUCK, 0.15)):
                key = BinKey(camera, Scope.CAMERA, "", cls, Direction.LEFT_TO_RIGHT, start, 900)
                volume = round(share * (60 + 20 * i + 240 * busy))
                final = start + _QUARTER_NS <= now_ns
                rows.append(bin_row(BinRecord(key=key, final=final, volume=volume)))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(UPSERT_BIN, rows)
    finally:
        await conn.close()
    return len(rows)


# -- the client: one row -----------------------------------------------------------------------


def _requests(rpc: str, end_ns: int) -> list[bytes]:
    """The distinct serialised requests of a row (the same bytes in every run: cached)."""
    quarters = _QUARTERS[rpc]
    span = time_range_pb2.TimeRange(
        start_time=timestamp_pb2.Timestamp(seconds=(end_ns - quarters * _QUARTER_NS) // _NS),
        end_time=timestamp_pb2.Timestamp(seconds=end_ns // _NS),
    )
    cameras = _CAMERAS[:1] if rpc == "cheap" else _CAMERAS
    return [
        query_service_pb2.GetTrafficCountsRequest(
            camera=f"cameras/{camera}", time_range=span, bin_size=duration_pb2.Duration(seconds=900)
        ).SerializeToString()
        for camera in cameras
    ]


@dataclasses.dataclass
class Tally(harness.Measured):
    """One variant's slices in a row, as the client counted them."""

    variant: str
    rpc: str
    concurrency: int
    check: str = ""
    calls: int = 0  # answered inside the measured part of a slice
    seconds: float = 0.0  # measured, over the slices
    completed: int = 0  # every answered call of the slices (the CPU per call divides by it)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    idle_cpu_s: float = 0.0  # the other servers, during this variant's slices
    wall_s: float = 0.0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    rates: list[float] = dataclasses.field(default_factory=list)  # req/s of each round's slice
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")


class Target:
    """A variant as the client calls it: min(C, 16) channels to its server, credential."""

    def __init__(self, spec: dict[str, Any], concurrency: int) -> None:
        address = f"127.0.0.1:{spec['port']}"
        options = [("grpc.use_local_subchannel_pool", 1)]  # each channel its own connection
        count = min(concurrency, _MAX_CHANNELS)
        if spec["ca"] is None:
            self.channels = [
                grpc.aio.insecure_channel(address, options=options) for _ in range(count)
            ]
        else:
            tls = grpc.ssl_channel_credentials(root_certificates=Path(spec["ca"]).read_bytes())
            self.channels = [
                grpc.aio.secure_channel(address, tls, options=options) for _ in range(count)
            ]
        self.stubs: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
            channel.unary_unary(_COUNTS) for channel in self.channels
        ]
        self.metadata = tuple((key, value) for key, value in spec["metadata"])
        self.pid: int = spec["pid"]

    async def check(self, requests: list[bytes], bins: int) -> tuple[str, bool]:
        """Connect (TLS handshakes before any clock starts), then one call per request:
        what the answers hold, and whether each has ``bins`` bins and some traffic."""
        for channel in self.channels:
            await asyncio.wait_for(channel.channel_ready(), 10)
        try:
            answers = [
                await self.stubs[0](r, metadata=self.metadata, timeout=_CALL_TIMEOUT_S)
                for r in requests
            ]
        except grpc.aio.AioRpcError as exc:
            return f"check failed: {exc.code().name}: {exc.details()}", False
        series = [query_service_pb2.GetTrafficCountsResponse.FromString(a).bins for a in answers]
        volume = sum(b.volume for answer in series for b in answer)
        ok = volume > 0 and all(len(answer) == bins for answer in series)
        return f"{len(series)} x {len(series[0])} bins, {volume} vehicles, {len(answers[0])} B", ok

    async def run(self, requests: list[bytes], concurrency: int, warmup_s: float,
                  seconds: float, latencies: list[int], errors: dict[str, int]
                  ) -> tuple[int, int]:  # fmt: skip
        """C callers back to back for ``warmup_s`` + ``seconds``: (calls answered inside
        the measured part, calls answered in all); latencies and errors of the measured
        part are added to the lists given."""
        measure_from = time.perf_counter_ns() + int(warmup_s * _NS)
        end = measure_from + int(seconds * _NS)
        counts = [0, 0]

        async def caller(i: int) -> None:
            stub, n = self.stubs[i % len(self.stubs)], i
            while (started := time.perf_counter_ns()) < end:
                n += 1
                try:
                    await stub(
                        requests[n % len(requests)], metadata=self.metadata,
                        timeout=_CALL_TIMEOUT_S,
                    )  # fmt: skip
                except grpc.aio.AioRpcError as exc:
                    if started >= measure_from:
                        errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    continue
                done = time.perf_counter_ns()
                counts[1] += 1
                if started >= measure_from and done <= end:
                    counts[0] += 1
                    latencies.append(done - started)

        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        return counts[0], counts[1]


async def _client(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every variant of one row, in slices: a check and an unmeasured slice each, then
    ``rounds`` rounds of one slice per variant, each round starting one variant later."""
    rpc, concurrency = spec["rpc"], spec["concurrency"]
    requests = _requests(rpc, spec["end_ns"])
    targets = {v: Target(t, concurrency) for v, t in spec["targets"].items()}
    tallies = {v: Tally(v, rpc, concurrency) for v in targets}
    latencies: dict[str, list[int]] = {v: [] for v in targets}
    for variant, target in targets.items():
        tallies[variant].check, ok = await target.check(requests, _QUARTERS[rpc])
        if not ok:
            tallies[variant].errors["CHECK"] = 1
        await target.run(requests, concurrency, 0.5, 0.0, [], {})  # warms both ends
    variants, pids = list(targets), {t.pid for t in targets.values()}
    for round_ in range(spec["rounds"]):
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            target, tally = targets[variant], tallies[variant]
            others = pids - {target.pid}
            server, idle = harness.cpu_seconds([target.pid]), harness.cpu_seconds(others)
            client = time.process_time()
            started = time.monotonic()
            calls, completed = await target.run(
                requests, concurrency, spec["warmup_s"], spec["slice_s"], latencies[variant],
                tally.errors,
            )  # fmt: skip
            tally.wall_s += time.monotonic() - started
            tally.server_cpu_s += harness.cpu_seconds([target.pid]) - server
            tally.idle_cpu_s += harness.cpu_seconds(others) - idle
            tally.client_cpu_s += time.process_time() - client
            tally.calls, tally.completed = tally.calls + calls, tally.completed + completed
            tally.seconds += spec["slice_s"]
            tally.rates.append(calls / spec["slice_s"])
    for target in targets.values():
        for channel in target.channels:
            await channel.close()
    for variant, tally in tallies.items():
        ordered = sorted(latencies[variant])
        tally.p50_ms = harness.percentile(ordered, 0.5) / 1e6
        tally.p99_ms = harness.percentile(ordered, 0.99) / 1e6
    return [dataclasses.asdict(t) for t in tallies.values()]


# -- the orchestrator --------------------------------------------------------------------------


@dataclasses.dataclass
class Bench:
    args: argparse.Namespace
    procs: harness.Processes
    progress: harness.Progress
    tmp: Path
    end_ns: int = 0
    servers: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # port, pid
    tallies: list[Tally] = dataclasses.field(default_factory=list)
    seeded: int = 0


def _server_env(bench: Bench, name: str, grpc_port: int, http_port: int) -> dict[str, str]:
    empty = bench.tmp / "empty.yaml"
    empty.touch()
    env = harness.service_env(bench.args.bench_dsn, grpc_port, http_port)
    env.pop("GRPC_SSL_CIPHER_SUITES", None)
    env.update({
        "ITS_CONFIG_FILE": str(empty), "ITS_ENVIRONMENT": "dev" if name == "A" else "staging",
    })  # fmt: skip
    if name != "A":
        issuer = bench.tmp / "issuer"
        env.update({
            "ITS_SECURITY__ANONYMOUS_ROLE": "none",
            "ITS_SECURITY__JWT__JWKS_FILE": str(issuer / "jwks.json"),
            "ITS_SECURITY__JWT__ISSUER": "https://issuer.test",
            "ITS_SECURITY__JWT__AUDIENCE": "its-camera-ai",
        })  # fmt: skip
    if name == "S":
        certs = bench.tmp / "certs"
        env.update({
            "ITS_SECURITY__TLS__CERT_FILE": str(certs / "server.crt"),
            "ITS_SECURITY__TLS__KEY_FILE": str(certs / "server.key"),
            "GRPC_SSL_CIPHER_SUITES": _TLS13_SUITES,
        })  # fmt: skip
    return env


async def _start_server(bench: Bench, name: str) -> None:
    grpc_port, http_port = harness.free_port(), harness.free_port()
    env = _server_env(bench, name, grpc_port, http_port)
    proc = await bench.procs.spawn(f"server-{name}", harness.service_command(), env)
    await harness.wait_http_ready(bench.procs, f"server-{name}", proc, http_port)
    bench.servers[name] = (grpc_port, proc.pid)


async def _create_api_key(port: int, ca: bytes, admin_jwt: str) -> str:
    """A viewer key, made as an operator would: CreateApiKey with an admin's JWT."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        reply = await admin_service_pb2_grpc.AdminServiceStub(channel).CreateApiKey(
            admin_service_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_VIEWER, display_name="bench"),
                api_key_id="security-bench",
            ),
            metadata=(("authorization", f"Bearer {admin_jwt}"),),
            timeout=10,
        )
    return reply.secret


async def _run_client(spec: dict[str, Any]) -> list[Tally]:
    """One row in a fresh client process; the spec (credentials too) goes on its stdin."""
    what = f"client {spec['rpc']} c={spec['concurrency']}"
    last = await harness.run_child(
        [sys.executable, str(_SELF), "--client"], what, json.dumps(spec).encode()
    )
    return [Tally(**t) for t in json.loads(last)]


async def _run(bench: Bench) -> None:
    args, tmp = bench.args, bench.tmp
    bench.progress.begin("database, certificates, JWT issuer")
    bench.end_ns = -(-time.time_ns() // _QUARTER_NS) * _QUARTER_NS  # the next 15 min boundary
    bench.seeded = await _seed(args.bench_dsn, bench.end_ns)
    certs = mint_dev_certificates(tmp / "certs")
    issuer = TokenIssuer.create(tmp / "issuer")
    bench.progress.begin("start servers A (dev), S (TLS + JWT), P (JWT)")
    for name in ("A", "S", "P"):
        await _start_server(bench, name)
    viewer = issuer.mint("security-bench", "viewer", lifetime_s=3 * 3600)
    secret = await _create_api_key(
        bench.servers["S"][0], certs.ca_cert.read_bytes(), issuer.mint("bench-admin", "admin")
    )
    bearer = [("authorization", f"Bearer {viewer}")]
    metadata = {"A": [], "B": bearer, "C": [("x-api-key", secret)], "D": bearer}
    targets = {
        v: {"port": bench.servers[_SERVER_OF[v]][0], "pid": bench.servers[_SERVER_OF[v]][1],
            "ca": str(certs.ca_cert) if v in ("B", "C") else None, "metadata": metadata[v]}
        for v in _VARIANTS
    }  # fmt: skip
    for rpc, concurrency in _ROWS:
        bench.progress.begin(f"{_RPCS[rpc]}, c={concurrency}: {args.rounds} rounds of A B C D")
        bench.tallies += await _run_client({
            "rpc": rpc, "concurrency": concurrency, "end_ns": bench.end_ns,
            "rounds": args.rounds, "slice_s": args.slice, "warmup_s": args.warmup,
            "targets": targets,
        })  # fmt: skip
    bench.progress.begin("stop")


# -- the report --------------------------------------------------------------------------------

Cells = dict[tuple[str, str, int], Tally]


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _costs(cell: Tally, base: Tally) -> list[float]:
    """Throughput cost of each round: against A's slice of the same round."""
    return [1 - v / a for v, a in zip(cell.rates, base.rates, strict=False) if a]


def _cpu_us(t: Tally, seconds: float) -> float:
    return seconds / t.completed * 1e6 if t.completed else float("nan")


def _tables(cells: Cells) -> list[str]:
    lines = []
    for variant, label in _VARIANTS.items():
        lines += [
            f"### {variant}: {label}", "",
            "| RPC | concurrency | req/s | slices' req/s | p50 ms | p99 ms | errors | req/s vs A"
            " | throughput cost | per round: median (range) | p99 vs A | server CPU µs/call"
            " | server CPU vs A | client CPU µs/call |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]  # fmt: skip
        for rpc, c in _ROWS:
            cell, base = cells.get((variant, rpc, c)), cells.get(("A", rpc, c))
            if cell is None or base is None:
                continue
            ratio = cell.rate / base.rate if base.rate else float("nan")
            costs = _costs(cell, base)
            cpu, base_cpu = _cpu_us(cell, cell.server_cpu_s), _cpu_us(base, base.server_cpu_s)
            lines.append(
                f"| {_RPCS[rpc]} | {c} | {cell.rate:.0f}"
                f" | {min(cell.rates):.0f}-{max(cell.rates):.0f} | {cell.p50_ms:.2f}"
                f" | {cell.p99_ms:.2f} | {cell.error_count} | {ratio:.2f}"
                f" | {100 * (1 - ratio):.1f} % | {100 * _median(costs):.1f} %"
                f" ({100 * min(costs):.0f} to {100 * max(costs):.0f} %)"
                f" | {cell.p99_ms / base.p99_ms:.2f} | {cpu:.0f}"
                f" | {100 * (cpu / base_cpu - 1):+.1f} % | {_cpu_us(cell, cell.client_cpu_s):.0f} |"
            )
        lines.append("")
    return lines


def _verdict(cells: Cells) -> list[str]:
    lines, ok = [], True
    for variant in ("B", "C"):
        for rpc, c in _ROWS:
            cell, base = cells.get((variant, rpc, c)), cells.get(("A", rpc, c))
            if c != 100 or cell is None or base is None:
                continue
            cost = 1 - cell.rate / base.rate
            passed = cost <= 0.15 and cell.error_count == 0 and base.error_count == 0
            ok &= passed
            lines.append(
                f"- {variant} ({_VARIANTS[variant]}), {_RPCS[rpc]}: throughput cost"
                f" {100 * cost:.1f} % (median of the rounds {100 * _median(_costs(cell, base)):.1f}"
                f" %), {cell.error_count} errors: {'PASS' if passed else 'FAIL'}"
            )
    head = "**PASS**" if ok else "**FAIL**"
    return [f"Target: throughput cost <= 15 % at 100 concurrent with cached keys: {head}", "",
            *lines]  # fmt: skip


def _where(cells: Cells) -> list[str]:
    """Server CPU per call, split: credential (D - A), TLS (B - D), API key vs JWT (C - B)."""
    lines = []
    for rpc, c in _ROWS:
        cpu = {v: _cpu_us(cells[v, rpc, c], cells[v, rpc, c].server_cpu_s)
               for v in _VARIANTS if (v, rpc, c) in cells}  # fmt: skip
        if len(cpu) == len(_VARIANTS):
            lines.append(
                f"- {_RPCS[rpc]}, c={c}: A {cpu['A']:.0f} µs; credential (D - A)"
                f" {cpu['D'] - cpu['A']:+.0f} µs; TLS (B - D) {cpu['B'] - cpu['D']:+.0f} µs;"
                f" API key instead of JWT (C - B) {cpu['C'] - cpu['B']:+.0f} µs"
            )
    return lines


def _report(bench: Bench, elapsed_s: float) -> str:
    args = bench.args
    cells = {(t.variant, t.rpc, t.concurrency): t for t in bench.tallies}
    checks = {f"{_RPCS[t.rpc]}: {t.check}" for t in bench.tallies}
    errors = [f"- errors, {t.variant} {_RPCS[t.rpc]} c={t.concurrency}: {t.errors}"
              for t in bench.tallies if t.errors]  # fmt: skip
    idle = max((100 * t.idle_cpu_s / t.wall_s for t in bench.tallies if t.wall_s), default=0)
    title = (
        "## Security overhead: TLS 1.3 + JWT / API key against plaintext anonymous"
        " (`benchmarks/security_overhead.py`)"
    )
    return "\n".join([
        *harness.report_head(title, _SELF, elapsed_s),
        f"Per row one client process, min(C, {_MAX_CHANNELS}) connections per variant;"
        f" {args.rounds} rounds of one slice per variant ({args.warmup:g} s discarded, then"
        f" {args.slice:g} s measured), each round starting one variant later. {bench.seeded}"
        f" bins seeded. The idle servers used {idle:.1f} % of a core at most.", "",
        "The RPC: QueryService.GetTrafficCounts, the cheapest authenticated read that returns"
        " OK: after the first call the query cache's L1 answers it (a lookup on the request's"
        " bytes, no database), so the security cost is not hidden behind a query; 4 bins"
        " (cheap) and 96 bins (a dashboard's 24 h).", "",
        *_tables(cells), *_verdict(cells), "",
        "Server CPU per call, where it goes (D: plaintext + JWT, a staging server):", "",
        *_where(cells), "", "What the answers held, and errors:", "",
        *sorted(f"- {c}" for c in checks), *errors,
    ]).rstrip() + "\n"  # fmt: skip


# -- entry points ------------------------------------------------------------------------------


async def _orchestrate(args: argparse.Namespace) -> str:
    """Run everything; the session cleans up (processes, database, files) whatever happens."""
    per_row = _CLIENT_START_S + len(_VARIANTS) * (0.6 + args.rounds * (args.warmup + args.slice))
    plan = [8.0, 12.0, *[per_row] * len(_ROWS), 3.0]
    async with harness.open_session(
        args.dsn, "security", plan, keep_files=args.keep_logs, label_width=44
    ) as run:
        args.bench_dsn = run.dsn
        bench = Bench(args, run.procs, run.progress, run.tmp)
        await _run(bench)
        return _report(bench, time.monotonic() - run.started)


def _arguments() -> argparse.Namespace:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s slices")
    parser.add_argument("--rounds", type=int, help="rounds of the variants per row (default 8)")
    parser.add_argument("--slice", type=float, help="measured seconds per slice (default 2)")
    parser.add_argument("--warmup", type=float, help="seconds discarded per slice (default 0.25)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 8)
    args.slice = args.slice or (1.0 if args.quick else 2.0)
    args.warmup = 0.25 if args.warmup is None else args.warmup
    return args


def main() -> None:
    args = _arguments()
    if args.client:
        print(json.dumps(asyncio.run(_client(json.loads(sys.stdin.read())))))
        return
    harness.run_and_report(_orchestrate(args), args.markdown)


if __name__ == "__main__":
    main()
