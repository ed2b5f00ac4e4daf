"""``its-camera-ai loadtest query|cameras|ghz|pipeline``: load through the public API.

Targets: ``--target HOST:PORT``, or ``--up DIR`` (what ``its-camera-ai up`` wrote in its data
directory: every service's address and the token file), else ``127.0.0.1:50051`` (``serve
all``). The exit status is 0 when no call failed, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from its.camera.v1 import camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.client import (
    DEFAULT_TARGET,
    Endpoints,
    add_connection_arguments,
    aio_channel,
    resolve_endpoints,
)
from its_camera_ai.loadtest._generator import LoadPlan, run_load
from its_camera_ai.loadtest._ghz import load_ghz_config
from its_camera_ai.loadtest._pipeline import DEFAULT_CAMERA_SOURCE, PipelineLoad
from its_camera_ai.loadtest._rpcs import GROUPS, RPCS, plan_calls
from its_camera_ai_client import TlsOptions

__all__ = ["loadtest_main"]

_DEFAULT_METRICS = "http://127.0.0.1:8000/metrics"
_SECONDS = re.compile(r"^(\d+(?:\.\d+)?)([smh]?)$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(?:/s)?$")


def _seconds(text: str) -> float:
    match = _SECONDS.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration such as 30, 30s, 5m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _rate(text: str) -> float:
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: calls per second such as 200 or 200/s")
    return float(match.group(1))


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of at least 1")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="its-camera-ai loadtest", description=__doc__)
    modes = parser.add_subparsers(dest="mode", required=True)
    for group, rpcs in GROUPS.items():
        sub = modes.add_parser(group, help=f"a mix of {', '.join(rpcs)}")
        _common(sub)
        sub.add_argument(
            "--concurrency",
            type=_positive,
            default=16,
            help="callers (closed loop) or most calls in flight (open loop)",
        )
        sub.add_argument("--rate", type=_rate, help="open loop: calls per second (200 or 200/s)")
        sub.add_argument("--rpc", action="append", choices=list(RPCS), help="repeat; default: all")
        sub.add_argument("--camera", action="append", help="camera id (repeat; default: listed)")
        sub.add_argument("--connections", type=_positive, default=1, help="TCP connections")
        sub.add_argument("--timeout", type=_seconds, default=10.0, help="per call (default 10)")
    ghz = modes.add_parser("ghz", help="replay ghz config files through this generator")
    _common(ghz)
    ghz.add_argument("configs", nargs="+", type=Path, help="loadtest/ghz/*.json")
    ghz.add_argument("--camera", help="fills ${ITS_CAMERA} (default: the first listed)")
    pipeline = modes.add_parser("pipeline", help="simulated cameras through the frame pipeline")
    _common(pipeline)
    pipeline.add_argument("--cameras", type=_positive, default=1, help="simulated cameras")
    pipeline.add_argument("--source", default=DEFAULT_CAMERA_SOURCE, help="each camera's URI")
    pipeline.add_argument("--metrics", action="append", help=f"/metrics URL (repeat; default"
                          f" from --up, else {_DEFAULT_METRICS})")  # fmt: skip
    pipeline.add_argument("--warmup", type=_seconds, default=10.0, help="seconds (default 10)")
    return parser


def _common(sub: argparse.ArgumentParser) -> None:
    add_connection_arguments(sub, default_target=DEFAULT_TARGET)
    sub.set_defaults(target=None)  # unset: from --up, else the default
    sub.add_argument("--up", type=Path, help="data directory of `its-camera-ai up` (up.json)")
    sub.add_argument("--duration", type=_seconds, default=10.0, help="30, 30s, 5m (default 10)")
    sub.add_argument("--json", type=Path, help="write the report as JSON to this file")


def _endpoints(args: argparse.Namespace) -> Endpoints:
    """Where the services are (``--up``'s up.json, ``--target``, a running ``up`` here, or the
    default), taking ``up``'s credential unless one was given."""
    endpoints = resolve_endpoints(args.target, args.up)
    if args.token is None and args.api_key is None:
        args.token, args.api_key = endpoints.token, endpoints.api_key
    return endpoints


