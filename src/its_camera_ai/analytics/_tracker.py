"""ByteTrack-style multi-object tracker for one camera, vectorised over tracks.

Per frame: predict every track with its Kalman filter; associate high-score detections with
followed and lost tracks (IoU, lost tracks' boxes buffered by the time they have been lost);
associate low-score detections with the followed tracks left over (recovering partly occluded
objects whose score dropped); associate tentative tracks with the high-score detections left
over; start tentative tracks from confident leftovers. Tentative tracks need ``min_hits``
consecutive matches to be confirmed and given an id, so a blip never surfaces and never uses
up an id. Lost tracks are predicted for ``lost_ttl_s`` and can be picked up again with their
id, which is what keeps ids through an occlusion.

With a calibrated camera, lost tracks are predicted on the road plane instead of in the
image: at constant ground velocity from the last view with the bottom in sight (the
reference point on the road), their size following the depth. An oncoming vehicle hidden
behind nearer traffic for a second speeds up and doubles in size in the image; predicted so,
it is found again where it re-appears, with its id, and a counting line it crossed unseen is
still counted (the move from before the gap to after it crosses the line).

Matches are class-compatible only (a person never continues a car's track); the reported
class is the score-weighted vote over the track's detections, so a car momentarily detected
as a truck stays a car.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.analytics._assign import assign, iou_matrix
from its_camera_ai.analytics._geometry import Homography, inside_frame
from its_camera_ai.analytics._kalman import BoxFilters, boxes_to_xywh, xywh_to_boxes
from its_camera_ai.analytics._records import NUM_CLASSES
from its_camera_ai.analytics._settings import TrackerSettings
from its_camera_ai.analytics._tracks import array_from_json, array_to_json

__all__ = ["ByteTracker", "TrackerOutput"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
IntArr = NDArray[np.intp]

TENTATIVE, TRACKED, LOST = 0, 1, 2
# Columns of ``ByteTracker.ground_fix``: the filtered box (cx, cy, w, h) and capture time of
# the last view with the bottom in sight, and the ground velocity (m/s).
_BOX, _T, _V, _VX = slice(0, 4), 4, slice(5, 7), 5
_FIX_COLS = 7
# (cx, cy) + (w, h) * this: a box's bottom-centre; (u, v, w, h) - h * this: its centre form.
_TO_FOOT, _FOOT_TO_CENTRE = np.array([0.0, 0.5]), np.array([0.0, 0.5, 0.0, 0.0])
# A box dimension under this fraction of the prediction counts as cut by an occluder.
_CUT = 0.9
# Association groups by class number: motor vehicles may be confused with each other by the
# detector, but not with two-wheelers or people.
_GROUP = np.array([0, 1, 1, 1, 1, 2, 3], dtype=np.int8)


@dataclass(frozen=True, slots=True)
class TrackerOutput:
    """Confirmed tracks present in this frame, and what ended."""

    ids: I64  # (T,) public track ids
    boxes: F64  # (T, 4) filtered box (observed) or prediction (coasting)
    velocity: F64  # (T, 2) box-centre velocity, pixels per second
    classes: I64  # (T,) ObjectClass numbers (vote)
    observed: NDArray[np.bool_]  # (T,) matched a detection in this frame
    partial: NDArray[np.bool_]  # (T,) ...but a partial view (cut by an occluder or shrunk)
    # (T,) ...a view whose bottom edge is in sight: not partial, and its bottom-centre not
    # inside a box reaching lower (in front of it). Only there is that point on the road.
    foot_seen: NDArray[np.bool_]
    det_index: I64  # (T,) the matched detection row, -1 when coasting
    ended: I64  # ids of confirmed tracks removed in this frame
    # (T, 5) first box and capture time (x1, y1, x2, y2, t) of each track, from before its
    # confirmation: where a line crossing during the confirmation delay starts.
    birth: F64
    det_track_ids: I64  # (N,) per input detection: the confirmed track it joined, or -1


class ByteTracker:
    def __init__(self, cfg: TrackerSettings, ground: Homography | None = None) -> None:
        self.cfg = cfg
        self.ground = ground
        self.f = BoxFilters.empty()
        self.status = np.zeros(0, dtype=np.int8)
        self.hits = np.zeros(0, dtype=np.int64)
        self.ids = np.zeros(0, dtype=np.int64)  # 0 while tentative
        self.last_t = np.zeros(0)  # capture time of the last match, seconds
        self.ref_wh = np.zeros((0, 2))  # decaying maximum of recent box width and height
        self.still = np.zeros(0, dtype=np.bool_)  # standing still at the last full view
        self.birth = np.zeros((0, 5))  # first box and its time
        self.votes = np.zeros((0, NUM_CLASSES))
        # Calibrated: each track's last view with its bottom in sight (where it was on the
        # road) and its ground velocity (the engine's speed estimate): what a lost track is
        # predicted from. NaN where unknown.
        self.ground_fix = np.zeros((0, _FIX_COLS))
        self._out_rows = np.zeros(0, dtype=np.intp)  # rows of the last output's tracks
        self.next_id = 1
        self.time: float | None = None

    def __len__(self) -> int:
        return len(self.status)

    def set_ground(self, ground: Homography | None) -> None:
        """A new calibration: positions in the old one's metres mean nothing in it."""
        self.ground = ground
        self.ground_fix[:] = np.nan

    def set_ground_velocity(self, velocity: F64) -> None:
        """Ground velocities (m/s; (T, 2) in the last output's order, NaN where unknown): the
        least-squares slope of the tracks' recent ground positions (see ``_tracks``), which,
        unlike the image filter's velocity, does not lag behind perspective. Taken only for
        tracks seen with their bottom in sight in that frame; otherwise the last one stays."""
        rows = self._out_rows
        known = np.isfinite(velocity[:, 0]) & (self.ground_fix[rows, _T] == self.time)
        self.ground_fix[rows[known], _V] = velocity[known]

    # -- the per-frame update ----------------------------------------------------------------

    def update(
        self,
        boxes: F64,
        scores: F64,
        classes: I64,
        t: float,
        frame_size: tuple[int, int] | None = None,
    ) -> TrackerOutput:
        """One frame's detections at capture time t (s); ``frame_size`` (width, height) tells
        boxes cut by the frame's border."""
        cfg = self.cfg
        dt = 0.0 if self.time is None else max(0.0, t - self.time)
        self.time = t
        lost = self.status == LOST
        # Unlike ByteTrack, a lost track keeps its size trend: an approaching vehicle hidden
        # for a second doubles in size, and a frozen box would never be matched again. Partial
        # views cannot shrink the size estimate (see below), so the trend is a real one.
        # A stationary object hidden from view stays where it was: no drift from the small
        # residual velocity of a stopped track over a long occlusion.
        self.f.v[lost & self.still] = 0.0
        self.f.predict(dt, cfg)
        grounded = self._predict_on_ground(lost, t)
        pred = xywh_to_boxes(self.f.x)
        track_group = _GROUP[self.votes.argmax(axis=1)] if len(self) else _GROUP[:0]
        det_group = _GROUP[classes]
        high = scores >= cfg.high_score
        low = (scores >= cfg.low_score) & ~high
        row_det = np.full(len(self), -1, dtype=np.intp)
        row_partial = np.zeros(len(self), dtype=np.bool_)
        row_foot = np.zeros(len(self), dtype=np.bool_)
        det_used = np.zeros(len(boxes), dtype=np.bool_)

        def match(
            rows: IntArr, dets: IntArr, min_iou: float, track_boxes: F64, det_grow: float = 0.0
        ) -> None:
            if len(rows) == 0 or len(dets) == 0:
                return
            det_boxes = boxes[dets]
            if det_grow:
                det_boxes = _expand(det_boxes, np.full(len(dets), det_grow))
            iou = iou_matrix(track_boxes, det_boxes)
            cost = 1.0 - iou
            cost[track_group[rows][:, None] != det_group[dets][None, :]] = np.inf
            r, c = assign(cost, 1.0 - min_iou)
            row_det[rows[r]] = dets[c]
            det_used[dets[c]] = True

        # Stage 1: confident detections against followed and lost tracks.
        pool = (self.status != TENTATIVE).nonzero()[0]
        grow = np.minimum(cfg.lost_expand_max, cfg.lost_expand_per_s * (t - self.last_t[pool]))
        grow = np.where(self.status[pool] == LOST, np.maximum(grow, 0.0), 0.0)
        match(pool, high.nonzero()[0], cfg.iou_high, _expand(pred[pool], grow))
        # Stage 2: weak detections against followed tracks still unmatched.
        rest = ((self.status == TRACKED) & (row_det < 0)).nonzero()[0]
        match(rest, low.nonzero()[0], cfg.iou_low, pred[rest])
        # Stage 3: tentative tracks against the confident detections left. Their velocity is
        # still unknown, so both boxes are buffered (C-BIoU): a fast object near the camera
        # moves most of its size per frame and would never overlap itself enough to confirm.
        tent = (self.status == TENTATIVE).nonzero()[0]
        buf = cfg.tentative_expand
        tent_boxes = _expand(pred[tent], np.full(len(tent), buf))
        match(tent, (high & ~det_used).nonzero()[0], cfg.iou_tentative, tent_boxes, buf)

        rows_m = (row_det >= 0).nonzero()[0]
        dets_m = row_det[rows_m]
        meas = boxes_to_xywh(boxes[dets_m])
        # A box much smaller than the prediction is a partial view (the object is going
        # behind something): keep the association, but let it barely move the state, or the
        # filter collapses the box and invents a velocity from the shrinking silhouette.
        # The reference is a slowly decaying maximum of the track's recent width and height:
        # an occluder sliding over the object shrinks its box within a few frames, faster
        # than perspective ever does, and gradually, so the previous frame is no reference.
        decay = np.exp(-(t - self.last_t[rows_m]) / cfg.size_memory_s)[:, None]
        ref = self.ref_wh[rows_m] * decay
        # A track predicted on the ground knows its size from the depth ratio, which its
        # memory from before it was lost does not (the object came nearer or went farther):
        # a re-appearing object still half hidden must not be taken for whole.
        g = grounded[rows_m]
        ref[g] = np.maximum(ref[g], self.f.x[rows_m[g], 2:4])
        partial = np.any(meas[:, 2:4] < cfg.partial_shrink * ref, axis=1)
        # Occlusion reasoning: another object whose box reaches lower in the image stands
        # between this one and the camera; where their boxes overlap, this one is hidden.
        # ...which matters only if it did cut this box (in dense traffic most boxes overlap
        # the one in front without losing anything), so only such boxes are looked into.
        # A clear cut, well beyond box noise: flagging noise-sized shrinks (but not growths)
        # would bias sizes upwards and walk tracks onto the vehicle behind in dense traffic.
        # Against the remembered size, not the prediction: a gradual cut drags the prediction
        # down with it.
        cut = np.flatnonzero(np.any(meas[:, 2:4] < cfg.occluded_cut * ref, axis=1))
        if len(cut):
            # The track's bottom as it would be uncut: its top plus its remembered height (its
            # predicted bottom may already be cut, making objects behind it look in front).
            full = pred[rows_m[cut]]
            full[:, 3] = np.maximum(full[:, 3], full[:, 1] + ref[cut, 1])
            partial[cut] |= _occluded(full, boxes, dets_m[cut]) >= cfg.occluded_fraction
        self.ref_wh[rows_m] = np.maximum(meas[:, 2:4], ref)
        if partial.any():
            # A partial view informs position only: anchored on its top edge (occluders in a
            # road scene stand in front, hiding the bottom) and its uncut side, with the
            # predicted size, so it can neither collapse the box nor invent a velocity.
            meas[partial] = _anchored(self.f.x[rows_m[partial]], boxes[dets_m[partial]])
        self.f.update(rows_m, meas, cfg, np.where(partial, cfg.partial_trust, 1.0))
        # Whether a track stands still is judged on full views only, so an occlusion (whose
        # shrinking box looks like motion) cannot make a standing object "moving".
        whole = rows_m[~partial]
        self.still[whole] = self._stationary()[whole]
        # Only a view whose bottom is in sight places the track on the road: an occluder
        # creeping over the bottom drags the box up (farther away, slower) well before the
        # view is cut enough to be called partial; the frame's border cuts boxes too.
        foot = ~partial & ~_foot_hidden(boxes, dets_m)
        if frame_size is not None:
            foot &= inside_frame(boxes[dets_m], *frame_size)
        if self.ground is not None:
            self.ground_fix[rows_m[foot], _BOX] = self.f.x[rows_m[foot]]
            self.ground_fix[rows_m[foot], _T] = t
        row_partial[rows_m] = partial
        row_foot[rows_m] = foot
        self.votes[rows_m, classes[dets_m]] += scores[dets_m]  # rows_m are distinct
        self.last_t[rows_m] = t
        was_tentative = self.status[rows_m] == TENTATIVE
        self.hits[rows_m] += 1
        confirm = rows_m[was_tentative & (self.hits[rows_m] >= cfg.min_hits)]
        self._confirm(confirm)
        self.status[rows_m[~was_tentative]] = TRACKED
        unmatched = row_det < 0
        self.status[unmatched & (self.status == TRACKED)] = LOST
        ttl = np.where(self.still, cfg.stationary_ttl_s, cfg.lost_ttl_s)
        expired = (self.status == LOST) & ((t - self.last_t) > ttl)
        drop = (unmatched & (self.status == TENTATIVE)) | expired
        ended = self.ids[expired & (self.ids > 0)]

        det_track_ids = np.full(len(boxes), -1, dtype=np.int64)
        det_track_ids[dets_m] = self.ids[rows_m]
        det_track_ids[det_track_ids == 0] = -1

        present = (self.ids > 0) & (
            (self.status == TRACKED)
            | ((self.status == LOST) & ((t - self.last_t) <= cfg.max_coast_s))
        )
        present &= ~drop
        keep = ~drop
        out = TrackerOutput(
            ids=self.ids[present].copy(),
            boxes=xywh_to_boxes(self.f.x[present]),
            velocity=self.f.v[present, :2].copy(),
            classes=self.votes[present].argmax(axis=1).astype(np.int64),
            observed=row_det[present] >= 0,
            partial=row_partial[present],
            foot_seen=row_foot[present],
            det_index=row_det[present].astype(np.int64),
            ended=ended.astype(np.int64),
            birth=self.birth[present].copy(),
            det_track_ids=det_track_ids,
        )
        self._select(keep)
        self._out_rows = present[keep].nonzero()[0]
        births = (high & ~det_used & (scores >= cfg.new_track_score)).nonzero()[0]
        self._birth(boxes[births], scores[births], classes[births], t)
        return out

    def _predict_on_ground(self, lost: NDArray[np.bool_], t: float) -> NDArray[np.bool_]:
        """Lost tracks move at constant velocity on the road, not in the image.

        A vehicle hidden for a second while approaching the camera speeds up and grows in
        the image (perspective): an image-space prediction falls behind it and the track is
        never picked up again. On the ground plane its motion is constant, and the ratio of
        depths gives its size. From the last view with the bottom in sight, if it is recent
        (``ground_fix_max_age_s``) and the velocity known; a stationary track stays where it
        was. Returns which rows were predicted so."""
        done = np.zeros(len(self), dtype=np.bool_)
        rows = lost.nonzero()[0]
        if self.ground is None or len(rows) == 0:
            return done
        fix = self.ground_fix[rows]
        # A recent view (NaN compares False) and a known velocity.
        usable = (self.last_t[rows] - fix[:, _T] <= self.cfg.ground_fix_max_age_s) & np.isfinite(
            fix[:, _VX]
        )
        rows, fix = rows[usable], fix[usable]
        n = len(rows)
        if n == 0:
            return done
        then = self.ground.to_ground(fix[:, 0:2] + fix[:, 2:4] * _TO_FOOT)
        vel = np.where(self.still[rows, None], 0.0, fix[:, _V])
        now = then + vel * (t - fix[:, _T])[:, None]
        # One projection for both: where it is now (and how it moves there), and the depth
        # where it was seen.
        foot, foot_v, depth, depth_v = self.ground.image_motion(
            np.vstack([now, then]), np.vstack([vel, vel])
        )
        scale = depth[n:] / depth[:n]
        ok = scale > 0.0  # False for NaN too: on the camera's side of the horizon
        r = rows[ok]
        wh = fix[ok, 2:4] * scale[ok, None]
        wh_v = wh * -(depth_v[:n][ok] / depth[:n][ok])[:, None]
        self.f.x[r] = np.hstack([foot[:n][ok], wh]) - wh[:, 1:2] * _FOOT_TO_CENTRE
        self.f.v[r] = np.hstack([foot_v[:n][ok], wh_v]) - wh_v[:, 1:2] * _FOOT_TO_CENTRE
        done[r] = True
        return done

    def _stationary(self) -> NDArray[np.bool_]:
        # Motion of the top edge and the horizontal centre: an occluder in front eats into
        # the bottom of a standing object, which moves its centre but never its top.
        top = self.f.v[:, 1] - 0.5 * self.f.v[:, 3]
        speed = np.hypot(self.f.v[:, 0], top)
        still: NDArray[np.bool_] = speed < self.cfg.stationary_rel_per_s * np.maximum(
            self.f.x[:, 3], 1.0
        )
        return still

    # -- row bookkeeping ---------------------------------------------------------------------

    def _confirm(self, rows: IntArr) -> None:
        for r in rows.tolist():  # row order: deterministic ids
            self.ids[r] = self.next_id
            self.next_id += 1
            self.status[r] = TRACKED

    def _select(self, keep: NDArray[np.bool_]) -> None:
        if keep.all():
            return
        self.f = self.f.select(keep)
        self.status, self.hits = self.status[keep], self.hits[keep]
        self.ids, self.last_t, self.votes = self.ids[keep], self.last_t[keep], self.votes[keep]
        self.ref_wh, self.still = self.ref_wh[keep], self.still[keep]
        self.birth, self.ground_fix = self.birth[keep], self.ground_fix[keep]

    def _birth(self, boxes: F64, scores: F64, classes: I64, t: float) -> None:
        n = len(boxes)
        if n == 0:
            return
        start = len(self)
        self.f = self.f.append(BoxFilters.initiate(boxes_to_xywh(boxes), self.cfg))
        self.status = np.concatenate([self.status, np.full(n, TENTATIVE, dtype=np.int8)])
        self.hits = np.concatenate([self.hits, np.ones(n, dtype=np.int64)])
        self.ids = np.concatenate([self.ids, np.zeros(n, dtype=np.int64)])
        self.last_t = np.concatenate([self.last_t, np.full(n, t)])
        self.ref_wh = np.vstack([self.ref_wh, boxes[:, 2:4] - boxes[:, 0:2]])
        self.still = np.concatenate([self.still, np.zeros(n, dtype=np.bool_)])
        self.birth = np.vstack([self.birth, np.column_stack([boxes, np.full(n, t)])])
        self.ground_fix = np.vstack([self.ground_fix, np.full((n, _FIX_COLS), np.nan)])
        votes = np.zeros((n, NUM_CLASSES))
        votes[np.arange(n), classes] = scores
        self.votes = np.vstack([self.votes, votes])
        if self.cfg.min_hits <= 1:
            self._confirm(np.arange(start, start + n, dtype=np.intp))

    # -- persistence -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "x": self.f.x.tolist(),
            "v": self.f.v.tolist(),
            "p_xx": self.f.p_xx.tolist(),
            "p_xv": self.f.p_xv.tolist(),
            "p_vv": self.f.p_vv.tolist(),
            "status": self.status.tolist(),
            "hits": self.hits.tolist(),
            "ids": self.ids.tolist(),
            "last_t": self.last_t.tolist(),
            "ref_wh": self.ref_wh.tolist(),
            "still": self.still.tolist(),
            "birth": self.birth.tolist(),
            "ground_fix": array_to_json(self.ground_fix),
            "votes": self.votes.tolist(),
            "next_id": self.next_id,
            "time": self.time,
        }

    @classmethod
    def from_state(
        cls, cfg: TrackerSettings, s: dict[str, Any], ground: Homography | None = None
    ) -> ByteTracker:
        tr = cls(cfg, ground)

        def arr(key: str, dtype: Any, cols: int | None = None) -> Any:
            a = np.asarray(s[key], dtype=dtype)
            return a.reshape(-1, cols) if cols else a

        tr.f = BoxFilters(
            arr("x", np.float64, 4),
            arr("v", np.float64, 4),
            arr("p_xx", np.float64, 4),
            arr("p_xv", np.float64, 4),
            arr("p_vv", np.float64, 4),
        )
        tr.status, tr.hits = arr("status", np.int8), arr("hits", np.int64)
        tr.ids, tr.last_t = arr("ids", np.int64), arr("last_t", np.float64)
        tr.ref_wh = arr("ref_wh", np.float64, 2)
        tr.still = arr("still", np.bool_)
        tr.birth = arr("birth", np.float64, 5)
        tr.votes = arr("votes", np.float64, NUM_CLASSES)
        # States saved before the ground model have no fixes: those tracks are predicted in
        # the image until they are next seen with their bottom in sight.
        fix = s.get("ground_fix")
        tr.ground_fix = (
            np.full((len(tr.status), _FIX_COLS), np.nan)
            if fix is None
            else array_from_json(fix, np.float64).reshape(-1, _FIX_COLS)
        )
        tr.next_id, tr.time = int(s["next_id"]), s["time"]
        return tr


