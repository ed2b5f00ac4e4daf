"""``its-camera-ai snapshot CAMERA``: fetch a camera's snapshot (JPEG) and write it."""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from its_camera_ai.client import DEFAULT_UP_DIR, read_up_dir

__all__ = ["snapshot_main"]

_TIMEOUT_SECONDS = 10.0
# API keys begin so (its_camera_ai.security): sent as x-api-key, anything else as a JWT.
_API_KEY_PREFIX = "itsk_"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="its-camera-ai snapshot",
        description="Fetch a camera's snapshot: its latest frame with tracks, lines and zones.",
    )
    parser.add_argument("camera", help="camera id")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--http", metavar="HOST:PORT", help="HTTP side port of analytics")
    where.add_argument(
        "--up-dir",
        type=Path,
        help=f"data directory of `its-camera-ai up` (default {DEFAULT_UP_DIR})",
    )
    parser.add_argument("--out", type=Path, help="file to write (default CAMERA.jpg)")
    parser.add_argument("--token", help="JWT or API key (default: the up directory's token)")
    return parser


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    """(HOST:PORT, credential) from the options, or from the running system's up.json."""
    if args.http is not None:
        return args.http, args.token
    up_dir: Path = args.up_dir or DEFAULT_UP_DIR
    endpoints = read_up_dir(up_dir)
    address = endpoints.http.get("analytics")
    if address is None:
        raise ValueError(f"--up-dir {up_dir}: up.json names no analytics HTTP port")
    return address, args.token or endpoints.token or endpoints.api_key


def _fetch(address: str, camera: str, token: str | None) -> bytes:
    url = f"http://{address}/cameras/{urllib.parse.quote(camera, safe='')}/snapshot.jpg"
    headers = {}
    if token is not None:
        if token.startswith(_API_KEY_PREFIX):
            headers["x-api-key"] = token
        else:
            headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    # The URL is http:// by construction above (no file: or custom schemes).
    with urllib.request.urlopen(request, timeout=_TIMEOUT_SECONDS) as response:  # noqa: S310
        body: bytes = response.read()
    return body


def snapshot_main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        address, token = _target(args)
        jpeg = _fetch(address, args.camera, token)
    except ValueError as exc:
        print(f"its-camera-ai snapshot: {exc}", file=sys.stderr)
        return 2
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        print(f"its-camera-ai snapshot: HTTP {exc.code}: {detail}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"its-camera-ai snapshot: cannot reach {address}: {exc}", file=sys.stderr)
        return 1
    out: Path = args.out or Path(f"{args.camera}.jpg")
    out.write_bytes(jpeg)
    print(f"{out} ({len(jpeg)} bytes)")
    return 0
