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
from collections.abc import Sequence
from pathlib import Path

from its_camera_ai.common import ConfigError, ItsError, ServiceUnit, load_settings, serve

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

# Subcommands that hand the rest of the command line to a package's own parser.
TOOLS = {
    "shm": "list or clean shared-memory frame rings",
    "sim": "traffic simulator: write a video with its truth, a detector dataset, a snapshot",
    "counts": "traffic volume of one camera as a time series (table)",
    "summary": "volume, speeds, occupancy, density, level of service per camera and lane",
    "events": "incidents (stopped vehicles, wrong-way drivers, ...), newest first",
}


def service_units(name: str) -> list[ServiceUnit]:
    """The units `serve NAME` runs (`all`: every service, in start order)."""
    modules = SERVICES.values() if name == "all" else [SERVICES[name]]
    return [importlib.import_module(module).UNIT for module in modules]


def _run_tool(name: str, argv: list[str]) -> int:
    # Imported here: each pulls in its own stack (torch for shm, the renderer for sim).
    if name == "shm":
        from its_camera_ai.shm import main as shm_main  # noqa: PLC0415

        return shm_main(argv)
    if name in ("counts", "summary", "events"):
        from its_camera_ai.client import reports_main  # noqa: PLC0415

        return reports_main(name, argv)
    from its_camera_ai.sim import main as sim_main  # noqa: PLC0415

    return sim_main(argv)


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

    # Listed for --help; main() hands their arguments to the package's own parser.
    for name, help_text in TOOLS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        return _run_tool(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config, args.environment)
    except ConfigError as exc:
        print(f"its-camera-ai: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(json.dumps(settings.model_dump(mode="json"), indent=2))
        return 0
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
