"""The Grafana dashboards as data: their panels' queries, and the checks every dashboard passes.

    dashboards.py [--dir DIR]                        # structure: JSON, uids, panel ids, datasource
    dashboards.py [--dir DIR] --prometheus URL       # also: which panel queries return no data

Structure: every ``*.json`` in the directory parses, dashboard uids are unique, panel ids are
unique within a dashboard (rows' collapsed panels included), and each dashboard has the
``DS_PROMETHEUS`` datasource variable. With ``--prometheus``, each target expression,
template variables filled in (``GRAFANA_VARIABLES``), is evaluated by that server's
``/api/v1/query``. Exit status: 0 all good, 1 a structural problem or a query without data or
rejected, 2 bad arguments or Prometheus unreachable. ``tests/deploy/test_dashboards.py``
uses the same extraction.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parent.parent / "helm/its-camera-ai/files/dashboards"
DATASOURCE_VARIABLE = "DS_PROMETHEUS"
# Grafana's variables as an operator's "All" selects them ($namespace's and $camera's
# allValue), the datasource by name.
GRAFANA_VARIABLES: Mapping[str, str] = {
    "$__rate_interval": "15s",
    "$namespace": ".*",
    "$camera": ".*",
    "${DS_PROMETHEUS}": "prometheus",
}


@dataclass(frozen=True)
class Target:
    """One query of one panel."""

    dashboard: str
    panel: str
    ref: str
    expr: str

    def query(self, variables: Mapping[str, str] = GRAFANA_VARIABLES) -> str:
        query = self.expr
        for variable, value in variables.items():
            query = query.replace(variable, value)
        return query

    @property
    def gpu_only(self) -> bool:
        return "gpu_" in self.expr


def dashboards(directory: Path = DASHBOARDS) -> dict[str, dict[str, Any]]:
    """Each dashboard by file name; ``ValueError`` naming the file that is not JSON."""
    boards = {}
    for path in sorted(directory.glob("*.json")):
        try:
            boards[path.name] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON: {error}") from None
    return boards


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def targets(directory: Path = DASHBOARDS) -> list[Target]:
    return [
        Target(name, panel["title"], target["refId"], target["expr"])
        for name, board in dashboards(directory).items()
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def structural_problems(directory: Path = DASHBOARDS) -> list[str]:
    """What is wrong with the dashboards' structure, one line each (empty: nothing)."""
    try:
        boards = dashboards(directory)
    except ValueError as error:
        return [str(error)]
    if not boards:
        return [f"{directory}: no dashboard (*.json)"]
    problems = []
    owners: dict[str, str] = {}
    for name, board in boards.items():
        uid = board.get("uid")
        if not uid:
            problems.append(f"{name}: no uid")
        elif uid in owners:
            problems.append(f"{name}: uid {uid!r} is also {owners[uid]}'s")
        owners.setdefault(str(uid), name)
        ids = [panel.get("id") for panel in panels(board)]
        repeated = sorted({str(i) for i in ids if ids.count(i) > 1})
        if repeated:
            problems.append(f"{name}: duplicate panel ids {', '.join(repeated)}")
        variables = board.get("templating", {}).get("list", [])
        if not any(
            v.get("name") == DATASOURCE_VARIABLE and v.get("type") == "datasource"
            for v in variables
        ):
            problems.append(f"{name}: no datasource variable {DATASOURCE_VARIABLE}")
    return problems


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (a quantile of no observations is NaN)."""
    return any(series["value"][1] != "NaN" for series in result)


def query_prometheus(url: str, expr: str) -> list[dict[str, Any]]:
    """The instant result of ``expr``; ``ValueError`` with Prometheus' reason when it is
    rejected, ``OSError`` when the server cannot be reached."""
    address = f"{url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(address, timeout=10) as response:  # noqa: S310
            body = json.load(response)
    except urllib.error.HTTPError as error:  # a bad expression: 400 with the reason
        raise ValueError(f"{expr}: {error.read().decode()}") from error
    if body.get("status") != "success":
        raise ValueError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _report_queries(directory: Path, url: str) -> int:
    empty = 0
    for target in targets(directory):
        where = f"{target.dashboard}: {target.panel} [{target.ref}]"
        try:
            answered = has_data(query_prometheus(url, target.query()))
        except ValueError as error:
            print(f"FAIL {where}: rejected: {error}")
            empty += 1
            continue
        print(f"{'PASS' if answered else 'NO DATA'} {where}")
        empty += not answered
    return empty


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=DASHBOARDS, help="the dashboards' folder")
    parser.add_argument("--prometheus", metavar="URL", help="evaluate every panel query here")
    args = parser.parse_args()
    if not args.dir.is_dir():
        print(f"--dir: {args.dir} is not a directory", file=sys.stderr)
        return 2
    problems = structural_problems(args.dir)
    for problem in problems:
        print(f"FAIL {problem}")
    if not problems:
        print(f"PASS structure: {len(dashboards(args.dir))} dashboards in {args.dir}")
    if args.prometheus is None or problems:
        return 1 if problems else 0
    try:
        empty = _report_queries(args.dir, args.prometheus)
    except OSError as error:
        print(f"--prometheus: cannot query {args.prometheus}: {error}", file=sys.stderr)
        return 2
    print(f"SUMMARY: {len(targets(args.dir)) - empty} queries with data, {empty} without")
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main())
