"""dpe in the simulator: the production control step, run against a simulated provider.

The replay runs `scaling.control.control_step`, the function the autoscaler sensor and the run
launcher run, with an environment's pool configuration and nothing else. What differs is only what
the step observes and acts on: `SimulatedPool` (a `NodePool` over the simulation's nodes), the
trace as the source of runs, and `ReplayBooks` (no locks, lifetimes kept in memory, no budgets).

- the launcher, the moment runs arrive: the step without node memory (scale up only), as
  `request_capacity` does when the launcher launches a run;
- the sensor, on its tick grid (every `sensor_interval_s`): the step with the node memory that
  production keeps in the sensor's cursor.

Production's sensor ticks at every grid point. A tick at which nothing has changed since the last
one plans as the last one did unless time alone changes the plan, which the policy itself says
(`policy.next_change`: an idle node's timeout runs out, a node becomes stuck, a run's expected end
enters or leaves the queueing allowance), so only the others are simulated: the first tick after
anything changed (the sensor's own action included), the first tick at or after the policy's next
change, and the ticks at which a schedule's run enters the look-ahead.
"""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import nullcontext
from typing import Sequence

from dpe_dagster.config import PoolConfig
from dpe_dagster.pools.base import Node, PoolError
from dpe_dagster.scaling.activity import ArrivalRate, pool_activity
from dpe_dagster.scaling.control import PoolTick, control_step, pool_state
from dpe_dagster.scaling.cursor import NodeMemory
from dpe_dagster.scaling.policy import PoolActivity, RunDemand, next_change
from dpe_dagster.scaling.schedules import ScheduledRuns, upcoming_runs
from dpe_dagster.sim.engine import Simulation
from dpe_dagster.sim.placement import for_placement
from dpe_dagster.sim.workload import Workload
from dpe_dagster.tags import PoolRequest
from dpe_dagster.usage.pricing import CONFIG, Price
from dpe_dagster.usage.records import NodeLifetime


def grid_at_or_after(t: float, interval: float) -> float:
    """The first tick of a sensor running every `interval` seconds at or after t."""
    tick = math.ceil(t / interval) * interval
    return tick if tick >= t else tick + interval


class SimulatedPool:
    """A `NodePool` whose nodes are the simulation's: what a provider would report of them."""

    def __init__(self, config: PoolConfig, sim):
        self.name = config.name
        self.config = config
        self.sim = sim

    def target(self) -> int:
        return len(self.sim.nodes)

    def set_target(self, size: int) -> None:
        if size > self.config.max_size:
            raise PoolError(f"pool {self.name}: target {size} is above max_size {self.config.max_size}")
        self.sim.add_nodes(size - len(self.sim.nodes))

    def nodes(self) -> list[Node]:
        return list(self.sim.views.values())

    def remove_nodes(self, node_ids: Sequence[str], stuck: Sequence[str] = ()) -> None:
        nodes = [self.sim.nodes[node_id] for node_id in node_ids]
        busy = [node.id for node in nodes if node.jobs]
        if busy:
            raise PoolError(f"pool {self.name}: refusing to remove busy node(s) {', '.join(busy)}")
        self.sim.remove_nodes(nodes)

    def run_nodes(self) -> dict[str, str]:
        return {run_id(job): nodes[0].id for job, nodes in self.sim.running.items()}


class ReplayBooks:
    """The control step's books in a replay: nothing to lock against, lifetimes kept in memory.
    Budgets are not replayed (a pool's `daily_budget_usd` is ignored here)."""

    contended = False  # the replay is the only controller: a plan is applied as first made

    def __init__(self, sim):
        self.sim = sim
        self.lifetimes: dict[str, NodeLifetime] = {}

    def lock(self, pool: str):
        return nullcontext()

    def price(self, config: PoolConfig, node: Node) -> Price:
        return Price(config.price_per_node_hour, CONFIG)

    def record_lifetime(self, lifetime: NodeLifetime) -> bool:
        if lifetime.node_id in self.lifetimes:
            return False
        self.lifetimes[lifetime.node_id] = lifetime
        return True

    def busy_seconds(self, config: PoolConfig, node, alive, observed: float) -> float:
        return observed  # a replay charges no run: what the loop saw

    def scale_up_blocked(self, config: PoolConfig, nodes: list[Node], now: float) -> str | None:
        return None

    def clock(self) -> float:
        return self.sim.now


def run_id(job: int) -> str:
    return f"j{job}"


def trace_schedules(work: Workload, pool: str) -> list[ScheduledRuns]:
    """The trace's scheduled runs as the schedules the production sensor reads: one per request
    (CPUs, memory), with its fire times."""
    fires: dict[tuple[float, float], list[float]] = defaultdict(list)
    for job in range(len(work)):
        if work.scheduled[job]:
            fires[(work.cpus[job], work.memory_gb[job])].append(work.arrival[job])
    return [ScheduledRuns(f"trace-{cpus:g}cpu-{memory:g}g", PoolRequest(pool, cpus, memory), sorted(times))
            for (cpus, memory), times in fires.items()]