def _occluded(track_boxes: F64, boxes: F64, own: IntArr) -> F64:
    """Fraction of each track box covered by other detections lower in the image."""
    if len(track_boxes) == 0 or len(boxes) < 2:
        return np.zeros(len(track_boxes))
    ix = np.minimum(track_boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(
        track_boxes[:, None, 0], boxes[None, :, 0]
    )
    iy = np.minimum(track_boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(
        track_boxes[:, None, 1], boxes[None, :, 1]
    )
    inter = np.maximum(ix, 0.0) * np.maximum(iy, 0.0)
    in_front = boxes[None, :, 3] > track_boxes[:, None, 3]
    in_front[np.arange(len(own)), own] = False
    wh = track_boxes[:, 2:4] - track_boxes[:, 0:2]
    area = np.maximum(wh[:, 0] * wh[:, 1], 1e-9)
    # Overlaps of several occluders are summed (an upper bound; they rarely overlap each other).
    cover: F64 = np.minimum(np.where(in_front, inter, 0.0).sum(axis=1) / area, 1.0)
    return cover


def _foot_hidden(boxes: F64, own: IntArr) -> NDArray[np.bool_]:
    """Whether the bottom-centre of each own box lies inside another box reaching lower in
    the image (standing in front of it), where it may be cut short."""
    if len(own) == 0 or len(boxes) < 2:
        return np.zeros(len(own), dtype=np.bool_)
    me = boxes[own]
    cx, bottom = (me[:, 0:1] + me[:, 2:3]) * 0.5, me[:, 3:4]
    b = boxes[None, :, :]
    inside = (b[..., 0] <= cx) & (cx <= b[..., 2]) & (b[..., 1] <= bottom) & (bottom < b[..., 3])
    inside[np.arange(len(own)), own] = False
    out: NDArray[np.bool_] = np.any(inside, axis=1)
    return out


def _anchored(pred_xywh: F64, det: F64) -> F64:
    """Measurements (cx, cy, w, h) of partial views: a dimension the occluder cut (clearly
    smaller than predicted) keeps its predicted size, placed from the visible edge (the top
    for the height: occluders stand in front, lower in the image); an uncut one is taken as
    seen."""
    dw, dh = det[:, 2] - det[:, 0], det[:, 3] - det[:, 1]
    pw, ph = pred_xywh[:, 2], pred_xywh[:, 3]
    cut_w, cut_h = dw < _CUT * pw, dh < _CUT * ph
    left = np.abs(det[:, 0] - (pred_xywh[:, 0] - pw / 2)) <= np.abs(
        det[:, 2] - (pred_xywh[:, 0] + pw / 2))  # fmt: skip
    cx = np.where(cut_w, np.where(left, det[:, 0] + pw / 2, det[:, 2] - pw / 2),
                  (det[:, 0] + det[:, 2]) / 2)  # fmt: skip
    cy = np.where(cut_h, det[:, 1] + ph / 2, (det[:, 1] + det[:, 3]) / 2)
    out: F64 = np.column_stack([cx, cy, np.where(cut_w, pw, dw), np.where(cut_h, ph, dh)])
    return out


def _expand(boxes: F64, grow: F64) -> F64:
    """Boxes scaled about their centres by (1 + grow)."""
    if len(boxes) == 0:
        return boxes
    half = 0.5 * (boxes[:, 2:4] - boxes[:, 0:2]) * (1.0 + grow)[:, None]
    centre = 0.5 * (boxes[:, 2:4] + boxes[:, 0:2])
    out = np.empty_like(boxes)
    np.subtract(centre, half, out=out[:, 0:2])
    np.add(centre, half, out=out[:, 2:4])
    return out
