"""The view as a rich renderable, built from a ``ViewSnapshot`` alone (pure: tests render it
to text with a recording console, no terminal needed)."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from its_camera_ai.view._model import CameraRow, ViewSnapshot

__all__ = ["render_view"]

_STATE_STYLES = {
    "streaming": "green",
    "connecting": "yellow",
    "backing_off": "yellow",
    "failed": "bold red",
    "stopped": "dim",
}
_SEVERITY_STYLES = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "dim"}


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _by_class(counts: Mapping[str, int]) -> str:
    return " ".join(f"{name}={count}" for name, count in sorted(counts.items())) or "-"


def _cameras(rows: tuple[CameraRow, ...]) -> RenderableType:
    if not rows:
        return Text("No cameras. Add one: its-camera-ai cameras add ID --source URI", "dim")
    table = Table(title="Cameras", title_justify="left", expand=False)
    for header in ("camera", "state", "fps in", "fps analysed", "tracks", "last minute",
                   "p50 ms", "p99 ms", "last error"):  # fmt: skip
        numeric = header in ("fps in", "fps analysed", "tracks", "p50 ms", "p99 ms")
        table.add_column(header, justify="right" if numeric else "left")
    for row in rows:
        name = row.camera_id if not row.display_name else f"{row.camera_id} ({row.display_name})"
        table.add_row(
            name,
            Text(row.state, _STATE_STYLES.get(row.state, "")),
            _number(row.source_fps),
            _number(row.processed_fps),
            "-" if row.active_tracks is None else str(row.active_tracks),
            _by_class(row.counts_last_minute),
            _number(row.latency_p50_ms),
            _number(row.latency_p99_ms),
            Text(row.last_error, "red", overflow="ellipsis", no_wrap=True),
        )
    return table


def _lines(snapshot: ViewSnapshot) -> RenderableType:
    title = f"Counts per line, last {snapshot.count_window_minutes} min"
    if not snapshot.lines:
        return Text(f"{title}: no counting lines", "dim")
    table = Table(title=title, title_justify="left")
    for header in ("camera", "line", "direction", "count", "by class"):
        table.add_column(header, justify="right" if header == "count" else "left")
    for line in snapshot.lines:
        table.add_row(
            line.camera_id, line.line_id, line.direction, str(line.total), _by_class(line.by_class)
        )
    return table


def _stages(snapshot: ViewSnapshot) -> RenderableType:
    if not snapshot.stages:
        return Text(
            "Latency per stage: no /metrics ports known (up.json's http); "
            "capture → analysed is in the cameras table",
            "dim",
        )
    table = Table(title="Latency per stage, last minute", title_justify="left")
    for header in ("stage", "p50 ms", "p99 ms", "observed"):
        table.add_column(header, justify="left" if header == "stage" else "right")
    for stage in snapshot.stages:
        table.add_row(
            stage.stage, _number(stage.p50_ms, 2), _number(stage.p99_ms, 2), str(stage.observations)
        )
    return table


def _incidents(snapshot: ViewSnapshot) -> RenderableType:
    if not snapshot.incidents:
        return Text("Latest incidents: none", "dim")
    table = Table(title="Latest incidents", title_justify="left")
    for header in ("start (UTC)", "camera", "type", "severity", "where", "", "what"):
        table.add_column(header)
    for event in snapshot.incidents:
        table.add_row(
            "-" if event.start_time is None else event.start_time.strftime("%H:%M:%S"),
            event.camera_id,
            event.event_type,
            Text(event.severity, _SEVERITY_STYLES.get(event.severity, "")),
            event.where or "-",
            "ongoing" if event.ongoing else "ended",
            event.description,
        )
    return table


def render_view(snapshot: ViewSnapshot) -> RenderableType:
    """The whole screen for one snapshot."""
    rate = snapshot.detections_per_second
    header = Text.assemble(
        ("ITS Camera AI", "bold"),
        f"  {snapshot.source}  {snapshot.taken_at.strftime('%H:%M:%S')} UTC",
        f"  detections/s {_number(rate)}",
        ("  q or Ctrl-C quits", "dim"),
    )
    parts: list[RenderableType] = [
        header,
        _cameras(snapshot.cameras),
        _lines(snapshot),
        _stages(snapshot),
        _incidents(snapshot),
    ]
    parts.extend(Text(problem, "red") for problem in snapshot.problems)
    return Group(*parts)
