"""The checks behind ``scripts/production_health_check.sh``, one endpoint per call.

    health_probe.py endpoints --up-dir DIR       # "grpc HOST:PORT" / "http HOST:PORT" lines
    health_probe.py grpc HOST:PORT [--cacert F --cert F --key F]
    health_probe.py http HOST:PORT [--token T]

Each check prints ``PASS <check>: <detail>`` or ``FAIL <check>: <detail>``; the exit status
is 0 when every check of the call passed, 1 otherwise, 2 for bad arguments.

grpc: ``grpc.health.v1.Health/List`` (every registered service and the server as a whole,
"") must all be SERVING. http: ``/live`` 200; ``/health`` 200 with every dependency "up";
``/metrics`` carries the families of the units the process hosts (read from ``/health``'s
``services``); every certificate in ``tls_certificate_expiry_timestamp_seconds`` lives more
than ``--min-cert-days`` (14).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from its.admin.v1 import admin_service_pb2
from its.analytics.v1 import analytics_service_pb2
from its.camera.v1 import camera_service_pb2
from its.inference.v1 import inference_service_pb2
from its.query.v1 import query_service_pb2
from its_camera_ai.client import read_up_dir

TIMEOUT_S = 5.0
# Families every process exports, then those of each unit, keyed by its gRPC service.
COMMON_FAMILIES = ("grpc_server_handled", "grpc_server_handling_seconds", "process_threads")
UNIT_FAMILIES = {
    "its.camera.v1.CameraService": ("decoder_frames_decoded", "decoder_fps"),
    "its.inference.v1.InferenceService": (
        "inference_frames",
        "latency_capture_to_detections_seconds",
    ),
    "its.analytics.v1.AnalyticsService": ("analytics_frames", "analytics_spool_bytes"),
    "its.query.v1.QueryService": ("query_cache_requests",),
}
CERTIFICATE_EXPIRY = "tls_certificate_expiry_timestamp_seconds"
# Asked one by one where the server has no Health/List: "" (the server as a whole), then
# every service of the product (NOT_FOUND: not hosted by this process).
PRODUCT_SERVICES = (
    "",
    *(
        service.full_name
        for module in (
            admin_service_pb2,
            analytics_service_pb2,
            camera_service_pb2,
            inference_service_pb2,
            query_service_pb2,
        )
        for service in module.DESCRIPTOR.services_by_name.values()
    ),
)
SERVING = health_pb2.HealthCheckResponse.SERVING


def report(passed: bool, check: str, detail: str) -> bool:
    print(f"{'PASS' if passed else 'FAIL'} {check}: {detail}", flush=True)
    return passed


def up_endpoints(up_dir: Path) -> list[str]:
    """Every gRPC and HTTP address of an ``up`` instance (its up.json, validated)."""
    endpoints = read_up_dir(up_dir)  # the HTTP ports, checked; the gRPC section below
    source = up_dir if up_dir.suffix == ".json" else up_dir / "up.json"
    grpc_section = json.loads(source.read_text()).get("grpc")
    if not isinstance(grpc_section, dict) or not grpc_section:
        raise ValueError(f"{source}: grpc: expected an object of HOST:PORT")
    lines = [f"grpc {address}" for address in grpc_section.values()]
    return lines + [f"http {address}" for address in endpoints.http.values()]


def _channel(target: str, args: argparse.Namespace) -> grpc.Channel:
    if args.cacert is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        args.cacert.read_bytes(),
        args.key.read_bytes() if args.key else None,
        args.cert.read_bytes() if args.cert else None,
    )
    return grpc.secure_channel(target, credentials)


def _health_statuses(stub: health_pb2_grpc.HealthStub) -> dict[str, int]:
    """Each hosted service's status: List where the server has it, else Check per service."""
    try:
        listed = stub.List(health_pb2.HealthListRequest(), timeout=TIMEOUT_S).statuses
        return {name: response.status for name, response in listed.items()}
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
    statuses = {}
    for name in PRODUCT_SERVICES:
        request = health_pb2.HealthCheckRequest(service=name)
        try:
            statuses[name] = stub.Check(request, timeout=TIMEOUT_S).status
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
    return statuses