class DpeScaler:
    """The `dpe` policy of a replay: a pool configuration as an environment deploys it, driven by
    the production control step at the launcher's and the sensor's moments."""

    def __init__(self, pool: PoolConfig, *, name: str = "dpe", sensor_interval_s: float = 30.0,
                 schedules: Sequence[ScheduledRuns] = (), lookahead_s: float = 0.0):
        self.name = name
        self.pool = pool
        self.step_function = control_step  # the production function object, unchanged
        self.interval = sensor_interval_s
        self.choose = for_placement(pool.placement)
        self._arrivals = ArrivalRate()  # CPUs asked per second lately, as the sensor keeps it
        self._arrived_cpus = 0.0  # CPUs of runs arrived since the last sensor tick
        self.memory: dict[str, NodeMemory] = {}  # the sensor's cursor

        self.schedules = list(schedules)  # the runs schedules will start, known ahead (pre-warming)
        self.lookahead = lookahead_s
        # The active runs as production's run storage and provider list them, kept in the order of
        # the simulation's `pending` and `running` as they change (this scaler is their `RunWatch`).
        self._pending: dict[int, RunDemand] = {}
        self._running: dict[int, RunDemand] = {}
        self._dirty = True
        self._last_tick = -math.inf

    def start(self, sim: Simulation) -> None:
        self.provider = SimulatedPool(self.pool, sim)
        self.books = ReplayBooks(sim)
        self.work = sim.work
        self.start_times = sim.start
        sim.run_watch = self
        for scheduled in self.schedules:
            for fire in scheduled.fire_times:
                sim.wake_at(max(0.0, math.floor((fire - self.lookahead) / self.interval) * self.interval))

    # -- the source of runs: what run storage and the provider say in production --------------
    def queued(self, job: int) -> None:
        work = self.work
        self._pending[job] = RunDemand(run_id(job), work.cpus[job], work.memory_gb[job], expected_s=work.expected[job])

    def started(self, job: int, nodes: list) -> None:
        work = self.work
        del self._pending[job]
        self._running[job] = RunDemand(run_id(job), work.cpus[job], work.memory_gb[job], node_id=nodes[0].id,
                                       expected_end=self.start_times[job] + (work.expected[job] or 0.0))

    def ended(self, job: int) -> None:
        del self._running[job]

    def demand(self, sim) -> list[RunDemand]:
        """Active runs, each running one on the node it holds (as `read_demand` says in
        production), plus runs that schedules will start within the look-ahead (pre-warming)."""
        return [*self._pending.values(), *self._running.values(),
                *self._upcoming(sim.now, self.lookahead + self.interval)]

    def _upcoming(self, now: float, within: float) -> list[RunDemand]:
        """Runs that schedules will start in (now, now + within], as the production sensor adds them."""
        if not self.schedules:
            return []
        return upcoming_runs(self.schedules, now, within).get(self.pool.name, [])

    def activity(self, now: float) -> PoolActivity:
        return pool_activity(self.pool, self._arrivals, now)

    # -- the control loop's moments --------------------------------------------------------------
    def step(self, sim: Simulation, arrived: bool, ticked: bool, changed: bool) -> None:
        if arrived:
            self._arrived_cpus += sum(sim.work.cpus[j] for j in sim.arrivals)
            self._launcher(sim)
        seen = self._sensor(sim) if ticked else None
        if (arrived or changed) and not ticked or seen is not None and seen.plan.changes(seen.state):
            self._dirty = True  # (nodes the sensor's pass asked for are first seen at its next tick)
        self._next_tick(sim, seen)

    def _launcher(self, sim) -> None:
        self.step_function(self.books, self.pool, self.provider, self.demand(sim), None, sim.now,
                           activity=pool_activity(self.pool, None, sim.now))

    def _sensor(self, sim) -> PoolTick:
        now = sim.now
        if self._arrived_cpus:
            self._arrivals = self._arrivals.add(self._arrived_cpus, now)
            self._arrived_cpus = 0.0
        self._dirty = False
        self._last_tick = now
        tick, self.memory = self.step_function(self.books, self.pool, self.provider, self.demand(sim), self.memory,
                                               now, activity=self.activity(now))
        return tick

    def _next_tick(self, sim, seen: PoolTick | None) -> None:
        """Wake the sensor at its next tick that may act; `seen`: the sensor's pass just made."""
        now = sim.now
        after = grid_at_or_after(now, self.interval)
        if after <= self._last_tick:
            after = self._last_tick + self.interval
        if self._dirty:
            sim.wake_at(after)
            return
        # Nothing changed since the sensor's last pass: its next pass that acts is the first tick at
        # which time alone changes the plan, as the policy says.
        if seen is not None:
            state, demand = seen.state, seen.demand  # the pool and demand as the pass saw them and left them
        else:
            nodes = self.provider.nodes()
            state = pool_state(self.provider.target(), nodes, self.memory,
                               self.books.scale_up_blocked(self.pool, nodes, now), self.activity(now))
            demand = self.demand(sim)
        change = next_change(self.pool, state, demand, now, self.activity, lambda t: grid_at_or_after(t, self.interval))
        if change is not None:
            sim.wake_at(max(after, change))
