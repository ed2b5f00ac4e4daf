#!/usr/bin/env python3
"""Generate the Python client stubs from the API contract in ``protos/``.

The one command (run from anywhere, with the project's virtual environment)::

    .venv/bin/python scripts/gen_protos.py          # regenerate clients/python/its/
    .venv/bin/python scripts/gen_protos.py --check  # fail if clients/python/its/ is stale

What it does:

* compiles every ``protos/its/**/*.proto`` with ``grpc_tools.protoc``, using ``protos/`` as
  the import root (so modules are ``its.<area>.v1.<file>_pb2``) plus grpc_tools' bundled
  ``google/protobuf`` protos; ``protos/google/api`` (vendored googleapis) is only imported,
  never generated: ``googleapis-common-protos`` provides ``google.api.*_pb2`` at run time;
* emits messages (``--python_out``), gRPC stubs (``--grpc_python_out``) and type stubs
  (``--mypy_out``, ``--mypy_grpc_out``, from mypy-protobuf);
* adds ``__init__.py`` for ``its``, ``its/<area>`` and ``its/<area>/v1`` and a ``py.typed``;
* replaces ``clients/python/its/`` with the result, so files of deleted protos disappear.

``--check`` generates into a temporary directory and compares it with the committed tree,
listing every stale, missing and extra file, and exits 1 if there is any. The output is
deterministic (no timestamps), but it depends on the versions of grpcio-tools, protobuf
and mypy-protobuf: run it with the versions pinned by the project.

``--protos`` and ``--out`` point the script at other directories (used by the tests, which
check copies without touching the real tree).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROTOS = REPO_ROOT / "protos"
DEFAULT_OUT = REPO_ROOT / "clients" / "python"
PACKAGE = "its"  # the top-level proto package and Python package this script owns

INIT_TEXT = '"""Generated from protos/ by scripts/gen_protos.py. Do not edit."""\n'
PLUGINS = ("protoc-gen-mypy", "protoc-gen-mypy_grpc")


def _find_plugin(name: str) -> str:
    """The path of a protoc plugin installed next to this interpreter (or on PATH)."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"error: {name} not found; install the dev extras (mypy-protobuf)")
    return found


def _proto_files(protos: Path) -> list[str]:
    """Every proto of the ``its`` package, relative to the import root, sorted."""
    files = sorted(p.relative_to(protos).as_posix() for p in (protos / PACKAGE).rglob("*.proto"))
    if not files:
        raise SystemExit(f"error: no .proto files under {protos / PACKAGE}")
    return files


def _protoc(args: list[str]) -> None:
    status = protoc.main(["grpc_tools.protoc", *args])
    if status != 0:
        raise SystemExit(f"error: protoc failed with status {status}")


def _files_with_services(descriptor_set: Path) -> list[str]:
    """The protos (of those compiled into ``descriptor_set``) that define a service."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    return sorted(f.name for f in files.file if f.service)


def _run_protoc(protos: Path, files: list[str], out: Path) -> None:
    bundled = Path(protoc.__file__).resolve().parent / "_proto"
    include = [f"--proto_path={protos}", f"--proto_path={bundled}"]
    # Messages and their type stubs for every file; the descriptor set tells which files
    # have services. mypy-protobuf's "quiet" option silences its per-file progress lines.
    with tempfile.TemporaryDirectory(prefix="gen_protos_desc_") as tmp:
        descriptor_set = Path(tmp) / "its.binpb"
        _protoc(
            [
                *include,
                f"--plugin=protoc-gen-mypy={_find_plugin(PLUGINS[0])}",
                f"--python_out={out}",
                f"--mypy_out=quiet:{out}",
                f"--descriptor_set_out={descriptor_set}",
                *files,
            ]
        )
        service_files = _files_with_services(descriptor_set)
    # gRPC stubs only where there is a service (grpc_tools would otherwise emit an empty
    # *_pb2_grpc.py for every message-only file). Servicer type stubs are concrete, like
    # the runtime base classes whose unimplemented methods answer UNIMPLEMENTED, so a
    # server may implement a service method by method.
    if service_files:
        _protoc(
            [
                *include,
                f"--plugin=protoc-gen-mypy_grpc={_find_plugin(PLUGINS[1])}",
                f"--grpc_python_out={out}",
                f"--mypy_grpc_out=quiet,generate_concrete_servicer_stubs:{out}",
                *service_files,
            ]
        )


def _add_package_files(out: Path) -> None:
    """``__init__.py`` in every package directory of the output, and ``its/py.typed``."""
    root = out / PACKAGE
    for directory in [root, *sorted(d for d in root.rglob("*") if d.is_dir())]:
        (directory / "__init__.py").write_text(INIT_TEXT, encoding="utf-8")
    (root / "py.typed").write_text("", encoding="utf-8")


def generate(protos: Path, out_root: Path) -> Path:
    """Generate into ``out_root`` (without an ``its/`` yet); returns ``out_root/its``."""
    files = _proto_files(protos)
    out_root.mkdir(parents=True, exist_ok=True)
    _run_protoc(protos, files, out_root)
    _add_package_files(out_root)
    return out_root / PACKAGE


def _tree(root: Path) -> set[str]:
    """Relative paths of the files under ``root``, ignoring bytecode caches."""
    if not root.is_dir():
        return set()
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def compare(expected: Path, actual: Path) -> list[str]:
    """Problems that make ``actual`` differ from ``expected``, one line each, sorted."""
    want, have = _tree(expected), _tree(actual)
    problems = [f"missing: {PACKAGE}/{f}" for f in sorted(want - have)]
    problems += [f"extra:   {PACKAGE}/{f}" for f in sorted(have - want)]
    problems += [
        f"stale:   {PACKAGE}/{f}"
        for f in sorted(want & have)
        if not filecmp.cmp(expected / f, actual / f, shallow=False)
    ]
    return sorted(problems, key=lambda line: line.split()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 listing stale, missing and extra generated files",
    )
    parser.add_argument("--protos", type=Path, default=DEFAULT_PROTOS, help="import root")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"directory that holds {PACKAGE}/"
    )
    args = parser.parse_args(argv)
    protos: Path = args.protos.resolve()
    target = args.out.resolve() / PACKAGE

    with tempfile.TemporaryDirectory(prefix="gen_protos_") as tmp:
        generated = generate(protos, Path(tmp))
        if args.check:
            problems = compare(generated, target)
            if problems:
                print(f"{target} is out of date with {protos}:", file=sys.stderr)
                for line in problems:
                    print(f"  {line}", file=sys.stderr)
                print("run: .venv/bin/python scripts/gen_protos.py", file=sys.stderr)
                return 1
            print(f"{target} is up to date ({len(_tree(generated))} files)")
            return 0
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(generated, target)
        print(f"generated {len(_tree(target))} files in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
