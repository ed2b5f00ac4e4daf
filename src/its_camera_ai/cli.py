"""The ``its-camera-ai`` command: run a service, check configuration, manage shm rings, simulate,
and read the traffic (``counts``, ``summary``, ``events``: tables from the QueryService API).

``python -m its_camera_ai`` is the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from its_camera_ai.common import ConfigError, ItsError, ServiceUnit, load_settings, serve
from its_camera_ai.security import enforce_tls13, mint_dev_certificates

__all__ = ["SERVICES", "main", "service_units"]

# Service name -> module whose UNIT it serves. Imported lazily: each pulls in its own stack.
# In dependency order: `serve all` stops them in reverse, so inference drains its stream
# into analytics before analytics closes its streams.
SERVICES = {
    "decoder": "its_camera_ai.decoder.server",
    "analytics": "its_camera_ai.analytics.server",
    "inference": "its_camera_ai.inference.server",
    "query": "its_camera_ai.query.server",
}

# Subcommands that hand the rest of the command line to a package's own parser:
# name -> (help, "module:function"). Imported only when run: each pulls in its own stack
# (torch for shm, the renderer for sim, rich for the view).
TOOLS = {
    "up": (
        "the whole system here: a process per service, a dev token, a sample camera",
        "its_camera_ai.up:main",
    ),
    "shm": ("list or clean shared-memory frame rings", "its_camera_ai.shm:main"),
    "sim": (
        "traffic simulator: write a video with its truth, a detector dataset, a snapshot",
        "its_camera_ai.sim:main",
    ),
    "counts": (
        "traffic volume of one camera as a time series (table)",
        "its_camera_ai.client:counts_main",
    ),
    "summary": (
        "volume, speeds, occupancy, density, level of service per camera and lane",
        "its_camera_ai.client:summary_main",
    ),
    "events": (
        "incidents (stopped vehicles, wrong-way drivers, ...), newest first",
        "its_camera_ai.client:events_main",
    ),
    "snapshot": (
        "a camera's latest frame with tracks, lines and zones drawn on it (JPEG)",
        "its_camera_ai.snapshot:snapshot_main",
    ),
    "view": (
        "live terminal view: cameras, counts per line, incidents, latency per stage",
        "its_camera_ai.view:view_main",
    ),
    "cameras": (
        "add, list, show or remove cameras (source, lines, zones, lanes, calibration)",
        "its_camera_ai.client:cameras_main",
    ),
    "loadtest": (
        "load the query and camera APIs or the frame pipeline; replay ghz configs",
        "its_camera_ai.loadtest:loadtest_main",
    ),
}


def service_units(name: str) -> list[ServiceUnit]:
    """The units `serve NAME` runs (`all`: every service, in start order)."""
    modules = SERVICES.values() if name == "all" else [SERVICES[name]]
    return [importlib.import_module(module).UNIT for module in modules]


def _run_tool(name: str, argv: list[str]) -> int:
    module, function = TOOLS[name][1].split(":")
    tool_main: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
    return tool_main(argv)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="its-camera-ai", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def add_config_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", type=Path, help="YAML file (default: config/<env>.yaml)")
        sub.add_argument(
            "--environment", choices=["dev", "staging", "production"], help="default: dev"
        )

    serve_cmd = commands.add_parser("serve", help="run a service (or all of them in one process)")
    serve_cmd.add_argument("service", choices=[*SERVICES, "all"])
    add_config_options(serve_cmd)

    check_cmd = commands.add_parser("check-config", help="validate and print the configuration")
    add_config_options(check_cmd)

    certs_cmd = commands.add_parser("certs", help="mint development TLS certificates (a CA)")
    certs_cmd.add_argument("--out", type=Path, required=True, help="directory to write to")
    certs_cmd.add_argument(
        "--host", action="append", help="server name or IP (repeat; default: loopback)"
    )
    certs_cmd.add_argument(
        "--client", action="append", help="client certificate name (repeat; default: services)"
    )
    certs_cmd.add_argument("--overwrite", action="store_true", help="replace existing files")

    # Listed for --help; main() hands their arguments to the package's own parser.
    for name, (help_text, _) in TOOLS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def _certs(args: argparse.Namespace) -> int:
    options: dict[str, list[str]] = {}
    if args.host:
        options["hosts"] = args.host
    if args.client:
        options["clients"] = args.client
    try:
        minted = mint_dev_certificates(args.out, overwrite=args.overwrite, **options)
    except (FileExistsError, ValueError) as exc:
        print(f"its-camera-ai certs: {exc} (--overwrite replaces files)", file=sys.stderr)
        return 1
    print(f"CA: {minted.ca_cert} (key {minted.ca_key})")
    print(f"server: {minted.server_cert} (key {minted.server_key})")
    for name, (cert, key) in minted.clients.items():
        print(f"client {name}: {cert} (key {key}), identity spiffe://its-camera-ai/{name}")
    print("\nA server with mTLS (TLS 1.3 only):")
    print(f"ITS_SECURITY__TLS__CERT_FILE={minted.server_cert.resolve()}")
    print(f"ITS_SECURITY__TLS__KEY_FILE={minted.server_key.resolve()}")
    print(f"ITS_SECURITY__TLS__CLIENT_CA_FILE={minted.ca_cert.resolve()}")
    print("ITS_SECURITY__TLS__REQUIRE_CLIENT_CERT=true")
    for name, (cert, key) in minted.clients.items():
        print(f"\nA peer or the CLI calling as {name}:")
        print("ITS_SECURITY__PEER_TLS__ENABLED=true")
        print(f"ITS_SECURITY__PEER_TLS__CA_FILE={minted.ca_cert.resolve()}")
        print(f"ITS_SECURITY__PEER_TLS__CERT_FILE={cert.resolve()}")
        print(f"ITS_SECURITY__PEER_TLS__KEY_FILE={key.resolve()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        return _run_tool(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "certs":
        return _certs(args)
    try:
        settings = load_settings(args.config, args.environment)
    except ConfigError as exc:
        print(f"its-camera-ai: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(json.dumps(settings.model_dump(mode="json"), indent=2))
        return 0
    tls = settings.security.tls
    if tls.enabled and tls.min_version == "1.3" and from_command_line:
        # gRPC reads its TLS 1.2 cipher list on import, long done: this runs the command
        # again with it set (TLS 1.2 refused), unless the environment already had it.
        enforce_tls13(reexec=True)
    try:
        asyncio.run(serve(settings, service_units(args.service)))
    except ConfigError as exc:  # found while a service sets up (keys, files it needs)
        print(f"its-camera-ai: {exc}", file=sys.stderr)
        return 2
    except (ItsError, OSError) as exc:
        print(f"its-camera-ai: cannot start {args.service}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
