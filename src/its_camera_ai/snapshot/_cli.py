"""``its-camera-ai snapshot CAMERA``: fetch a camera's snapshot (JPEG) and write it."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = ["snapshot_main"]

_DEFAULT_UP_DIR = Path("var/up")
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
        help=f"data directory of `its-camera-ai up` (default {_DEFAULT_UP_DIR})",
    )
    parser.add_argument("--out", type=Path, help="file to write (default CAMERA.jpg)")
    parser.add_argument("--token", help="JWT or API key (default: the up directory's token)")
    return parser


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    """(HOST:PORT, token) from the options, or from the running system's up.json."""
    if args.http is not None:
        return args.http, args.token
    up_dir: Path = args.up_dir or _DEFAULT_UP_DIR
    try:
        described = json.loads((up_dir / "up.json").read_text(encoding="utf-8"))
        address = str(described["http"]["analytics"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--up-dir {up_dir}: no usable up.json ({exc})") from exc
    token = args.token
    if token is None and described.get("token_file"):
        try:
            token = Path(described["token_file"]).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ValueError(f"token_file {described['token_file']}: {exc.strerror}") from exc
    return address, token


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
