"""Traffic: car following (IDM), lane changes (MOBIL), signals, spawning, walkers.

Every road user is an ``Agent`` on a ``Lane`` at arc position ``s`` (its centre) moving with
speed ``v >= 0`` in direction ``sign`` (``-1``: a wrong-way driver). Acceleration is the
Intelligent Driver Model against the nearest constraint ahead: the next agent in the lane (an
oncoming one closes at the sum of speeds), a red or amber stop line, a pedestrian in the
lane's corridor, or an incident's stop target. Integration is ballistic with ``v`` clamped at
0, which keeps IDM collision-free at the step sizes used here. A vehicle changing lanes stays
visible as a leader in its old lane until it has left it, so no one drives into its tail.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from its_camera_ai.sim._config import SceneConfig
from its_camera_ai.sim._models import CLASS_ID, SPECS, ObjectModel, make_model
from its_camera_ai.sim._world import Lane, World

__all__ = ["Agent", "TrafficSim"]

_B_SAFE = 3.0  # strongest braking a lane change may impose on the new follower (m/s^2)
_LC_TIME = 3.0  # seconds to move one lane sideways
_MOTOR = ("car", "truck", "bus", "motorcycle")
_LONGEST = {"vehicle": SPECS["bus"].length[1], "bike": SPECS["bicycle"].length[1],
            "walk": 0.5, "crossing": 0.5}  # fmt: skip


@dataclass(slots=True, eq=False)
class Agent:
    id: int
    cls: str
    model: ObjectModel
    lane: Lane
    s: float
    v: float
    v0: float
    a_max: float
    b: float
    T: float
    s0: float
    sign: int = 1
    lat: float = 0.0
    lat0: float = 0.0
    lc_progress: float = 1.0
    prev_lane: Lane | None = None
    next_lc: float = 0.0
    acc: float = 0.0
    amber_go: bool | None = None
    stop_at: float | None = None
    hold_until: float | None = None
    incident: str | None = None
    phase: float = 0.0
    born: float = 0.0
    extra_stop: float | None = None  # a stop line of its own (wrong-way driver)

    @property
    def class_id(self) -> int:
        return CLASS_ID[self.cls]

    @property
    def length(self) -> float:
        return self.model.length

    def xy(self) -> tuple[float, float]:
        return self.lane.point(self.s, self.lat)

    def heading(self) -> float:
        """Yaw in radians; a lane change tilts the body towards the target lane."""
        h = self.lane.heading + (math.pi if self.sign < 0 else 0.0)
        if self.lc_progress < 1.0 and self.v > 0.5:
            p = self.lc_progress
            dlat = -self.lat0 * 6.0 * p * (1.0 - p) / _LC_TIME  # d/dt of the smoothstep
            h += math.atan2(dlat, self.v) * self.sign
        return h

    def front(self) -> float:
        return self.s + self.sign * self.length / 2


def idm(v: float, v0: float, gap: float, dv: float, ag: Agent) -> float:
    """IDM acceleration; ``gap`` is bumper to bumper, ``dv`` the closing speed."""
    s_star = ag.s0 + max(0.0, v * ag.T + v * dv / (2.0 * math.sqrt(ag.a_max * ag.b)))
    free = 1.0 - (v / v0) ** 4 if v0 > 0 else -1.0
    if gap == math.inf:
        return ag.a_max * free
    return ag.a_max * (free - (s_star / max(gap, 0.05)) ** 2)


def _by_s(ag: Agent) -> float:
    return ag.s


@dataclass(slots=True)
class _Occ:
    """Agents in one lane sorted by s (lane-changers listed in both of their lanes)."""

    s: list[float] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)


class TrafficSim:
    """All moving things in one world, advanced in fixed steps."""

    def __init__(self, world: World, cfg: SceneConfig, rng: np.random.Generator) -> None:
        self.world = world
        self.cfg = cfg
        self.rng = rng
        self.t = -cfg.warmup_s
        self.agents: list[Agent] = []
        self._next_id = 1
        self._arrival: dict[int, float] = {}
        self._backlog: dict[int, int] = {}
        self.closed_lanes: set[int] = set()  # no spawning; drivers are urged to leave
        self._occ: dict[int, _Occ] = {}
        self._walkers_on_road: list[Agent] = []
        for ln in world.lanes:
            if ln.flow_h > 0:
                self._arrival[ln.id] = self.t + self._headway(ln)
                self._backlog[ln.id] = 0

    # -- spawning -----------------------------------------------------------------------------

    def _headway(self, lane: Lane) -> float:
        return float(self.rng.exponential(3600.0 / lane.flow_h))

    def _pick_class(self, lane: Lane) -> str:
        if lane.kind == "bike":
            return "bicycle"
        if lane.kind in ("walk", "crossing"):
            return "person"
        mix = self.cfg.traffic.class_mix
        names = [c for c in _MOTOR if mix.get(c, 0.0) > 0]
        w = np.array([mix[c] for c in names])
        return names[int(self.rng.choice(len(names), p=w / w.sum()))]

    def new_agent(
        self, cls: str, lane: Lane, s: float, *, sign: int = 1, v: float | None = None
    ) -> Agent:
        spec = SPECS[cls]
        spread = self.cfg.traffic.speed_spread
        if spec.speed_abs is not None:
            v0 = spec.speed_abs * float(np.clip(1 + 1.5 * spread * self.rng.normal(), 0.6, 1.5))
        else:
            f = float(np.clip(1 + spread * self.rng.normal(), 0.7, 1.35))
            v0 = lane.speed_limit * spec.speed_factor * f
        ag = Agent(
            self._next_id,
            cls,
            make_model(cls, self.rng),
            lane,
            s,
            v0 if v is None else v,
            v0,
            spec.a_max,
            spec.b_comf,
            spec.headway,
            spec.s0,
            sign=sign,
            born=self.t,
            phase=float(self.rng.uniform(0, 2 * math.pi)),
            next_lc=self.t + float(self.rng.uniform(0.5, 2.0)),
        )
        self._next_id += 1
        self.agents.append(ag)
        return ag

    def populate(self) -> None:
        """Fill lanes at their demand density so frame 0 does not show an empty road."""
        for ln in self.world.lanes:
            if ln.flow_h <= 0 or ln.kind == "crossing":
                continue
            s = float(self.rng.uniform(2.0, 30.0))
            while s < ln.length - 10.0:
                cls = self._pick_class(ln)
                ag = self.new_agent(cls, ln, s)
                ag.s = s + ag.length / 2
                # Keep clear of the conflict area; warm-up sorts out the rest.
                if ln.stop_s is not None and ln.stop_s - 3.0 < ag.front() < ln.stop_s + 40.0:
                    self.agents.remove(ag)
                    s += 45.0
                    continue
                s = ag.s + ag.length / 2 + ag.s0 + ag.v0 * ag.T
                s += float(
                    self.rng.exponential(max(ag.v0 * 3600.0 / ln.flow_h - ag.v0 * ag.T, 1.0))
                )

    def _spawn(self) -> None:
        for lane_id, due in self._arrival.items():
            lane = self.world.lanes[lane_id]
            if self.t >= due:
                self._arrival[lane_id] = due + self._headway(lane)
                self._backlog[lane_id] = min(self._backlog[lane_id] + 1, 4)
            if self._backlog[lane_id] == 0 or lane_id in self.closed_lanes:
                continue
            occ = self._occ.get(lane_id)
            first = occ.agents[0] if occ and occ.agents else None
            # Room for the longest user of the lane; the class is drawn only once it fits.
            room = _LONGEST[lane.kind] + 2.5
            if first is not None and (first.sign < 0 or first.s - first.length / 2 < room):
                continue
            cls = self._pick_class(lane)
            spec = SPECS[cls]
            v_start: float | None = None
            if first is not None:
                gap = first.s - first.length / 2 - spec.length[1] - 0.5
                # Enter no faster than the gap to the last arrival allows.
                free = (
                    spec.speed_abs
                    if spec.speed_abs is not None
                    else (lane.speed_limit * spec.speed_factor)
                )
                v_start = min(free, first.v + gap / max(spec.headway, 0.5))
            ag = self.new_agent(cls, lane, 0.0, v=v_start)
            ag.s = ag.length / 2 + 0.5
            if v_start is not None:
                ag.v = min(ag.v0, v_start)
            self._backlog[lane_id] -= 1

    # -- one step -------------------------------------------------------------------------------

    def _index(self) -> None:
        lists: dict[int, list[Agent]] = {}
        for ag in self.agents:
            lists.setdefault(ag.lane.id, []).append(ag)
            if ag.prev_lane is not None:
                lists.setdefault(ag.prev_lane.id, []).append(ag)
        occ: dict[int, _Occ] = {}
        for lane_id, members in lists.items():
            members.sort(key=_by_s)
            occ[lane_id] = _Occ([a.s for a in members], members)
        self._occ = occ

    def leader(self, ag: Agent, lane: Lane, s: float | None = None) -> tuple[Agent | None, float]:
        """Nearest agent ahead of ``ag`` in ``lane`` and the bumper gap to it."""
        o = self._occ.get(lane.id)
        if o is None:
            return None, math.inf
        s = ag.s if s is None else s
        if ag.sign > 0:
            i = bisect.bisect_right(o.s, s)
            rng: Iterable[int] = range(i, len(o.s))
        else:
            i = bisect.bisect_left(o.s, s)
            rng = range(i - 1, -1, -1)
        for j in rng:
            other = o.agents[j]
            if other is ag:
                continue
            return other, abs(other.s - s) - (other.length + ag.length) / 2
        return None, math.inf

    def follower(self, ag: Agent, lane: Lane) -> tuple[Agent | None, float]:
        o = self._occ.get(lane.id)
        if o is None:
            return None, math.inf
        i = bisect.bisect_left(o.s, ag.s)
        for j in range(i - 1, -1, -1):
            other = o.agents[j]
            if other is not ag and other.sign > 0:
                return other, ag.s - other.s - (other.length + ag.length) / 2
        return None, math.inf

    def _closing(self, ag: Agent, other: Agent) -> float:
        v_other = other.v if other.sign == ag.sign else -other.v
        return ag.v - v_other

    def _lane_acc(self, ag: Agent, lane: Lane) -> tuple[float, Agent | None]:
        lead, gap = self.leader(ag, lane)
        if lead is None:
            return idm(ag.v, ag.v0, math.inf, 0.0, ag), None
        return idm(ag.v, ag.v0, gap, self._closing(ag, lead), ag), lead

    def _stop_gaps(self, ag: Agent) -> list[float]:
        """Bumper gaps to everything that is standing still ahead (lines, walkers, targets)."""
        gaps: list[float] = []
        front = ag.front()
        lane = ag.lane
        plan = self.world.signals
        if ag.sign > 0 and lane.stop_s is not None and plan is not None:
            state = plan.state(lane.group, self.t)
            if state == "green":
                ag.amber_go = None
            if front <= lane.stop_s + 0.3:
                gap = lane.stop_s - front
                if lane.kind in ("walk", "crossing"):
                    need = (
                        2 * self.world.road_half + 2.0
                        if lane.kind == "crossing"
                        else 2 * self.world.cross_half + 2.0
                    ) / max(ag.v0, 0.5) + 1.0
                    if state != "green" or plan.green_left(lane.group, self.t) < need:
                        gaps.append(gap)
                elif state == "red":
                    gaps.append(gap)
                elif state == "amber":
                    if ag.amber_go is None:
                        ag.amber_go = gap < ag.v * ag.v / (2.0 * ag.b) + 1.0
                    if not ag.amber_go:
                        gaps.append(gap)
        if ag.extra_stop is not None and plan is not None:
            # A wrong-way driver still stops at the red of the approach it drives on.
            gap = (ag.extra_stop - front) * ag.sign
            if gap > -0.3 and plan.state("main", self.t) == "red":
                gaps.append(gap)
        if ag.stop_at is not None:
            gaps.append((ag.stop_at - front) * ag.sign)
        if lane.kind in ("vehicle", "bike"):
            for p in self._walkers_on_road:
                ps, plat = lane.coords(*p.xy())
                if abs(plat - ag.lat) < lane.width / 2 + 0.5:
                    d = (ps - ag.s) * ag.sign - ag.length / 2 - 0.3
                    if d > -ag.length / 2:
                        gaps.append(d)
        return gaps

    def _accelerate(self, ag: Agent) -> float:
        acc, _ = self._lane_acc(ag, ag.lane)
        if ag.prev_lane is not None:
            acc = min(acc, self._lane_acc(ag, ag.prev_lane)[0])
        for gap in self._stop_gaps(ag):
            acc = min(acc, idm(ag.v, ag.v0, gap, ag.v, ag))
        return acc

    def step(self, dt: float) -> list[tuple[Agent, tuple[float, float], tuple[float, float]]]:
        """Advance by ``dt``; returns (agent, position before, after) for crossing checks."""
        self._index()
        self._walkers_on_road = [
            a for a in self.agents if a.cls == "person" and self.world.on_carriageway(*a.xy())
        ]
        for ag in self.agents:
            ag.acc = self._accelerate(ag)
            if ag.cls == "person" and not self._safe_to_step(ag):
                ag.acc, ag.v = 0.0, 0.0
        moves = []
        for ag in self.agents:
            before = ag.xy()
            v_new = ag.v + ag.acc * dt
            if v_new < 0.0:
                # Stop within the step: cover only the braking distance.
                ds = ag.v * ag.v / (2.0 * -ag.acc) if ag.acc < 0 else 0.0
                v_new = 0.0
            else:
                ds = (ag.v + v_new) * 0.5 * dt
            ag.s += ag.sign * ds
            ag.v = v_new
            ag.phase += ds * 2.2  # stride: one leg cycle per ~2.9 m of walking
            if ag.lc_progress < 1.0:
                ag.lc_progress = min(1.0, ag.lc_progress + dt / _LC_TIME)
                p = ag.lc_progress
                ag.lat = ag.lat0 * (1.0 - p * p * (3.0 - 2.0 * p))
                if p >= 1.0:
                    ag.lat, ag.prev_lane = 0.0, None
            moves.append((ag, before, ag.xy()))
        self.t += dt
        if self.cfg.traffic.lane_changes:
            self._index()
            for ag in self.agents:
                if ag.lane.kind == "vehicle" and self.t >= ag.next_lc:
                    self._consider_lane_change(ag)
        self.agents = [a for a in self.agents if not self._left(a)]
        self._index()
        self._spawn()
        return moves

    def _left(self, ag: Agent) -> bool:
        if ag.sign > 0:
            return ag.s - ag.length / 2 > ag.lane.length
        return ag.s + ag.length / 2 < 0.0

    def _safe_to_step(self, walker: Agent) -> bool:
        """Walkers look before stepping onto a lane: wait while something is close."""
        x0, y0 = walker.xy()
        x1, y1 = walker.lane.point(walker.s + walker.sign * 0.6, walker.lat)
        if not self.world.on_carriageway(x1, y1):
            return True  # sidewalks and verges need no looking
        for ln in self.world.lanes:
            if ln.kind not in ("vehicle", "bike"):
                continue
            s1, l1 = ln.coords(x1, y1)
            if abs(l1) > ln.width / 2 + 0.3 or not 0 <= s1 <= ln.length:
                continue
            if abs(ln.coords(x0, y0)[1]) <= ln.width / 2 + 0.3:
                continue  # already on it: keep going, drivers yield
            o = self._occ.get(ln.id)
            for other in o.agents if o else ():
                d = (s1 - other.s) * other.sign - other.length / 2
                # A moving vehicle needs room to stop; a standing one only its own length.
                reach = other.v * 3.0 + 5.0 if other.v > 0.5 else 1.5
                if -other.length - 1.5 < d < reach:
                    return False
        return True

    def _consider_lane_change(self, ag: Agent) -> None:
        ag.next_lc = self.t + 1.0 + float(self.rng.uniform(0.0, 0.5))
        if ag.sign < 0 or ag.lc_progress < 1.0 or ag.stop_at is not None or ag.cls not in _MOTOR:
            return
        a_cur, lead = self._lane_acc(ag, ag.lane)
        blocked = lead is not None and (lead.sign < 0 or lead.stop_at is not None)
        urge = 4.0 if ag.lane.id in self.closed_lanes else 2.0 if blocked else 0.0
        stop = ag.lane.stop_s
        near_junction = stop is not None and (
            -60.0 < ag.front() - stop < 2 * self.world.cross_half + 25.0
        )
        if near_junction and (not urge or ag.front() > stop - 2.0):  # type: ignore[operator]
            return  # no weaving at the junction unless the lane is blocked before it
        best, best_gain = None, 0.3
        # Keep-right rule: a small bias towards the right lane.
        for target, keep_right in ((ag.lane.left, -0.15), (ag.lane.right, 0.15)):
            if target is None:
                continue
            new_lead, gap_f = self.leader(ag, target)
            if gap_f < ag.s0 * 0.5 + 1.0 or (new_lead is not None and new_lead.sign < 0):
                continue
            a_new = (
                idm(ag.v, ag.v0, gap_f, self._closing(ag, new_lead), ag)
                if new_lead
                else idm(ag.v, ag.v0, math.inf, 0.0, ag)
            )
            fol, gap_b = self.follower(ag, target)
            a_fol_gain = 0.0
            if fol is not None:
                if gap_b < 1.0 + fol.s0 * 0.5:
                    continue
                a_fol = idm(fol.v, fol.v0, gap_b, fol.v - ag.v, fol)
                if a_fol < -_B_SAFE:
                    continue
                a_fol_gain = a_fol - self._lane_acc(fol, target)[0]
            bias = keep_right - (5.0 if target.id in self.closed_lanes else 0.0)
            gain = a_new - a_cur + 0.3 * a_fol_gain + bias + urge
            if gain > best_gain:
                best, best_gain = target, gain
        if best is not None:
            old = ag.lane
            ag.lane, ag.prev_lane = best, old
            ag.lat0 = best.coords(*old.point(ag.s, ag.lat))[1]
            ag.lat, ag.lc_progress = ag.lat0, 0.0
