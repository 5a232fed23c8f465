"""dpe in the simulator: the production policy, called the way the launcher and the sensor call it.

- the launcher, the moment runs are launched: `plan_pool` on the pool's nodes without idle memory,
  scale up only (as `scaling.control.request_capacity` does);
- the sensor, on its tick grid: `plan_pool` with the idle memory of every node, applying scale-up
  and removals (as `scaling.control.scale_pool` does). Between events nothing changes, so only the
  ticks that can decide something are simulated: when a node's idle timeout runs out, after an
  interruption, and (`dpe-prewarm`) when a schedule is about to fire.
"""

from __future__ import annotations

import bisect
import math

from dpe_dagster.config import PoolConfig
from dpe_dagster.scaling.activity import ArrivalRate
from dpe_dagster.scaling.policy import PoolActivity, PoolState, RunDemand, idle_timeouts, place_run, plan_pool
from dpe_dagster.sim.placement import first_fit

QUEUE_S = 10.0  # a run may wait this long for room freed by running runs rather than boot a node


def grid_at_or_after(t: float, interval: float) -> float:
    """The first tick of a sensor running every `interval` seconds at or after t."""
    tick = math.ceil(t / interval) * interval
    return tick if tick >= t else tick + interval


class DpeScaler:
    def __init__(self, pool: PoolConfig, *, name: str = "dpe", sensor_interval_s: float = 30.0,
                 placement: str = "first-fit", node_aware: bool = False, boot_s: float = 120.0,
                 schedules: list[tuple[float, float, float]] = (), lookahead_s: float = 0.0):
        self.name = name
        self.pool = pool
        self.plan = plan_pool  # the production function object, unchanged
        self.interval = sensor_interval_s
        self.choose = self._place if placement == "ending-together" else first_fit
        self.node_aware = node_aware  # tell the policy which node each running job holds
        self.boot_s = boot_s
        self._arrivals = ArrivalRate()  # CPUs asked per second lately, as the production sensor keeps it

        # scheduled runs known ahead: (fire time, cpus, memory), by fire time
        self.schedules = sorted(schedules)
        self._fires = [s[0] for s in self.schedules]
        self.lookahead = lookahead_s
        self._demand: list[RunDemand | None] = []
        self._dirty = True

    def start(self, sim) -> None:
        self._demand = [None] * len(sim.work)
        self._placed: list[RunDemand | None] = [None] * len(sim.work)
        for fire in self._fires:
            sim.wake_at(max(0.0, math.floor((fire - self.lookahead) / self.interval) * self.interval))

    def _run_demand(self, sim, job: int) -> RunDemand:
        demand = RunDemand(f"j{job}", sim.work.cpus[job], sim.work.memory_gb[job])
        self._demand[job] = demand
        return demand

    def _placed_demand(self, sim, job: int, node_id: str) -> RunDemand:
        work = sim.work
        demand = RunDemand(f"j{job}", work.cpus[job], work.memory_gb[job], node_id=node_id,
                           expected_end=sim.start[job] + (work.expected[job] or 0.0))
        self._placed[job] = demand
        return demand

    def demand(self, sim) -> list[RunDemand]:
        cache, make = self._demand, self._run_demand
        if self.node_aware:
            placed, make_placed = self._placed, self._placed_demand
            out = [cache[job] or make(sim, job) for job in sim.pending]
            for job, nodes in sim.running.items():
                known = placed[job]
                out.append(known if known is not None and known.node_id == nodes[0].id
                           else make_placed(sim, job, nodes[0].id))
        else:
            out = [cache[job] or make(sim, job) for job in sim.active_jobs()]
        # runs that schedules will start within the look-ahead window (pre-warming)
        out += self._upcoming(sim.now, self.lookahead + self.interval)
        return out

    def state(self, sim, *, idle_memory: bool) -> PoolState:
        nodes = tuple([node.view for node in sim.nodes.values()])
        activity = self.activity(sim.now)
        if not idle_memory:
            return PoolState(target=len(nodes), nodes=nodes, activity=activity)
        idle_since = {node.id: node.idle_since for node in sim.ready_nodes if node.idle_since is not None}
        return PoolState(target=len(nodes), nodes=nodes, idle_since=idle_since, activity=activity)

    def _place(self, sim, job: int, exclude):
        """The launcher's choice of node for a waiting run: `place_run`, on the nodes with room, in the
        order they became ready (oldest first)."""
        work = sim.work
        cpus, mem = work.cpus[job], work.memory_gb[job]
        rooms = [n.room for n in sim.ready_nodes if n.free_cpus >= cpus and n.free_mem >= mem and n not in exclude]
        if not rooms:
            return None
        expected = work.expected[job]
        run = RunDemand(f"j{job}", cpus, mem, expected_end=None if expected is None else sim.now + expected)
        reserved = self._upcoming(sim.now, self.lookahead + self.interval) if not work.scheduled[job] else []
        chosen = place_run(run, rooms, sim.now, reserved)
        return None if chosen is None else sim.nodes[chosen]

    def _upcoming(self, now: float, within: float) -> list[RunDemand]:
        """Runs that schedules will start in (now, now + within]."""
        if not self.schedules:
            return []
        lo = bisect.bisect_right(self._fires, now)
        hi = bisect.bisect_right(self._fires, now + within)
        return [RunDemand(f"s{k}", cpus, mem) for k, (_, cpus, mem) in enumerate(self.schedules[lo:hi], lo)]

    def activity(self, now: float) -> PoolActivity:
        # a scheduled run about to fire must start on time: its room is not bet on estimated ends
        queue = QUEUE_S if self.node_aware and not self._upcoming(now, self.lookahead + self.interval) else 0.0
        return PoolActivity(self._arrivals.at_time(now), self.boot_s, queue)

    def _count_arrivals(self, sim) -> None:
        self._arrivals = self._arrivals.add(sum(sim.work.cpus[j] for j in sim.arrivals), sim.now)

    def step(self, sim, arrived: bool, ticked: bool, changed: bool) -> None:
        if arrived:
            self._count_arrivals(sim)
            self._launcher(sim)
        if ticked:
            self._sensor(sim)
        if arrived or changed:
            self._dirty = True
        self._next_tick(sim)

    def on_interrupt(self, sim) -> None:
        sim.wake_at(grid_at_or_after(sim.now, self.interval))

    def _launcher(self, sim) -> None:
        state = self.state(sim, idle_memory=False)
        plan = self.plan(self.pool, state, self.demand(sim), sim.now)
        if plan.target > state.target:
            sim.add_nodes(plan.target - len(state.nodes))

    def _sensor(self, sim) -> None:
        self._dirty = False
        state = self.state(sim, idle_memory=True)
        plan = self.plan(self.pool, state, self.demand(sim), sim.now)
        if plan.remove:
            sim.remove_nodes([sim.nodes[node_id] for node_id in plan.remove])
        elif plan.target > state.target:
            sim.add_nodes(plan.target - len(state.nodes))

    def _next_tick(self, sim) -> None:
        """Wake the sensor when the first idle node's timeout runs out (or at once if one already
        has and something changed since the last tick)."""
        if not sim.idle_nodes:
            return
        now = sim.now
        if self.pool.idle_timeout_mode == "auto":
            idle = sorted(sim.idle_nodes, key=lambda n: -n.idle_since)  # most recently idle first
            state = PoolState(len(sim.nodes), tuple(n.view for n in idle), activity=self.activity(now))
            pairs = zip(idle, idle_timeouts(self.pool, state))
        else:
            pairs = ((node, self.pool.idle_timeout_s) for node in sim.idle_nodes)
        soonest = math.inf
        for node, limit in pairs:
            expiry = node.idle_since + limit
            if (expiry > now or self._dirty) and expiry < soonest:
                soonest = expiry
        if soonest < math.inf:
            sim.wake_at(grid_at_or_after(max(soonest, now), self.interval))
