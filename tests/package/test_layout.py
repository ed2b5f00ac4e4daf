"""The package's shape: one import root, a public surface per package, and size limits.

As httpx does: every package says what it offers in a sorted ``__all__``, and everything
outside the product (tests, benchmarks, scripts) imports only those names, so a private
module can be renamed or split without breaking anyone.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import its_camera_ai

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(its_camera_ai.__file__).parent
OUTSIDE_THE_PRODUCT = ("tests", "benchmarks", "scripts")

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# A module may exceed the limit when its docstring says why, on a line of its own.
SIZE_REASON = re.compile(r"^Size: .{10,}", re.MULTILINE)


def _public_modules() -> list[str]:
    names = [its_camera_ai.__name__]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="its_camera_ai."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _all_sort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 ("isort-style"): SCREAMING_CASE, then CamelCase, then the rest.
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


@pytest.mark.parametrize("module_name", _public_modules())
def test_every_public_module_declares_a_sorted_resolvable_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module_name} has no __all__"
    assert len(set(exported)) == len(exported), f"{module_name}.__all__ repeats a name"
    assert list(exported) == sorted(exported, key=_all_sort_key), f"{module_name}.__all__"
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what it does not define: {missing}"


def _imports_of_private_names(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
            names = []
        else:
            continue
        for module in modules:
            if module.split(".")[0] != "its_camera_ai":
                continue
            private = [p for p in module.split(".") if p.startswith("_")]
            private += [n for n in names if n.startswith("_")]
            if private:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {module} {private}")
    return found


def test_tests_benchmarks_and_scripts_use_public_names_only() -> None:
    found = []
    for folder in OUTSIDE_THE_PRODUCT:
        for path in sorted((REPO / folder).rglob("*.py")):
            found += _imports_of_private_names(path)
    assert not found, "imports of private modules or names:\n" + "\n".join(found)


def test_the_product_is_one_import_root(tmp_path: Path) -> None:
    # Run from elsewhere so that nothing in the checkout is on sys.path by accident.
    def imports(module: str) -> bool:
        probe = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        return probe.returncode == 0

    assert imports("its_camera_ai.cli")
    assert imports("its.camera.v1.camera_service_pb2_grpc")  # the generated stubs namespace
    for old_root in ("services", "shm", "its_client"):
        assert not imports(old_root), f"{old_root} is importable at top level"
    assert sorted(p.name for p in (REPO / "src").iterdir() if p.is_dir()) == ["its_camera_ai"]


def _long_functions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines})")
    return found


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        text = path.read_text()
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > MAX_MODULE_LINES and not SIZE_REASON.search(docstring):
            too_long.append(f"{path.relative_to(REPO)} ({text.count(chr(10))} lines, no 'Size:')")
        too_long += _long_functions(path)
    assert not too_long, "over the size limits:\n" + "\n".join(too_long)
