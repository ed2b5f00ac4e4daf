#!/usr/bin/env python3
"""Keep the released API contract: the buf image that ``buf breaking`` compares against.

At a release (docs/api-versioning.md), from the repository root::

    .venv/bin/python scripts/release_contract.py

checks the protos against the image of the previous release (``buf breaking``; a breaking
change stops it, nothing is written) and then replaces ``protos/released/contract.json``
with the image of the protos as they are now. Between releases CI runs::

    tools/buf/node_modules/.bin/buf breaking --against protos/released/contract.json

The image is buf's JSON image without source info (comments, positions): exact for every
descriptor ``buf breaking`` judges, insensitive to comment edits, and written one field per
line so that a release's diff of the file reads as the list of what the contract gained.
Imports (google/protobuf, google/api) stay in: buf needs them to read the image.

``--protos-root`` points the script at a copy of the repository (buf.yaml, protos/), as
the tests do.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUF = REPO_ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
RELEASED = Path("protos") / "released" / "contract.json"


def _buf(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not BUF.is_file():
        raise SystemExit(f"error: {BUF} missing; run `npm ci --prefix tools/buf`")
    return subprocess.run(
        [str(BUF), *args], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )


def release(root: Path) -> int:
    """Refuse a contract that breaks the released one; otherwise make it the released one."""
    image = root / RELEASED
    if image.is_file():
        breaking = _buf(root, "breaking", "--against", str(RELEASED))
        if breaking.returncode != 0:
            print(breaking.stdout + breaking.stderr, end="", file=sys.stderr)
            print(
                "error: the contract breaks the released one; breaking changes go to a new"
                " version package beside the old one (docs/api-versioning.md)",
                file=sys.stderr,
            )
            return 1
    built = _buf(root, "build", "--exclude-source-info", "-o", "-#format=json")
    if built.returncode != 0:
        print(built.stderr, end="", file=sys.stderr)
        return 1
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_text(json.dumps(json.loads(built.stdout), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {image}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--protos-root",
        type=Path,
        default=REPO_ROOT,
        help="directory holding buf.yaml and protos/ (default: this repository)",
    )
    return release(parser.parse_args(argv).protos_root.resolve())


if __name__ == "__main__":
    sys.exit(main())
