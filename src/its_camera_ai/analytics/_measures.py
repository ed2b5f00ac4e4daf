"""Per-frame traffic measures on a scene: line counts, lane and zone statistics, queues.

Counting lines. A track's reference point (bottom-centre of its filtered box) has a side per
line, which changes only once the point is ``margin`` beyond the line (hysteresis: jitter
around the line never flips it). A side change is a crossing when the move from the last
point on the old side (seen with the object's bottom in sight) to the first on the new side
meets the line *within the drawn segment*; after an occlusion, that move spans the gap.
Each track is counted at most once per line and direction (CountingLine contract), so even
a U-turn counts once each way; a crossing back over a line the track has crossed the other
way counts only when the track's velocity points that way too (a detection cut short for a
frame moves the reference point back over the line while the vehicle drives on).
Crossings are binned by the capture time of the frame that confirms them; the interpolated
crossing instant is used for headways.

Lanes. Per processed frame: occupancy (any motor vehicle's reference point inside the lane
polygon), density (vehicles / lane length on the road plane), Edie's totals for space-mean
speed (distance travelled / time spent by vehicles in the lane) and the queue length
(stopped vehicles contiguous from the lane's downstream end, or right behind one another
in the image). Zones: occupancy by any object, entries per class and dwell times when an
object leaves (or its track ends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.analytics._bins import BinStore
from its_camera_ai.analytics._inferred import LineInference, RecentCrossings
from its_camera_ai.analytics._records import (
    MOTOR_CLASSES,
    NUM_CLASSES,
    Direction,
    LineCrossing,
    ObjectClass,
    Scope,
)
from its_camera_ai.analytics._tracks import TrackTable, true_cells
from its_camera_ai.common import AnalyticsEngineSettings
from its_camera_ai.scene import CameraScene, segment_crossing, signed_distances

__all__ = ["FrameView", "SceneMeasures"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
IntArr = NDArray[np.intp]
Bool = NDArray[np.bool_]
_MOTOR_LUT = np.zeros(NUM_CLASSES, dtype=np.bool_)
_MOTOR_LUT[[int(c) for c in MOTOR_CLASSES]] = True
_NO_LANE = np.full(4096, -1, dtype=np.intp)
# A track's counted directions per line, as bits of ``l_done``.
_BIT = {d: 1 << int(d) for d in (Direction.LEFT_TO_RIGHT, Direction.RIGHT_TO_LEFT)}


@dataclass(slots=True)
class FrameView:
    """The tracks present in one frame and what the scene says about them."""

    t: float
    t_ns: int
    seq: int
    slots: IntArr
    ids: I64
    classes: I64
    boxes: F64
    observed: Bool
    speed_kmh: F64  # NaN when unknown (not calibrated, too few samples)
    motor: Bool
    lane: IntArr  # index of the lane containing the reference point, -1 if none
    lane_s: F64  # coordinate along that lane (m if calibrated, else px); NaN if no lane
    lane_s_px: F64  # the same in image pixels
    zones: Bool  # (T, Z)
    stopped: Bool
    queued: Bool
    # Per lane, this frame: motor vehicles present, density (veh/km, NaN uncalibrated).
    lane_count: I64
    lane_density: F64
    lane_travel_m: F64
    lane_travel_s: F64


class SceneMeasures:
    def __init__(
        self, scene: CameraScene, cfg: AnalyticsEngineSettings, table: TrackTable, bins: BinStore
    ) -> None:
        self.scene, self.cfg, self.table, self.bins = scene, cfg, table, bins
        n_lines, n_zones = len(scene.spec.lines), len(scene.spec.zones)
        table.add("cls", (), np.int64, 0)
        table.add("speed", (), np.float64, np.nan)
        table.add("seen_t", (), np.float64, np.nan)
        table.add("counted", (), np.bool_, False)
        table.add("l_side", (n_lines,), np.int8, 0)
        table.add("l_ax", (n_lines,), np.float64, np.nan)
        table.add("l_ay", (n_lines,), np.float64, np.nan)
        table.add("l_at", (n_lines,), np.float64, np.nan)
        table.add("l_done", (n_lines,), np.int8, 0)
        table.add("z_in", (n_zones,), np.bool_, False)
        table.add("z_t", (n_zones,), np.float64, np.nan)
        self.inference = LineInference(
            table, scene.line_segments, cfg.line_infer_s, scene.road_plane
        )
        self.recent = RecentCrossings(cfg.line_infer_s)
        # (line index, direction) -> (crossing time s, class, speed km/h or NaN)
        self.last_crossing: dict[tuple[int, int], tuple[float, int, float]] = {}
        self._lengths = np.asarray(cfg.vehicle_length_m, dtype=np.float64)
        self.counted_now: list[int] = []  # classes counted (camera scope) in the last frame
        self.crossings_now: list[LineCrossing] = []  # line crossings counted in the last frame

    # -- per frame ---------------------------------------------------------------------------

    def frame(
        self,
        t: float,
        t_ns: int,
        seq: int,
        dt_accrue: float,
        slots: IntArr,
        ids: I64,
        classes: I64,
        boxes: F64,
        observed: Bool,
        foot_seen: Bool,
        cut: Bool,
        velocity_px: F64,
        ground: F64,
    ) -> FrameView:
        sc, cfg, tab = self.scene, self.cfg, self.table
        ref = np.column_stack([(boxes[:, 0] + boxes[:, 2]) * 0.5, boxes[:, 3]])
        heights = boxes[:, 3] - boxes[:, 1]
        tab["cls"][slots] = classes
        tab["seen_t"][slots[observed]] = t  # last observation, not a prediction
        speed = tab["speed"][slots]
        motor = _MOTOR_LUT[classes]
        n, k = len(slots), len(sc.lane_polygons)
        if sc.calibrated:
            with np.errstate(invalid="ignore"):
                stopped = motor & (speed < cfg.stopped_kmh)
        else:
            rel = np.hypot(velocity_px[:, 0], velocity_px[:, 1]) / np.maximum(heights, 1.0)
            stopped = motor & (rel < cfg.stopped_rel_per_s)
        member = sc.regions.contains(ref)
        in_lane = member[:, :k]
        lane = np.where(in_lane.any(axis=1), in_lane.argmax(axis=1), -1) if k else _NO_LANE[:n]
        v = FrameView(
            t, t_ns, seq, slots, ids, classes, boxes, observed, speed, motor, lane,
            np.full(n, np.nan), np.full(n, np.nan), member[:, k:], stopped,
            np.zeros(n, dtype=np.bool_), np.zeros(k, dtype=np.int64), np.full(k, np.nan),
            np.zeros(k), np.zeros(k),
        )  # fmt: skip
        if k:
            self._lanes(v, dt_accrue, ground if sc.calibrated else ref, ref, heights)
        if len(sc.zone_polygons):
            self._zones(v)
        self.counted_now = []
        self.crossings_now = []
        if len(sc.spec.lines) and observed.any():
            o = observed
            widths = boxes[o, 2] - boxes[o, 0]
            self._lines(t, t_ns, slots[o], classes[o], ref[o], heights[o], widths, speed[o],
                        lane[o], foot_seen[o], cut[o], velocity_px[o])  # fmt: skip
        return v

    def _lanes(self, v: FrameView, dt: float, plane: F64, ref_px: F64, heights: F64) -> None:
        sc, cfg = self.scene, self.cfg
        k = len(sc.lane_polygons)
        has = v.lane >= 0
        lj = v.lane[has]
        v.lane_s[has] = np.einsum("ij,ij->i", plane[has] - sc.lane_origin[lj], sc.lane_axis[lj])
        v.lane_s_px[has] = np.einsum(
            "ij,ij->i", ref_px[has] - sc.lane_origin_px[lj], sc.lane_axis_px[lj]
        )
        members = v.motor & has
        v.lane_count[:] = np.bincount(v.lane[members], minlength=k)
        queue = np.zeros(k)
        # Vehicles in each lane from its downstream end upstream. A stopped vehicle is queued
        # (waiting for something, not an incident) when the vehicle directly ahead of it, or
        # the lane end, is within their lengths plus the gap, whatever that vehicle's own
        # measured speed, which for a car half hidden in a queue is often noise; or when the
        # vehicle directly ahead is itself slow, however far back this one stopped (should
        # that one drive off and this one stay, it is an incident then). The queue length
        # follows the chain of slow vehicles from the lane end.
        # A stopped vehicle that overlaps a stopped one downstream in the image, one hiding
        # the other's bottom, is right behind it too (boxes overlap so only within about a
        # vehicle's height of road). The tests above miss that pair when the one ahead is
        # the hidden one: its position comes from its bottom, which is out of sight, so it
        # lands far down the road or off the lane (then it may be in no lane at all).
        lengths = self._lengths[v.classes]
        with np.errstate(invalid="ignore"):
            slow = v.stopped | (v.speed_kmh < 2.0 * cfg.stopped_kmh)
        for j in sorted(set(v.lane[members & v.stopped].tolist())):
            idx = np.flatnonzero(members & (v.lane == j))
            dist = sc.lane_end_s[j] - v.lane_s[idx]
            others = np.flatnonzero(v.stopped & ((v.lane == j) | (v.lane < 0)))
            behind = _right_behind(
                v.boxes, ref_px, idx, others, v.lane[others] == j, sc.lane_axis_px[j]
            )
            prev, prev_len, prev_slow, chain = 0.0, 0.0, False, True
            for i in np.argsort(dist, kind="stable").tolist():
                me = idx[i]
                length = float(lengths[me])
                if sc.calibrated:
                    # A reference point may mark either end of its vehicle (the end nearer
                    # the camera; occlusion shifts it further), so allow both lengths.
                    limit = cfg.queue_gap_m + length + prev_len
                else:
                    limit = cfg.queue_gap_rel * heights[me]
                close = dist[i] - prev <= limit or bool(behind[i]) or prev_slow
                v.queued[me] = bool(v.stopped[me] and close)
                chain = chain and close and bool(slow[me])
                if chain:
                    queue[j] = max(queue[j], float(dist[i]))
                prev, prev_len, prev_slow = max(prev, float(dist[i])), length, bool(slow[me])
        if sc.calibrated:
            with np.errstate(divide="ignore", invalid="ignore"):
                v.lane_density[:] = v.lane_count / (sc.lane_length_m / 1000.0)
            known = members & np.isfinite(v.speed_kmh)
            v.lane_travel_s[:] = np.bincount(v.lane[known], minlength=k) * dt
            v.lane_travel_m[:] = (
                np.bincount(v.lane[known], weights=v.speed_kmh[known], minlength=k) / 3.6 * dt
            )
        for j, lane in enumerate(sc.spec.lanes):
            self.bins.frame_stats(
                Scope.LANE, lane.id, v.t_ns, int(v.lane_count[j]),
                float(v.lane_density[j]) if sc.calibrated else None,
                float(v.lane_travel_s[j]), float(v.lane_travel_m[j]),
                float(queue[j]) if sc.calibrated else None,
            )  # fmt: skip

    def _zones(self, v: FrameView) -> None:
        sc, tab, slots, t, t_ns = self.scene, self.table, v.slots, v.t, v.t_ns
        inside = v.zones
        prev = tab["z_in"][slots]
        changed = inside != prev
        if changed.any():
            for i, j in zip(*np.nonzero(changed & inside), strict=True):
                tab["z_t"][slots[i], j] = t
                zid = sc.spec.zones[j].id
                self.bins.add(Scope.ZONE, zid, int(v.classes[i]), 0, t_ns, {"volume": 1.0})
            for i, j in zip(*np.nonzero(changed & prev), strict=True):
                self._dwell(int(slots[i]), int(j), t, t_ns)
            tab["z_in"][slots] = inside
        count = inside.sum(axis=0)
        for j, zone in enumerate(sc.spec.zones):
            self.bins.frame_stats(Scope.ZONE, zone.id, t_ns, int(count[j]), None, 0.0, 0.0, None)

    def _dwell(self, slot: int, j: int, t: float, t_ns: int) -> None:
        tab = self.table
        dwell = max(0.0, t - float(tab["z_t"][slot, j]))
        tab["z_t"][slot, j] = np.nan
        self.bins.add(
            Scope.ZONE,
            self.scene.spec.zones[j].id,
            int(tab["cls"][slot]),
            0,
            t_ns,
            {"dwell_count": 1.0, "dwell_sum_s": dwell, "dwell_max_s": dwell},
        )

    def _lines(
        self,
        t: float,
        t_ns: int,
        slots: IntArr,
        classes: I64,
        ref: F64,
        heights: F64,
        widths: F64,
        speed: F64,
        lane: IntArr,
        foot_seen: Bool,
        cut: Bool,
        velocity: F64,
    ) -> None:
        sc, cfg, tab = self.scene, self.cfg, self.table
        self.inference.observe(slots, ref, widths, t, foot_seen, cut)
        d = signed_distances(ref, sc.line_segments)
        margin = np.maximum(cfg.line_margin_px, cfg.line_margin_rel * heights)[:, None]
        new = np.where(d > margin, 1, np.where(d < -margin, -1, 0)).astype(np.int8)
        side = tab["l_side"][slots]
        # Back over a line this track has crossed the other way: a U-turn only if the track
        # moves that way. A partial detection (the box cut short for a frame or two) moves
        # the reference point back across the line while the vehicle drives on; until the
        # motion agrees nothing is learnt (side and anchor kept), so a real U-turn is
        # counted once its velocity has turned.
        changed = (new != 0) & (side != 0) & (new != side)
        back = np.where(new > 0, _BIT[Direction.RIGHT_TO_LEFT], _BIT[Direction.LEFT_TO_RIGHT])
        returning = changed & ((tab["l_done"][slots] & back) != 0)
        if returning.any():  # rare: the velocity's side of each line only then
            toward = signed_distances(ref + velocity, sc.line_segments) - d  # +: to the right
            against = returning & ~(toward * new > 0)
            new[against] = 0
            changed &= ~against
        for i, li in true_cells(changed):
            s = int(slots[i])
            anchor = (float(tab["l_ax"][s, li]), float(tab["l_ay"][s, li]))
            ax, ay, bx, by = (float(x) for x in sc.line_segments[li])
            hit = segment_crossing(anchor, (float(ref[i, 0]), float(ref[i, 1])), (ax, ay, bx, by))
            if hit is None or not 0.0 <= hit[1] <= 1.0:
                continue  # crossed the line's extension, outside the drawn segment
            at = float(tab["l_at"][s, li])
            point = (anchor[0] + hit[0] * (ref[i, 0] - anchor[0]),
                     anchor[1] + hit[0] * (ref[i, 1] - anchor[1]))  # fmt: skip
            self._count(s, li, int(new[i, li]), int(classes[i]), t, t_ns, at + hit[0] * (t - at),
                        float(speed[i]), int(lane[i]), point, False)  # fmt: skip
        crossed = (new != 0) & (new != side)
        tab["l_pend"][slots] &= ~crossed
        for i, li, to, t_cross, point in self.inference.first_seen_past(
            slots, ref, t, foot_seen, new, margin
        ):
            self._count(int(slots[i]), li, to, int(classes[i]), t, t_ns, t_cross,
                        float(speed[i]), int(lane[i]), point, True)  # fmt: skip
        upd = new != 0
        tab["l_side"][slots] = np.where(upd, new, side)
        # The anchor, where a crossing is measured from, is the last point on the track's
        # side, from views with the bottom in sight: an occluder cutting a box off moves its
        # reference point up the image, off the track's path (near the end of a line, past
        # it). A change of side always moves it.
        anchor = upd & (foot_seen[:, None] | (new != side))
        tab["l_ax"][slots] = np.where(anchor, ref[:, 0:1], tab["l_ax"][slots])
        tab["l_ay"][slots] = np.where(anchor, ref[:, 1:2], tab["l_ay"][slots])
        tab["l_at"][slots] = np.where(anchor, t, tab["l_at"][slots])

    def _count(
        self,
        slot: int,
        li: int,
        to_side: int,
        cls: int,
        t: float,
        t_ns: int,
        t_cross: float,
        speed: float,
        lane: int,
        point: tuple[float, float],
        inferred: bool,
    ) -> None:
        """A crossing of line ``li`` onto side ``to_side`` (+1: its right) at ``t_cross``,
        found in the frame at ``t``/``t_ns``; ``inferred`` from motion (see ``_inferred``)."""
        sc, tab = self.scene, self.table
        direction = Direction.LEFT_TO_RIGHT if to_side > 0 else Direction.RIGHT_TO_LEFT
        wanted = sc.line_directions[li]
        bit = _BIT[direction]
        if wanted not in (Direction.NONE, direction) or tab["l_done"][slot, li] & bit:
            return
        width = float(tab["width"][slot])
        if self.recent.same_vehicle(li, int(direction), t_cross, point, width, inferred):
            return
        self.recent.add(li, int(direction), t_cross, point, inferred)
        tab["l_done"][slot, li] |= bit
        cross_ns = t_ns - round((t - t_cross) * 1e9)
        sp = speed if math.isfinite(speed) else None
        line_id = sc.spec.lines[li].id
        self.bins.count(Scope.LINE, line_id, cls, int(direction), t_ns, sp)
        prev = self.last_crossing.get((li, int(direction)))
        if prev is not None and t_cross > prev[0]:
            headway = t_cross - prev[0]
            values = {"headway_count": 1.0, "headway_sum_s": headway}
            if prev[2] > 1.0:  # the leader's passing time needs its speed
                passing = self.cfg.vehicle_length_m[prev[1]] / (prev[2] / 3.6)
                values.update(gap_count=1.0, gap_sum_s=max(0.0, headway - passing))
            self.bins.add(Scope.LINE, line_id, cls, int(direction), t_ns, values)
        if prev is None or t_cross > prev[0]:  # an inferred crossing may come late
            self.last_crossing[(li, int(direction))] = (t_cross, cls, speed)
        lane_id = sc.spec.lanes[lane].id if lane >= 0 else ""
        self.crossings_now.append(
            LineCrossing(line_id, int(tab["id"][slot]), ObjectClass(cls), direction, cross_ns, sp,
                         lane_id)
        )  # fmt: skip
        if not tab["counted"][slot]:
            tab["counted"][slot] = True
            self.bins.count(Scope.CAMERA, "", cls, 0, t_ns, sp)
            if lane_id:
                self.bins.count(Scope.LANE, lane_id, cls, 0, t_ns, sp)
            self.counted_now.append(cls)

    def start_tracks(self, slots: IntArr, birth: F64) -> None:
        """Line sides of newly confirmed tracks, from their first (pre-confirmation) box."""
        if len(slots) == 0 or len(self.scene.spec.lines) == 0:
            return
        cfg, tab = self.cfg, self.table
        ref = np.column_stack([(birth[:, 0] + birth[:, 2]) * 0.5, birth[:, 3]])
        d = signed_distances(ref, self.scene.line_segments)
        margin = np.maximum(cfg.line_margin_px, cfg.line_margin_rel * (birth[:, 3] - birth[:, 1]))
        side = np.where(d > margin[:, None], 1, np.where(d < -margin[:, None], -1, 0))
        known = side != 0
        tab["l_side"][slots] = side.astype(np.int8)
        tab["l_ax"][slots] = np.where(known, ref[:, 0:1], np.nan)
        tab["l_ay"][slots] = np.where(known, ref[:, 1:2], np.nan)
        tab["l_at"][slots] = np.where(known, birth[:, 4:5], np.nan)
        self.inference.start(slots, birth[:, 4])

    # -- track ends --------------------------------------------------------------------------

    def end_tracks(self, slots: IntArr, t: float, t_ns: int) -> None:
        """Tracks that ended: crossings of those that left the picture heading for a line
        (see ``_inferred``); zone stays closed (dwell up to when they were last seen)."""
        tab = self.table
        if len(self.scene.spec.lines):
            for i, li, to, t_cross, point in self.inference.left_the_picture(slots):
                s = int(slots[i])
                self._count(s, li, to, int(tab["cls"][s]), t, t_ns, t_cross,
                            float(tab["speed"][s]), -1, point, True)  # fmt: skip
        for s in slots.tolist():
            for j in np.flatnonzero(tab["z_in"][s]).tolist():
                self._dwell(s, j, float(tab["seen_t"][s]), t_ns)
                tab["z_in"][s, j] = False

    def state(self) -> dict[str, Any]:
        # JSON has no NaN: an unknown speed is stored as None.
        return {
            "last": [
                [li, d, tc, c, sp if math.isfinite(sp) else None]
                for (li, d), (tc, c, sp) in sorted(self.last_crossing.items())
            ],
            "recent": self.recent.state(),
        }

    def restore(self, s: dict[str, Any] | list[list[Any]]) -> None:
        # States saved before inferred crossings are the list of last crossings alone.
        last, recent = (s, []) if isinstance(s, list) else (s["last"], s["recent"])
        self.last_crossing = {
            (int(li), int(d)): (float(tc), int(c), math.nan if sp is None else float(sp))
            for li, d, tc, c, sp in last
        }
        self.recent.restore(recent)


def _right_behind(
    boxes: F64, ref: F64, rows: IntArr, others: IntArr, others_in_lane: Bool, axis: F64
) -> Bool:
    """Which of the rows stand right behind one of the others: one downstream (along the
    lane's image axis) whose box overlaps theirs with the bottom edge of one of the two
    inside the other (that one is farther from the camera, hidden by the other). One in no
    lane counts only if its own bottom is the hidden one, which is why it is in no lane."""
    a, b = boxes[rows][:, None, :], boxes[others][None, :, :]
    overlap_x = (a[..., 0] < b[..., 2]) & (b[..., 0] < a[..., 2])
    other_hidden = (a[..., 1] <= b[..., 3]) & (b[..., 3] < a[..., 3])
    own_hidden = (b[..., 1] <= a[..., 3]) & (a[..., 3] < b[..., 3]) & others_in_lane[None, :]
    downstream = (ref[others][None, :, :] - ref[rows][:, None, :]) @ axis > 0.0
    out: Bool = np.any(overlap_x & (other_hidden | own_hidden) & downstream, axis=1)
    return out
