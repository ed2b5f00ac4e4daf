"""The ``its-camera-ai`` command: run a service, check configuration, manage shm rings."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from services.common import ConfigError, ItsError, ServiceUnit, load_settings, serve

__all__ = ["main"]

# Service name -> module whose UNIT it serves. Imported lazily: each pulls in its own stack.
# In dependency order: `serve all` stops them in reverse, so inference drains its stream
# into analytics before analytics closes its streams.
SERVICES = {
    "decoder": "services.decoder.server",
    "analytics": "services.analytics.server",
    "inference": "services.inference.server",
    "query": "services.query.server",
}


def _units(name: str) -> list[ServiceUnit]:
    modules = SERVICES.values() if name == "all" else [SERVICES[name]]
    return [importlib.import_module(module).UNIT for module in modules]


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

    shm_cmd = commands.add_parser("shm", help="list or clean shared-memory frame rings")
    shm_cmd.add_argument("shm_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "shm":
        from shm._tool import main as shm_main  # noqa: PLC0415 - keeps torch out of other commands

        return shm_main(list(args.shm_args))
    try:
        settings = load_settings(args.config, args.environment)
    except ConfigError as exc:
        print(f"its-camera-ai: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(json.dumps(settings.model_dump(mode="json"), indent=2))
        return 0
    try:
        asyncio.run(serve(settings, _units(args.service)))
    except ConfigError as exc:  # found while a service sets up (keys, files it needs)
        print(f"its-camera-ai: {exc}", file=sys.stderr)
        return 2
    except (ItsError, OSError) as exc:
        print(f"its-camera-ai: cannot start {args.service}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
