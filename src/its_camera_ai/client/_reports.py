"""``its-camera-ai counts|summary|events``: the traffic as tables, for operators.

Clients of the QueryService API like any other (``--target`` or ``$ITS_QUERY_TARGET``, else the
query process of ``its-camera-ai up`` running from here (``var/up``, or ``--up-dir``) with its
token, else ``127.0.0.1:50051``; a credential with ``--token``/``$ITS_TOKEN`` or ``--api-key``/
``$ITS_API_KEY``, TLS with ``--tls-ca``): what they print is what an integration would read.
Times are UTC; ``--since 2h`` is the last two hours, aligned down to the bin so that repeated
runs (and many operators) ask the same question, which the service answers from its cache.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from its.common.v1 import detection_pb2, geometry_pb2, time_range_pb2
from its.query.v1 import event_pb2, query_service_pb2, query_service_pb2_grpc, traffic_pb2
from its_camera_ai.client._channel import add_connection_arguments, channel_from_arguments
from its_camera_ai.client._endpoints import (
    DEFAULT_TARGET,
    add_up_dir_argument,
    resolve_arguments,
)

__all__ = ["REPORTS", "counts_main", "events_main", "reports_main", "summary_main"]

REPORTS = ("counts", "summary", "events")
if TYPE_CHECKING:  # the async stub exists in the type stubs only
    _Stub = query_service_pb2_grpc.QueryServiceAsyncStub
_NS = 1_000_000_000
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_BINS = {"1m": 60, "15m": 900, "1h": 3600, "1d": 86_400}
_DIRECTIONS = {
    "both": geometry_pb2.CROSSING_DIRECTION_UNSPECIFIED,
    "left-to-right": geometry_pb2.CROSSING_DIRECTION_LEFT_TO_RIGHT,
    "right-to-left": geometry_pb2.CROSSING_DIRECTION_RIGHT_TO_LEFT,
}
_CLASSES = {
    name.removeprefix("OBJECT_CLASS_").lower(): value
    for name, value in detection_pb2.ObjectClass.items()
    if value != 0
}


def _seconds(text: str) -> int:
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration like 90s, 15m, 2h or 7d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _moment(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: an RFC 3339 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * _NS


def _camera(text: str) -> str:
    return text if text.startswith("cameras/") else f"cameras/{text}"


def _time_range(args: argparse.Namespace, align_seconds: int) -> time_range_pb2.TimeRange:
    align = align_seconds * _NS
    now = time.time_ns()
    end = args.until if args.until is not None else now - now % align + align
    start = args.start if args.start is not None else end - args.since * _NS
    time_range = time_range_pb2.TimeRange()
    time_range.start_time.FromNanoseconds(start)
    time_range.end_time.FromNanoseconds(end)
    return time_range


def _when(message: Message, field: str) -> str:
    if not message.HasField(field):
        return "-"
    value = getattr(message, field).ToDatetime(tzinfo=UTC)
    return str(value.strftime("%Y-%m-%d %H:%M:%S"))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _optional(message: Message, field: str, fmt: str = "{:.1f}") -> str:
    return fmt.format(getattr(message, field)) if message.HasField(field) else "-"


def _by_class(counts: Sequence[traffic_pb2.ClassCount]) -> str:
    return " ".join(
        f"{detection_pb2.ObjectClass.Name(c.object_class).removeprefix('OBJECT_CLASS_').lower()}"
        f"={c.count}"
        for c in counts
    )


async def _counts(stub: _Stub, args: argparse.Namespace) -> str:
    bin_seconds = _BINS[args.bin]
    request = query_service_pb2.GetTrafficCountsRequest(
        camera=_camera(args.camera),
        time_range=_time_range(args, bin_seconds),
        line_id=args.line or "",
        lane_id=args.lane or "",
        direction=_DIRECTIONS[args.direction],
        classes=[_CLASSES[c] for c in args.classes or ()],
    )
    request.bin_size.FromSeconds(bin_seconds)
    response = await stub.GetTrafficCounts(request)
    if args.json:
        return json_format.MessageToJson(response)
    rows = [
        (
            _when(b, "start_time"),
            b.volume,
            _by_class(b.class_counts),
            "partial" if b.partial else "",
        )
        for b in response.bins
    ]
    total = sum(b.volume for b in response.bins)
    return _table(("bin start (UTC)", "volume", "by class", ""), rows) + f"\ntotal {total}"


def _metrics_row(label: str, m: traffic_pb2.TrafficMetrics) -> tuple[str, ...]:
    los = traffic_pb2.LevelOfService.Name(m.level_of_service).removeprefix("LEVEL_OF_SERVICE_")
    return (
        label,
        str(m.volume),
        f"{m.flow_rate_vehicles_per_hour:.0f}",
        _optional(m, "mean_speed_kmh"),
        _optional(m, "speed_p85_kmh"),
        _optional(m, "occupancy", "{:.2f}"),
        _optional(m, "density_vehicles_per_km"),
        "-" if los == "UNSPECIFIED" else los,
        _optional(m, "mean_headway_s"),
        _optional(m, "mean_queue_length_m"),
    )


async def _summary(stub: _Stub, args: argparse.Namespace) -> str:
    request = query_service_pb2.GetTrafficSummaryRequest(
        cameras=[_camera(c) for c in args.cameras],
        time_range=_time_range(args, 900),
        classes=[_CLASSES[c] for c in args.classes or ()],
    )
    response = await stub.GetTrafficSummary(request)
    if args.json:
        return json_format.MessageToJson(response)
    rows = []
    for summary in response.summaries:
        rows.append(_metrics_row(summary.camera.removeprefix("cameras/"), summary.total))
        rows.extend(_metrics_row(f"  lane {lane.lane_id}", lane.metrics) for lane in summary.lanes)
    header = ("camera / lane", "volume", "veh/h", "km/h", "p85", "occ", "veh/km", "LOS",
              "headway s", "queue m")  # fmt: skip
    return _table(header, rows)


async def _events(stub: _Stub, args: argparse.Namespace) -> str:
    request = query_service_pb2.ListEventsRequest(
        parent=_camera(args.camera) if args.camera else "cameras/-",
        filter=args.filter or "",
        order_by=args.order_by or "",
        page_size=min(args.limit, 1000),
    )
    events: list[event_pb2.Event] = []
    while len(events) < args.limit:
        response = await stub.ListEvents(request)
        events.extend(response.events)
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    events = events[: args.limit]
    if args.json:
        return "\n".join(json_format.MessageToJson(e, indent=None) for e in events)
    rows = [
        (
            _when(e, "start_time"),
            _when(e, "end_time"),
            event_pb2.EventType.Name(e.type).removeprefix("EVENT_TYPE_").lower(),
            event_pb2.Severity.Name(e.severity).removeprefix("SEVERITY_").lower(),
            e.name.split("/")[1],
            e.lane_id or e.zone_id or "-",
            e.description,
        )
        for e in events
    ]
    return _table(("start (UTC)", "end", "type", "severity", "camera", "where", "what"), rows)


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"its-camera-ai {command}", description=__doc__)
    add_connection_arguments(parser, default_target=DEFAULT_TARGET)
    add_up_dir_argument(parser)
    # $ITS_QUERY_TARGET, else `up`'s query process (var/up), else the default.
    parser.set_defaults(target=os.environ.get("ITS_QUERY_TARGET"))
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead")
    if command == "counts":
        parser.add_argument("camera", help="camera id (or cameras/ID)")
        parser.add_argument("--bin", choices=list(_BINS), default="15m")
        parser.add_argument("--line", help="count crossings of this line only")
        parser.add_argument("--lane", help="count vehicles in this lane only")
        parser.add_argument("--direction", choices=list(_DIRECTIONS), default="both")
    elif command == "summary":
        parser.add_argument("cameras", nargs="*", help="camera ids (default: every camera)")
    else:
        parser.add_argument("camera", nargs="?", help="camera id (default: every camera)")
        parser.add_argument("--filter", help='AIP-160, e.g. "severity >= SEVERITY_HIGH"')
        parser.add_argument("--order-by", help='e.g. "severity desc" (default: newest first)')
        parser.add_argument("--limit", type=int, default=50, help="at most this many events")
    if command != "events":
        parser.add_argument("--class", dest="classes", action="append", choices=list(_CLASSES))
        parser.add_argument("--since", type=_seconds, default=_seconds("1h"),
                            help="length of the period ending now (default 1h)")  # fmt: skip
        parser.add_argument("--from", dest="start", type=_moment, help="start (RFC 3339)")
        parser.add_argument("--to", dest="until", type=_moment, help="end (RFC 3339)")
    return parser


async def _report(command: str, args: argparse.Namespace) -> str:
    async with channel_from_arguments(resolve_arguments(args, "query")) as channel:
        stub: _Stub = query_service_pb2_grpc.QueryServiceStub(channel)
        report = {"counts": _counts, "summary": _summary, "events": _events}[command]
        return await report(stub, args)


def reports_main(command: str, argv: Sequence[str]) -> int:
    args = _parser(command).parse_args(list(argv))
    try:
        print(asyncio.run(_report(command, args)))
    except ValueError as exc:  # options that cannot make a connection
        print(f"its-camera-ai {command}: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(f"its-camera-ai {command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0


# The commands themselves, as the CLI's tool table names them.
counts_main = functools.partial(reports_main, "counts")
summary_main = functools.partial(reports_main, "summary")
events_main = functools.partial(reports_main, "events")