def _tls(args: argparse.Namespace) -> TlsOptions | None:
    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return None
    return TlsOptions(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


async def _list_cameras(args: argparse.Namespace, target: str) -> list[str]:
    channel = aio_channel(target, token=args.token, api_key=args.api_key, tls=_tls(args))
    try:
        stub = camera_service_pb2_grpc.CameraServiceStub(channel)
        answer = await stub.ListCameras(camera_service_pb2.ListCamerasRequest(page_size=100))
    except grpc.aio.AioRpcError as exc:
        raise ValueError(f"--camera: cannot list cameras at {target} ({exc.details()})") from None
    finally:
        await channel.close()
    cameras = [camera.name for camera in answer.cameras]
    if not cameras:
        raise ValueError(f"--camera: {target} has no cameras (add one, or name one)")
    return cameras


async def _rpc_load(args: argparse.Namespace, up: Endpoints) -> dict[str, Any]:
    target = up.query if args.mode == "query" else up.cameras
    cameras = args.camera or await _list_cameras(args, up.cameras)
    plan = LoadPlan(
        target=target,
        calls=plan_calls(args.rpc or GROUPS[args.mode], cameras),
        concurrency=args.concurrency,
        rate=args.rate,
        duration_s=args.duration,
        timeout_s=args.timeout,
        connections=args.connections,
        token=args.token,
        api_key=args.api_key,
        tls=_tls(args),
        label=args.mode,
    )
    report = await run_load(plan)
    print(report.table())
    return report.as_dict()


async def _ghz(args: argparse.Namespace, up: Endpoints) -> dict[str, Any]:
    configs = [load_ghz_config(path) for path in args.configs]
    variables = {"ITS_TOKEN": args.token or ""}
    if any("ITS_CAMERA" in config.placeholders() for config in configs):
        variables["ITS_CAMERA"] = args.camera or (await _list_cameras(args, up.cameras))[
            0
        ].removeprefix("cameras/")
    reports = {}
    for config in configs:
        target = up.query if "QueryService" in config.service else up.cameras
        plan = config.plan(variables, target=target, duration_s=args.duration, tls=_tls(args))
        report = await run_load(plan)
        print(report.table(), end="\n\n")
        reports[config.path.name] = report.as_dict()
    return {"configs": reports}


async def _pipeline(args: argparse.Namespace, up: Endpoints) -> dict[str, Any]:
    http = up.http
    urls = args.metrics or [f"http://{http[s]}/metrics" for s in ("inference", "analytics")
                            if s in http] or [_DEFAULT_METRICS]  # fmt: skip
    async with PipelineLoad(
        up.cameras, urls, source=args.source, token=args.token,
        api_key=args.api_key, tls=_tls(args),
    ) as load:  # fmt: skip
        await load.add(args.cameras)
        await load.wait_attached()
        await asyncio.sleep(args.warmup)
        window = await load.measure(args.duration)
    print(window.line())
    return window.as_dict()


def _failed(report: dict[str, Any]) -> bool:
    if "configs" in report:
        return any(_failed(r) for r in report["configs"].values())
    return bool(report.get("total", {}).get("errors"))


def loadtest_main(argv: Sequence[str]) -> int:
    """``its-camera-ai loadtest ...``; the exit status (0: no call failed)."""
    args = _parser().parse_args(argv)
    run = {"query": _rpc_load, "cameras": _rpc_load, "ghz": _ghz, "pipeline": _pipeline}
    try:
        report = asyncio.run(run[args.mode](args, _endpoints(args)))
    except (ValueError, TimeoutError) as exc:
        print(f"its-camera-ai loadtest: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(f"its-camera-ai loadtest: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if _failed(report) else 0
