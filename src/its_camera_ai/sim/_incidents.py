"""Injected incidents: a stopped vehicle, a wrong-way driver, a pedestrian on the roadway.

Each configured incident is a small state machine driven after every traffic step. Its truth
is recorded when it actually happens in the simulation, not when it was scheduled: a stopped
vehicle starts when the chosen car stands still, a wrong-way driver when it enters the road,
a pedestrian when they step onto the carriageway; each ends when the situation is over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from its_camera_ai.sim._config import IncidentConfig
from its_camera_ai.sim._traffic import Agent, TrafficSim
from its_camera_ai.sim._truth import IncidentTruth
from its_camera_ai.sim._world import Lane

__all__ = ["Incidents"]

_MOTOR = ("car", "truck", "bus", "motorcycle")


@dataclass(slots=True)
class _Run:
    cfg: IncidentConfig
    state: str = "pending"  # pending -> armed -> active -> done
    agent: Agent | None = None
    lane: Lane | None = None
    x: float | None = None
    start: float | None = None
    end: float | None = None


class Incidents:
    def __init__(
        self,
        sim: TrafficSim,
        configs: tuple[IncidentConfig, ...],
        focus: tuple[float, float],
        rng: np.random.Generator,
    ) -> None:
        self.sim = sim
        self.focus = focus
        self.rng = rng
        self.runs = [_Run(c) for c in configs]

    def _pick_x(self, cfg: IncidentConfig) -> float:
        if cfg.x_m is not None:
            return cfg.x_m
        w = self.sim.world
        lo, hi = self.focus
        for _ in range(20):
            x = float(self.rng.uniform(lo, hi))
            if w.cross_x is None or abs(x - w.cross_x) > w.cross_half + 25.0:
                return x
        return lo

    def update(self) -> None:
        t = self.sim.t
        for run in self.runs:
            if run.state == "pending" and t >= run.cfg.start_s:
                run.state = "armed"
                if run.cfg.kind == "wrong_way":
                    run.lane = self.sim.world.lane(f"main{'+-'[int(self.rng.integers(2))]}0")
                    self.sim.closed_lanes.add(run.lane.id)
            if run.state in ("armed", "active"):
                getattr(self, f"_{run.cfg.kind}")(run, t)

    def truths(self, *, active_at: float | None = None) -> tuple[IncidentTruth, ...]:
        out = []
        for run in self.runs:
            if run.start is None or run.agent is None:
                continue
            if active_at is not None and not (
                run.start <= active_at and (run.end is None or active_at < run.end)
            ):
                continue
            lane = run.lane.name if run.lane is not None else None
            out.append(
                IncidentTruth(
                    run.cfg.kind,
                    run.agent.id,
                    round(run.start, 4),
                    None if run.end is None else round(run.end, 4),
                    lane,
                )
            )
        return tuple(out)

    # -- kinds ------------------------------------------------------------------------------

    def _stopped_vehicle(self, run: _Run, t: float) -> None:
        sim = self.sim
        ag = run.agent
        if ag is None:
            if run.x is None:
                run.x = self._pick_x(run.cfg)
                names = [ln for ln in sim.world.lanes if ln.name.startswith("main")]
                run.lane = names[int(self.rng.integers(len(names)))]
            lane = run.lane
            assert lane is not None
            target = lane.coords(run.x, 0.0)[0]
            best: tuple[float, Agent] | None = None
            for cand in sim.agents:
                if (
                    cand.lane is not lane
                    or cand.prev_lane is not None
                    or cand.sign < 0
                    or cand.cls not in _MOTOR
                    or cand.stop_at is not None
                ):
                    continue
                d = target - cand.front()
                if cand.v * cand.v / (2 * 1.5) + 3.0 < d < 250.0 and (best is None or d < best[0]):
                    best = (d, cand)
            if best is not None:
                run.agent = best[1]
                run.agent.stop_at = target
            return
        if ag not in sim.agents:
            run.state = "done"
            if run.start is not None and run.end is None:
                run.end = t
            return
        self._hold(run, ag, t)
        if run.state == "done":
            ag.incident = None

    def _hold(self, run: _Run, ag: Agent, t: float) -> None:
        """Stand at the stop target for the configured time, then carry on."""
        if (
            run.start is None
            and ag.v < 0.1
            and ag.stop_at is not None
            and ((ag.stop_at - ag.front()) * ag.sign < ag.s0 + 3.0)
        ):
            run.start, run.state = t, "active"
            ag.hold_until = t + run.cfg.duration_s
            ag.incident = run.cfg.kind
        if ag.hold_until is not None and t >= ag.hold_until:
            ag.stop_at = ag.hold_until = None
            run.end, run.state = t, "done"

    def _wrong_way(self, run: _Run, t: float) -> None:
        sim = self.sim
        lane = run.lane
        assert lane is not None
        if run.agent is None:
            occ = [
                a for a in sim.agents if lane in (a.lane, a.prev_lane) and a.s > lane.length - 60.0
            ]
            if occ:
                return
            ag = sim.new_agent("car", lane, 0.0, sign=-1)
            ag.s = lane.length - ag.length / 2 - 0.5
            ag.v0 = ag.v = 0.75 * lane.speed_limit
            ag.incident = "wrong_way"
            w = sim.world
            if w.cross_x is not None:
                opp = w.lane(lane.name.replace("-", "?").replace("+", "-").replace("?", "+"))
                if opp.stop_s is not None:
                    ag.extra_stop = lane.coords(*opp.point(opp.stop_s))[0]
            run.agent, run.start, run.state = ag, t, "active"
            return
        if run.agent not in sim.agents:
            run.end, run.state = t, "done"
            sim.closed_lanes.discard(lane.id)

    def _pedestrian_on_road(self, run: _Run, t: float) -> None:
        sim = self.sim
        w = sim.world
        if run.agent is None:
            x = self._pick_x(run.cfg)
            if w.crosswalk is not None and w.crosswalk[0] - 6 < x < w.crosswalk[1] + 6:
                x = w.crosswalk[0] - 10.0
            sgn = 1.0 if self.rng.random() < 0.5 else -1.0
            reach = w.walk_outer + 8.0
            lane = Lane(
                -1,
                "jaywalk",
                "crossing",
                x,
                -sgn * reach,
                0.0,
                sgn,
                2 * reach,
                1.0,
                1.3,
                "free",
                spawn=False,
            )
            ag = sim.new_agent("person", lane, 0.6)
            ag.v0 = min(ag.v0, 1.2)
            ag.stop_at = reach + ag.length / 2  # stand on the centre line
            run.agent, run.lane = ag, lane
            return
        ag = run.agent
        on_road = w.on_carriageway(*ag.xy())
        if run.start is None and on_road:
            run.start, run.state = t, "active"
            ag.incident = run.cfg.kind
        if (
            ag.stop_at is not None
            and ag.hold_until is None
            and ag.v < 0.1
            and ((ag.stop_at - ag.front()) * ag.sign < ag.s0 + 0.5)
        ):
            ag.hold_until = t + run.cfg.duration_s
        if ag.hold_until is not None and t >= ag.hold_until:
            ag.stop_at = ag.hold_until = None
        if run.start is not None and run.end is None and (not on_road or ag not in sim.agents):
            run.end, run.state = t, "done"
            ag.incident = None
