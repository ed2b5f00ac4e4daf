"""Incidents as debounced events: one event per incident, closed when it clears.

Per-track incidents (stopped vehicle, wrong way, pedestrian on the roadway) share one
debouncer: a condition must hold, with interruptions shorter than its clear time, for its
onset time before an event opens; the event closes once the condition has been absent for
the clear time, or when the track ends. Start and end are the capture times of the first and
last frames in which the condition held. Everything is vectorised over the tracks present;
Python code runs only for the few tracks that open, refresh or close an event.

* Stopped vehicle: a motor vehicle in a lane or zone, stopped (speed under ``stopped_kmh``),
  and not queued (waiting behind the lane's downstream end or a vehicle ahead in its lane,
  see ``_measures``): a red light or a jam is not an incident, the broken-down car at the head
  of the jam is.
* Wrong way: a motor vehicle that has moved ``wrong_way_distance_m`` against the lane's
  travel direction since its furthest point downstream in that lane. Net displacement, so
  box jitter does not accumulate; the start is when it was at that furthest point.
* Pedestrian on roadway: a person whose reference point is inside a lane (and not in an
  exempt zone such as a zebra crossing).
* Congestion, per lane: every 1-second bucket of a ``congestion_window_s`` run is at level
  of service E or F (or, uncalibrated, above ``congestion_occupancy``). Requiring every
  bucket, not the mean, is what keeps a signal cycle's queue, which clears on green, from
  raising it. It clears after ``congestion_clear_s`` below the lower threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.analytics._events import EventBook
from its_camera_ai.analytics._measures import FrameView
from its_camera_ai.analytics._records import (
    EventEvidence,
    EventRecord,
    EventType,
    ObjectClass,
    Severity,
    level_of_service,
)
from its_camera_ai.analytics._tracks import TrackTable, true_cells
from its_camera_ai.common import AnalyticsEngineSettings
from its_camera_ai.scene import CameraScene, distance_to_boundary

__all__ = ["IncidentDetector"]

F64 = NDArray[np.float64]
IntArr = NDArray[np.intp]
_NS = 1_000_000_000
STOPPED, WRONG_WAY, PEDESTRIAN = 0, 1, 2
_KINDS = (EventType.STOPPED_VEHICLE, EventType.WRONG_WAY, EventType.PEDESTRIAN_ON_ROADWAY)
_PREFIX = ("sv", "ww", "pd")
_PERSON = int(ObjectClass.PERSON)  # an enum member costs numpy a slow conversion per use
_LANE_FIELDS = (
    "sec",
    "frames",
    "occ",
    "dens",
    "dist",
    "time",
    "first_ns",
    "last_ns",
    "run_start_ns",
    "run_buckets",
    "calm_start_ns",
    "congested_last_ns",
)


def _name(cls: int) -> str:
    try:
        return ObjectClass(cls).name.capitalize()
    except ValueError:
        return "Object"


class IncidentDetector:
    def __init__(
        self, scene: CameraScene, cfg: AnalyticsEngineSettings, table: TrackTable, book: EventBook
    ) -> None:
        self.scene, self.cfg, self.table, self.book = scene, cfg, table, book
        table.add("i_on", (3,), np.int64, 0)  # first frame of the current condition run, ns
        table.add("i_last", (3,), np.int64, 0)  # last frame the condition held, ns
        table.add("i_open", (3,), np.bool_, False)
        table.add("ww_lane", (), np.int64, -1)
        table.add("ww_smax", (), np.float64, np.nan)
        table.add("ww_smax_ns", (), np.int64, 0)
        table.add("ww_spx", (), np.float64, np.nan)  # image coordinate at that point
        table.add("ww_smin", (), np.float64, np.nan)  # furthest point upstream, and in the image
        table.add("ww_spx_min", (), np.float64, np.nan)
        table.add("ww_s", (), np.float64, np.nan)  # previous lane coordinate and its time
        table.add("ww_t", (), np.float64, np.nan)
        self.onset_ns = np.array([cfg.stopped_onset_s, 0.0, cfg.pedestrian_onset_s]) * _NS
        self.clear_ns = (
            np.array([cfg.stopped_clear_s, cfg.wrong_way_clear_s, cfg.pedestrian_clear_s]) * _NS
        )
        zone_ids = [z.id for z in scene.spec.zones]
        self.exempt = np.array([z in cfg.pedestrian_exempt_zones for z in zone_ids], dtype=bool)
        k = len(scene.spec.lanes)
        self.lanes: dict[str, NDArray[Any]] = {
            name: np.zeros(k, dtype=np.float64 if name in ("dens", "dist", "time") else np.int64)
            for name in _LANE_FIELDS
        }
        self.lanes["sec"][:] = -1
        # Events whose track ended, waiting for adoption: key -> (deadline ns, end ns).
        self.pending: dict[str, tuple[int, int]] = {}

    # -- per frame ---------------------------------------------------------------------------

    def frame(self, v: FrameView) -> list[EventRecord]:
        out: list[EventRecord] = []
        if self.pending:
            self._expire(v.t_ns, out)
        if len(v.slots):
            self._tracks(v, out)
        if len(self.scene.spec.lanes):
            self._congestion(v, out)
        return out

    def _conditions(self, v: FrameView) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        tab = self.table
        n = len(v.slots)
        cond = np.zeros((n, 3), dtype=np.bool_)
        in_lane = v.lane >= 0
        any_zone = v.zones.any(axis=1) if v.zones.shape[1] else np.zeros(n, dtype=np.bool_)
        # "Outside congestion" (EventType contract): not in a lane with an open congestion event.
        congested = np.array(
            [self.book.is_open(f"cg:{a.id}") for a in self.scene.spec.lanes] + [False]
        )  # index -1: no lane
        big = (v.boxes[:, 3] - v.boxes[:, 1]) >= self.cfg.incident_min_box_px
        cond[:, STOPPED] = v.stopped & ~v.queued & (in_lane | any_zone) & ~congested[v.lane] & big
        # A wrong-way driver waiting at a light is the same incident, already reported.
        cond[:, STOPPED] &= ~tab["i_open"][v.slots, WRONG_WAY]
        cond[:, WRONG_WAY], right_way = self._wrong_way(v)
        exempt = (v.zones & self.exempt).any(axis=1) if v.zones.shape[1] else False
        cond[:, PEDESTRIAN] = (v.classes == _PERSON) & in_lane & ~exempt
        return cond, right_way

    def _wrong_way(self, v: FrameView) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """(against the lane, with the lane): net movement, in the current lane, of at least
        the configured distance from the furthest point downstream (upstream) in it."""
        cfg, tab, n = self.cfg, self.table, len(v.slots)
        s, spx = v.lane_s, v.lane_s_px
        heights = v.boxes[:, 3] - v.boxes[:, 1]
        # A step faster than any car (an id switch onto a neighbour) breaks the record, like a
        # lane change: what follows is measured afresh, not added to the jump.
        dt = np.maximum(v.t - tab["ww_t"][v.slots], 1e-3)
        step = np.abs(s - tab["ww_s"][v.slots]) / dt
        limit_step = cfg.wrong_way_max_kmh / 3.6 if self.scene.calibrated else 10.0 * heights
        with np.errstate(invalid="ignore"):
            jump = step > limit_step
        fresh = (tab["ww_lane"][v.slots] != v.lane) | np.isnan(tab["ww_smax"][v.slots]) | jump
        tab["ww_lane"][v.slots] = v.lane
        tab["ww_s"][v.slots], tab["ww_t"][v.slots] = s, v.t
        smax, smax_ns = tab["ww_smax"][v.slots], tab["ww_smax_ns"][v.slots]
        smin, pmax, pmin = tab["ww_smin"][v.slots], tab["ww_spx"][v.slots], tab["ww_spx_min"][
            v.slots]  # fmt: skip
        with np.errstate(invalid="ignore"):
            ahead, behind = fresh | (s > smax), fresh | (s < smin)
        tab["ww_smax"][v.slots] = smax = np.where(ahead, s, smax)
        tab["ww_smax_ns"][v.slots] = smax_ns = np.where(ahead, v.t_ns, smax_ns)
        tab["ww_spx"][v.slots] = pmax = np.where(ahead, spx, pmax)
        tab["ww_smin"][v.slots] = smin = np.where(behind, s, smin)
        tab["ww_spx_min"][v.slots] = pmin = np.where(behind, spx, pmin)
        limit = (
            np.full(n, cfg.wrong_way_distance_m)
            if self.scene.calibrated
            else cfg.wrong_way_distance_rel * heights
        )
        image_limit = cfg.wrong_way_min_image_rel * heights
        # Seen, not predicted, and big enough to be tracked reliably: far away, one id switch
        # between two cars a few pixels apart is metres of "reversing".
        moving = v.motor & (v.lane >= 0) & v.observed & (heights >= cfg.incident_min_box_px)
        if self.scene.calibrated:
            # ...and moving at a speed a car can drive: a track hopping from car to car
            # along a dense stream (id switches) "moves" one spacing per frame.
            with np.errstate(invalid="ignore"):
                moving &= v.speed_kmh <= cfg.wrong_way_max_kmh  # NaN: too little history
        with np.errstate(invalid="ignore"):
            # The movement must also be resolvable in the image (a box height at least): far
            # away, where a pixel is metres of road, box jitter and a reference point off the
            # vehicle's footprint would otherwise fake metres of reversing.
            against = moving & ((smax - s) >= limit) & ((pmax - spx) >= image_limit)
            along = moving & ((s - smin) >= limit) & ((spx - pmin) >= image_limit)
        # Inside the lane, not on its edge: an occluded box's bottom-centre can stray a little
        # over the line into the oncoming lane, a wrong-way driver drives in the lane.
        cand = against.nonzero()[0]
        if len(cand):
            b = v.boxes[cand]
            pts = np.column_stack([(b[:, 0] + b[:, 2]) * 0.5, b[:, 3]])
            h = self.scene.homography
            if h is not None:
                pts = h.to_ground(pts)
            for j in np.unique(v.lane[cand]).tolist():
                m = v.lane[cand] == j
                margin = distance_to_boundary(pts[m], self.scene.lane_plane_polygons[j])
                against[cand[m]] = margin >= cfg.wrong_way_inner_fraction * self.scene.lane_width[j]
        return against, along

    def _tracks(self, v: FrameView, out: list[EventRecord]) -> None:
        tab, t_ns = self.table, v.t_ns
        cond, right_way = self._conditions(v)
        on, last, is_open = tab["i_on"][v.slots], tab["i_last"][v.slots], tab["i_open"][v.slots]
        # A wrong-way event holds across lane gaps (an intersection, a lane change) until the
        # vehicle is seen going the right way, or its track ends: one event per driver.
        held = cond.copy()
        held[:, WRONG_WAY] |= is_open[:, WRONG_WAY] & ~right_way
        on = np.where(cond & (on == 0), t_ns, on)
        # The end of an incident is the last frame it was seen, not predicted (coasting).
        last = np.where(held & v.observed[:, None], t_ns, last)
        gone = ~held & (on != 0) & ((t_ns - last) > self.clear_ns)
        for i, k in true_cells(gone & is_open):
            rec = self.book.close(self._key(k, int(v.ids[i])), int(last[i, k]), t_ns)
            if rec is not None:
                out.append(rec)
        on = np.where(gone, 0, on)
        is_open = is_open & ~gone
        start = on.copy()
        start[:, WRONG_WAY] = np.where(
            cond[:, WRONG_WAY], tab["ww_smax_ns"][v.slots], start[:, WRONG_WAY]
        )
        opening = cond & ~is_open & ((t_ns - on) >= self.onset_ns)
        for i, k in true_cells(opening):
            adopted = self._adopt(v, i, k) if k != WRONG_WAY else None
            out.append(adopted or self._open(v, i, k, int(start[i, k])))
        is_open |= opening
        for i, k in true_cells(cond & is_open & ~opening):
            rec = self.book.touch(
                self._key(k, int(v.ids[i])),
                t_ns,
                self._evidence(v, i),
                self._describe(v, i, k, int(on[i, k])),
            )
            if rec is not None:
                out.append(rec)
        tab["i_on"][v.slots], tab["i_last"][v.slots], tab["i_open"][v.slots] = on, last, is_open

    def _adopt(self, v: FrameView, i: int, kind: int) -> EventRecord | None:
        """A standing (or walking) object whose track was lost comes back as a new track:
        if an open event of the same kind belongs to a track not seen in this frame and its
        last evidence is within reach of this object, it continues that event."""
        box = v.boxes[i]
        size = max(float(box[2] - box[0]), float(box[3] - box[1]))
        seen = set(v.ids[v.observed].tolist())
        # How far the object may have gone unseen: a person walks, a stopped car stays.
        walk = self.cfg.adopt_walk_mps if kind == PEDESTRIAN else 0.0
        for rec in self.book.open_records():
            if rec.type != _KINDS[kind] or rec.track_id is None or rec.track_id in seen:
                continue
            ev = rec.evidence
            if ev is None or ev.box is None:
                continue
            gap_s = max(0.0, (v.t_ns - ev.capture_time_ns) / _NS)
            then, now = self._ref_points(np.array([ev.box, box], dtype=np.float64))
            if self.scene.calibrated:
                reach = self.cfg.adopt_radius_m + walk * gap_s
            else:
                reach = size * (1.0 + walk * gap_s)
            if not np.hypot(*(then - now)) <= reach:
                continue
            old = self.table.lookup(np.array([rec.track_id], dtype=np.int64))[0]
            if old >= 0:
                self.table["i_open"][old, kind] = False
            old_key = self._key(kind, rec.track_id)
            self.pending.pop(old_key, None)
            new_key = self._key(kind, int(v.ids[i]))
            return self.book.adopt(old_key, new_key, int(v.ids[i]), v.t_ns)
        return None

    def _ref_points(self, boxes: F64) -> F64:
        """Reference points (bottom-centre) on the road plane when calibrated, else pixels."""
        pts = np.column_stack([(boxes[:, 0] + boxes[:, 2]) * 0.5, boxes[:, 3]])
        h = self.scene.homography
        out: F64 = h.to_ground(pts) if h is not None else pts
        return out

    @staticmethod
    def _key(kind: int, track_id: int) -> str:
        return f"{_PREFIX[kind]}:{track_id}"

    def _evidence(self, v: FrameView, i: int) -> EventEvidence:
        sp = float(v.speed_kmh[i])
        box = v.boxes[i]
        return EventEvidence(
            v.seq,
            v.t_ns,
            (float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            sp if math.isfinite(sp) else None,
        )

    def _where(self, v: FrameView, i: int) -> tuple[str, str]:
        lane = int(v.lane[i])
        zones = np.flatnonzero(v.zones[i]) if v.zones.shape[1] else np.zeros(0, dtype=np.intp)
        lane_id = self.scene.spec.lanes[lane].id if lane >= 0 else ""
        zone_id = self.scene.spec.zones[int(zones[0])].id if len(zones) else ""
        return lane_id, zone_id

    def _describe(self, v: FrameView, i: int, kind: int, start_ns: int) -> str:
        lane_id, zone_id = self._where(v, i)
        place = f"lane {lane_id}" if lane_id else f"zone {zone_id}"
        secs = max(0.0, (v.t_ns - start_ns) / _NS)
        if kind == STOPPED:
            return f"{_name(int(v.classes[i]))} stopped in {place} for {secs:.0f} s"
        if kind == WRONG_WAY:
            return f"{_name(int(v.classes[i]))} travelling the wrong way in {place}"
        return f"Person on the roadway in {place} for {secs:.0f} s"

    def _open(self, v: FrameView, i: int, kind: int, start_ns: int) -> EventRecord:
        lane_id, zone_id = self._where(v, i)
        if kind == STOPPED:
            severity = Severity.HIGH if lane_id else Severity.MEDIUM
        elif kind == WRONG_WAY:
            severity = Severity.CRITICAL
        else:
            severity = Severity.HIGH
        return self.book.open(
            self._key(kind, int(v.ids[i])),
            _KINDS[kind],
            severity,
            start_ns,
            v.t_ns,
            track_id=int(v.ids[i]),
            object_class=ObjectClass(int(v.classes[i])),
            lane_id=lane_id,
            zone_id=zone_id,
            evidence=self._evidence(v, i),
            description=self._describe(v, i, kind, start_ns),
        )

    def end_tracks(self, slots: IntArr, t_ns: int) -> list[EventRecord]:
        """Open events of tracks that ended wait ``incident_grace_s`` for a new track of the
        same object to adopt them (an occluded pedestrian, a car hidden by a truck), then
        close at the last frame their condition held."""
        tab = self.table
        grace = int(self.cfg.incident_grace_s * _NS)
        for s in slots.tolist():
            for k in np.flatnonzero(tab["i_open"][s]).tolist():
                key = self._key(k, int(tab["id"][s]))
                self.pending[key] = (t_ns + grace, int(tab["i_last"][s, k]))
        return []

    def _expire(self, t_ns: int, out: list[EventRecord]) -> None:
        for key in [k for k, (deadline, _) in self.pending.items() if t_ns >= deadline]:
            _, last = self.pending.pop(key)
            rec = self.book.close(key, last, t_ns)
            if rec is not None:
                out.append(rec)

    # -- congestion --------------------------------------------------------------------------

    def _congestion(self, v: FrameView, out: list[EventRecord]) -> None:
        ln = self.lanes
        sec = v.t_ns // _NS
        for j in range(len(self.scene.spec.lanes)):
            if ln["sec"][j] != sec:
                if ln["sec"][j] >= 0 and ln["frames"][j] > 0:
                    self._close_bucket(j, v, out)
                ln["sec"][j], ln["frames"][j], ln["occ"][j] = sec, 0, 0
                ln["dens"][j] = ln["dist"][j] = ln["time"][j] = 0.0
                ln["first_ns"][j] = v.t_ns
            ln["frames"][j] += 1
            ln["occ"][j] += int(v.lane_count[j] > 0)
            if math.isfinite(v.lane_density[j]):
                ln["dens"][j] += v.lane_density[j]
            ln["dist"][j] += v.lane_travel_m[j]
            ln["time"][j] += v.lane_travel_s[j]
            ln["last_ns"][j] = v.t_ns

    def _close_bucket(self, j: int, v: FrameView, out: list[EventRecord]) -> None:
        cfg, ln = self.cfg, self.lanes
        frames = float(ln["frames"][j])
        if self.scene.calibrated:
            level = float(ln["dens"][j]) / frames
            congested = level > cfg.congestion_density
            if cfg.congestion_max_speed_kmh is not None and ln["time"][j] > 0:
                congested &= 3.6 * ln["dist"][j] / ln["time"][j] < cfg.congestion_max_speed_kmh
            calm = level < cfg.congestion_clear_density
        else:
            level = float(ln["occ"][j]) / frames
            congested = level >= cfg.congestion_occupancy
            calm = level < cfg.congestion_clear_occupancy
        first, last = int(ln["first_ns"][j]), int(ln["last_ns"][j])
        if congested:
            if ln["run_start_ns"][j] == 0:
                ln["run_start_ns"][j], ln["run_buckets"][j] = first, 0
            ln["run_buckets"][j] += 1
            ln["congested_last_ns"][j] = last
        else:
            ln["run_start_ns"][j], ln["run_buckets"][j] = 0, 0
        ln["calm_start_ns"][j] = (ln["calm_start_ns"][j] or first) if calm else 0
        lane_id = self.scene.spec.lanes[j].id
        key = f"cg:{lane_id}"
        speed = 3.6 * float(ln["dist"][j]) / float(ln["time"][j]) if ln["time"][j] > 0 else None
        evidence = EventEvidence(v.seq, last, None, speed)
        if self.scene.calibrated:
            los = level_of_service(level).name
            text = f"Congestion in lane {lane_id}: {level:.0f} veh/km (LOS {los})"
        else:
            text = f"Congestion in lane {lane_id}: occupancy {level:.0%}"
        run = int(ln["run_start_ns"][j])
        if not self.book.is_open(key):
            window = cfg.congestion_window_s
            if run and (last - run) >= window * _NS and ln["run_buckets"][j] >= 0.8 * window:
                out.append(
                    self.book.open(
                        key,
                        EventType.CONGESTION,
                        Severity.MEDIUM,
                        run,
                        v.t_ns,
                        lane_id=lane_id,
                        evidence=evidence,
                        description=text,
                    )
                )
        elif ln["calm_start_ns"][j] and (last - int(ln["calm_start_ns"][j])) >= (
            cfg.congestion_clear_s * _NS
        ):
            rec = self.book.close(key, int(ln["congested_last_ns"][j]), v.t_ns)
            if rec is not None:
                out.append(rec)
        elif congested:
            rec = self.book.touch(key, v.t_ns, evidence, text)
            if rec is not None:
                out.append(rec)

    # -- persistence -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: arr.tolist() for name, arr in self.lanes.items()}
        out["pending"] = [[k, d, e] for k, (d, e) in sorted(self.pending.items())]
        return out

    def restore(self, s: dict[str, Any]) -> None:
        for name, arr in self.lanes.items():
            arr[:] = np.asarray(s[name], dtype=arr.dtype)
        self.pending = {str(k): (int(d), int(e)) for k, d, e in s["pending"]}