def check_grpc(target: str, args: argparse.Namespace) -> bool:
    check = f"grpc {target} health"
    try:
        with _channel(target, args) as channel:
            statuses = _health_statuses(health_pb2_grpc.HealthStub(channel))
    except grpc.RpcError as error:
        return report(False, check, f"{error.code().name}: {error.details()}")
    down = sorted(name or '""' for name, status in statuses.items() if status != SERVING)
    if not statuses or down:
        return report(False, check, f"not SERVING: {', '.join(down) or 'no service registered'}")
    hosted = ", ".join(name.rpartition(".")[2] for name in sorted(statuses) if name)
    return report(True, check, f"SERVING: the server and {hosted or 'no service'}")


def _get(url: str, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url)  # noqa: S310 (the operator's own endpoint)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _check_health(base: str, token: str | None) -> tuple[bool, list[str]]:
    """/health: 200, SERVING and every dependency up; returns its gRPC services."""
    status, body = _get(f"{base}/health", token)
    try:
        document = json.loads(body)
    except json.JSONDecodeError:
        return report(False, f"http {base} /health", f"{status}, not JSON"), []
    down = sorted(k for k, v in document.get("dependencies", {}).items() if v != "up")
    passed = status == 200 and document.get("status") == "SERVING" and not down
    detail = f"{status} {document.get('status')}, dependencies down: {', '.join(down) or 'none'}"
    return report(passed, f"http {base} /health", detail), list(document.get("services", []))


def _check_certificates(base: str, samples: Iterable[tuple[str, float]], days: float) -> bool:
    ok = True
    for certificate, expiry in samples:
        left = (expiry - time.time()) / 86400
        check = f"http {base} certificate {certificate}"
        ok = report(left > days, check, f"expires in {left:.1f} days (minimum {days:g})") and ok
    return ok


def _check_metrics(base: str, services: list[str], args: argparse.Namespace) -> bool:
    status, body = _get(f"{base}/metrics", args.token)
    if status != 200:
        return report(False, f"http {base} /metrics", f"{status}: {body.strip()[:200]}")
    families = {family.name: family for family in text_string_to_metric_families(body)}
    wanted = [*COMMON_FAMILIES, *(f for s in services for f in UNIT_FAMILIES.get(s, ()))]
    missing = [name for name in wanted if name not in families]
    detail = f"missing {', '.join(missing)}" if missing else f"{len(wanted)} families present"
    ok = report(not missing, f"http {base} /metrics", detail)
    expiry = families.get(CERTIFICATE_EXPIRY)
    if expiry is not None:
        samples = [(s.labels.get("certificate", "?"), s.value) for s in expiry.samples]
        ok = _check_certificates(base, samples, args.min_cert_days) and ok
    return ok


def check_http(target: str, args: argparse.Namespace) -> bool:
    base = f"http://{target}"
    try:
        live, _ = _get(f"{base}/live", None)
    except OSError as error:
        return report(False, f"http {base} /live", f"unreachable: {error}")
    ok = report(live == 200, f"http {base} /live", str(live))
    healthy, services = _check_health(base, args.token)
    return _check_metrics(base, services, args) and healthy and ok


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    endpoints = commands.add_parser("endpoints", help="the addresses in an up.json")
    endpoints.add_argument("--up-dir", type=Path, required=True)
    probe_grpc = commands.add_parser("grpc", help="every health status SERVING")
    probe_grpc.add_argument("target", help="HOST:PORT")
    probe_grpc.add_argument("--cacert", type=Path, help="CA of the server (enables TLS)")
    probe_grpc.add_argument("--cert", type=Path, help="client certificate (mTLS)")
    probe_grpc.add_argument("--key", type=Path, help="client key (mTLS)")
    probe_http = commands.add_parser("http", help="/live, /health, /metrics")
    probe_http.add_argument("target", help="HOST:PORT")
    probe_http.add_argument("--token", help="bearer token of /metrics")
    probe_http.add_argument("--min-cert-days", type=float, default=14.0)
    return parser


def main() -> int:
    args = _parser().parse_args()
    if args.command == "endpoints":
        try:
            print("\n".join(up_endpoints(args.up_dir)))
        except ValueError as error:
            print(f"--up-dir: {error}", file=sys.stderr)
            return 2
        return 0
    if args.command == "grpc" and (args.cert is None) != (args.key is None):
        print("--cert and --key: give both or neither", file=sys.stderr)
        return 2
    check = check_grpc if args.command == "grpc" else check_http
    return 0 if check(args.target, args) else 1


if __name__ == "__main__":
    sys.exit(main())
