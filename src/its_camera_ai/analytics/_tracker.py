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

from its_camera_ai.analytics._assign import inside_matrix
from its_camera_ai.analytics._association import (
    ASSOCIATION_GROUP,
    BOXED_IN_PARTS,
    FrameAssociation,
    leaving_the_picture,
    match_by_iou,
)
from its_camera_ai.analytics._kalman import BoxFilters, boxes_to_xywh, xywh_to_boxes
from its_camera_ai.analytics._occlusion import anchored, expand, foot_hidden, occluded
from its_camera_ai.analytics._records import NUM_CLASSES
from its_camera_ai.analytics._tracks import array_from_json, array_to_json
from its_camera_ai.common import TrackerSettings
from its_camera_ai.scene import Homography, inside_frame

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

    def last_output(self) -> tuple[I64, F64, I64]:
        """(ids, boxes x1 y1 x2 y2, classes) of the confirmed tracks the last update output,
        as of that frame: what a picture of it shows (empty after a restore)."""
        rows = self._out_rows
        classes = self.votes[rows].argmax(axis=1).astype(np.int64)
        return self.ids[rows].copy(), xywh_to_boxes(self.f.x[rows]), classes

    # -- the per-frame update ----------------------------------------------------------------

    def update(
        self,
        boxes: F64,
        scores: F64,
        classes: I64,
        t: float,
        frame_size: tuple[int, int] | None = None,
    ) -> TrackerOutput:
        """One frame's detections at capture time t (s), in a frame of ``frame_size`` (w, h)."""
        frame = self._predict(boxes, scores, classes, t, frame_size)
        self._associate_confident(frame)
        self._associate_weak(frame)
        self._associate_tentative(frame)
        rows = (frame.row_det >= 0).nonzero()[0]
        dets = frame.row_det[rows]
        self._correct(frame, rows, dets, frame_size)
        self._promote(rows)
        drop, ended = self._retire(frame)
        present = (self.ids > 0) & (
            (self.status == TRACKED)
            | ((self.status == LOST) & ((t - self.last_t) <= self.cfg.max_coast_s))
        )
        present &= ~drop
        out = self._output(frame, rows, dets, present, ended)
        keep = ~drop
        self._select(keep)
        self._out_rows = present[keep].nonzero()[0]
        self._start_tracks(frame)
        return out

    # -- the stages of an update, in order ---------------------------------------------------

    def _predict(
        self, boxes: F64, scores: F64, classes: I64, t: float, frame_size: tuple[int, int] | None
    ) -> FrameAssociation:
        """Every track moved on to time t, and the frame's bookkeeping started."""
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
        return FrameAssociation(
            boxes=boxes,
            scores=scores,
            classes=classes,
            t=t,
            pred=pred,
            grounded=grounded,
            track_group=ASSOCIATION_GROUP[self.votes.argmax(axis=1)],
            det_group=ASSOCIATION_GROUP[classes],
            high=scores >= cfg.high_score,
            leaving=leaving_the_picture(pred, self.f.v[:, 2], frame_size),
            row_det=np.full(len(self), -1, dtype=np.intp),
            row_partial=np.zeros(len(self), dtype=np.bool_),
            row_foot=np.zeros(len(self), dtype=np.bool_),
            det_used=np.zeros(len(boxes), dtype=np.bool_),
        )

    def _associate_confident(self, frame: FrameAssociation) -> None:
        """Stage 1: confident detections against followed and lost tracks."""
        cfg = self.cfg
        pool = (self.status != TENTATIVE).nonzero()[0]
        grow = np.minimum(
            cfg.lost_expand_max, cfg.lost_expand_per_s * (frame.t - self.last_t[pool])
        )
        grow = np.where(self.status[pool] == LOST, np.maximum(grow, 0.0), 0.0)
        match_by_iou(
            frame, pool, frame.high.nonzero()[0], cfg.iou_high, expand(frame.pred[pool], grow)
        )

    def _associate_weak(self, frame: FrameAssociation) -> None:
        """Stage 2: weak detections against followed tracks still unmatched."""
        cfg = self.cfg
        low = (frame.scores >= cfg.low_score) & ~frame.high
        rest = ((self.status == TRACKED) & (frame.row_det < 0)).nonzero()[0]
        match_by_iou(frame, rest, low.nonzero()[0], cfg.iou_low, frame.pred[rest])

    def _associate_tentative(self, frame: FrameAssociation) -> None:
        """Stage 3: tentative tracks against the confident detections left. Their velocity is
        still unknown, so both boxes are buffered (C-BIoU): a fast object near the camera
        moves most of its size per frame and would never overlap itself enough to confirm."""
        tent = (self.status == TENTATIVE).nonzero()[0]
        buf = self.cfg.tentative_expand
        tent_boxes = expand(frame.pred[tent], np.full(len(tent), buf))
        dets = (frame.high & ~frame.det_used).nonzero()[0]
        match_by_iou(frame, tent, dets, self.cfg.iou_tentative, tent_boxes, buf)

    def _partial_views(
        self, frame: FrameAssociation, rows: IntArr, dets: IntArr, meas: F64
    ) -> NDArray[np.bool_]:
        """Which matches are partial views; remembers the matched tracks' sizes.

        A box much smaller than the prediction is a partial view (the object is going
        behind something): keep the association, but let it barely move the state, or the
        filter collapses the box and invents a velocity from the shrinking silhouette.
        The reference is a slowly decaying maximum of the track's recent width and height:
        an occluder sliding over the object shrinks its box within a few frames, faster
        than perspective ever does, and gradually, so the previous frame is no reference."""
        cfg = self.cfg
        decay = np.exp(-(frame.t - self.last_t[rows]) / cfg.size_memory_s)[:, None]
        ref = self.ref_wh[rows] * decay
        # A track predicted on the ground knows its size from the depth ratio, which its
        # memory from before it was lost does not (the object came nearer or went farther):
        # a re-appearing object still half hidden must not be taken for whole.
        g = frame.grounded[rows]
        ref[g] = np.maximum(ref[g], self.f.x[rows[g], 2:4])
        partial: NDArray[np.bool_] = np.any(meas[:, 2:4] < cfg.partial_shrink * ref, axis=1)
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
            full = frame.pred[rows[cut]]
            full[:, 3] = np.maximum(full[:, 3], full[:, 1] + ref[cut, 1])
            partial[cut] |= occluded(full, frame.boxes, dets[cut]) >= cfg.occluded_fraction
        self.ref_wh[rows] = np.maximum(meas[:, 2:4], ref)
        return partial

    def _correct(
        self,
        frame: FrameAssociation,
        rows: IntArr,
        dets: IntArr,
        frame_size: tuple[int, int] | None,
    ) -> None:
        """The matched tracks take in their detections: filter, stillness, ground fix, vote."""
        cfg, boxes, t = self.cfg, frame.boxes, frame.t
        meas = boxes_to_xywh(boxes[dets])
        partial = self._partial_views(frame, rows, dets, meas)
        if partial.any():
            # A partial view informs position only: anchored on its top edge (occluders in a
            # road scene stand in front, hiding the bottom) and its uncut side, with the
            # predicted size, so it can neither collapse the box nor invent a velocity.
            meas[partial] = anchored(self.f.x[rows[partial]], boxes[dets[partial]])
        self.f.update(rows, meas, cfg, np.where(partial, cfg.partial_trust, 1.0))
        # Whether a track stands still is judged on full views only, so an occlusion (whose
        # shrinking box looks like motion) cannot make a standing object "moving".
        whole = rows[~partial]
        self.still[whole] = self._stationary()[whole]
        # Only a view whose bottom is in sight places the track on the road: an occluder
        # creeping over the bottom drags the box up (farther away, slower) well before the
        # view is cut enough to be called partial; the frame's border cuts boxes too.
        foot = ~partial & ~foot_hidden(boxes, dets)
        if frame_size is not None:
            foot &= inside_frame(boxes[dets], *frame_size)
        if self.ground is not None:
            self.ground_fix[rows[foot], _BOX] = self.f.x[rows[foot]]
            self.ground_fix[rows[foot], _T] = t
        frame.row_partial[rows] = partial
        frame.row_foot[rows] = foot
        self.votes[rows, frame.classes[dets]] += frame.scores[dets]  # rows are distinct
        self.last_t[rows] = t

    def _promote(self, rows: IntArr) -> None:
        """Matched tentative tracks with enough hits are confirmed; matched ones followed."""
        was_tentative = self.status[rows] == TENTATIVE
        self.hits[rows] += 1
        confirm = rows[was_tentative & (self.hits[rows] >= self.cfg.min_hits)]
        self._confirm(confirm)
        self.status[rows[~was_tentative]] = TRACKED

    def _retire(self, frame: FrameAssociation) -> tuple[NDArray[np.bool_], I64]:
        """Unmatched followed tracks are lost; unmatched tentative and expired lost tracks are
        dropped. Returns the rows to drop and the ids of confirmed tracks that ended."""
        cfg = self.cfg
        unmatched = frame.row_det < 0
        self.status[unmatched & (self.status == TRACKED)] = LOST
        ttl = np.where(self.still, cfg.stationary_ttl_s, cfg.lost_ttl_s)
        expired = (self.status == LOST) & ((frame.t - self.last_t) > ttl)
        drop = (unmatched & (self.status == TENTATIVE)) | expired
        return drop, self.ids[expired & (self.ids > 0)]

    def _output(
        self,
        frame: FrameAssociation,
        rows: IntArr,
        dets: IntArr,
        present: NDArray[np.bool_],
        ended: I64,
    ) -> TrackerOutput:
        """The confirmed tracks ``present`` in this frame, and each detection's track."""
        det_track_ids = np.full(len(frame.boxes), -1, dtype=np.int64)
        det_track_ids[dets] = self.ids[rows]
        det_track_ids[det_track_ids == 0] = -1
        return TrackerOutput(
            ids=self.ids[present].copy(),
            boxes=xywh_to_boxes(self.f.x[present]),
            velocity=self.f.v[present, :2].copy(),
            classes=self.votes[present].argmax(axis=1).astype(np.int64),
            observed=frame.row_det[present] >= 0,
            partial=frame.row_partial[present],
            foot_seen=frame.row_foot[present],
            det_index=frame.row_det[present].astype(np.int64),
            ended=ended.astype(np.int64),
            birth=self.birth[present].copy(),
            det_track_ids=det_track_ids,
        )

    def _start_tracks(self, frame: FrameAssociation) -> None:
        """Tentative tracks from the confident detections nothing took, but for a vehicle's
        (``BOXED_IN_PARTS``) inside the box that continued a track of its group this frame:
        a real detector's second box on part of a vehicle (its cabin, its front half) is not
        another vehicle, and as a track it crosses a line before the whole and counts twice."""
        births = (
            frame.high & ~frame.det_used & (frame.scores >= self.cfg.new_track_score)
        ).nonzero()[0]
        continued = frame.row_det[frame.row_det >= 0]
        if len(births) and len(continued):
            part = inside_matrix(frame.boxes[births], frame.boxes[continued]) >= (
                self.cfg.birth_inside
            )
            part &= frame.det_group[births, None] == frame.det_group[None, continued]
            part &= BOXED_IN_PARTS[frame.classes[births], None]
            births = births[~part.any(axis=1)]
        self._birth(frame.boxes[births], frame.scores[births], frame.classes[births], frame.t)

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
        tr.ref_wh, tr.still = arr("ref_wh", np.float64, 2), arr("still", np.bool_)
        tr.birth, tr.votes = arr("birth", np.float64, 5), arr("votes", np.float64, NUM_CLASSES)
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
