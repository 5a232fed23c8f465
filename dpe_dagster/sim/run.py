"""Run the policies side by side on one workload, with the same nodes and prices, and score them."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dpe_dagster.config import POOL_FIELDS, PoolConfig, parse_pool
from dpe_dagster.scaling.schedules import look_ahead_s
from dpe_dagster.sim.boot import BootTime
from dpe_dagster.sim.engine import PoolShape, Simulation, whole_nodes
from dpe_dagster.sim.policies import DEFAULT_POLICIES, policy
from dpe_dagster.sim.reference import clairvoyant_node_seconds
from dpe_dagster.sim.workload import Workload, cpu_seconds

UNBOUNDED_POOL = 1_000_000  # the simulated pool may grow as far as demand asks
UNMODELLED_MEMORY_GB = 1e12


@dataclass(frozen=True)
class Setup:
    """One replay: the world (node shape, prices, boots, interruptions) and dpe's pool.

    dpe's pool is `pool_config` as an environment deploys it (see `from_pool`), or, without one,
    a pool with the package's defaults for every setting; `pool_extra` sets more pool fields
    (validated by parse_pool, as in an environment). The shape and price of the replay are the
    trace's (overridable), and the pool may grow as far as the trace asks: a capacity limit is
    the cluster's, not the policy's, and the baselines have none."""

    node_cpus: float = 8.0
    node_memory_gb: float | None = None  # None: memory is not modelled
    price: float = 1.0
    boot: BootTime = BootTime.fixed(120.0)
    spot_rate_per_hour: float = 0.0
    fallback_price: float | None = None
    idle_timeout_s: float | None = None  # None: the pool's (or the package default)
    sensor_interval_s: float = 30.0
    seed: int = 0
    evictable: bool = False  # may the baselines evict running jobs (which then restart)?
    pool_extra: dict = field(default_factory=dict)  # more pool fields for dpe (parsed by parse_pool)
    pool_config: PoolConfig | None = None  # dpe's pool as an environment deploys it

    @classmethod
    def from_pool(cls, config: PoolConfig, *, sensor_interval_s: float, **world: Any) -> "Setup":
        """A replay of an environment's pool: its shape (what runs can have of a node), price and
        every policy setting, unless `world` overrides the shape for the trace."""
        world.setdefault("node_cpus", config.room_cpus)
        world.setdefault("price", config.price_per_node_hour)
        return cls(sensor_interval_s=sensor_interval_s, pool_config=config, **world)

    def shape(self) -> PoolShape:
        memory = math.inf if self.node_memory_gb is None else self.node_memory_gb
        return PoolShape(self.node_cpus, memory, self.price, self.boot, self.spot_rate_per_hour, self.fallback_price)

    def pool(self) -> PoolConfig:
        shape: dict[str, Any] = {
            "max_size": UNBOUNDED_POOL,
            "node_cpus": self.node_cpus,
            "node_memory_gb": self.node_memory_gb or UNMODELLED_MEMORY_GB,
            "price_per_node_hour": self.price,
            # The replay's node is what runs can have of one (the trace's processors per node), for
            # every policy alike: nothing of it is reserved.
            "reserved_cpus": 0.0,
            "reserved_memory_gb": 0.0,
        }
        if self.pool_config is None:
            raw: dict[str, Any] = {"provider": "local", "boot_timeout_s": max(self.boot.typical() * 2, 1.0),
                                   "lifecycle": "spot" if self.spot_rate_per_hour > 0 else "on-demand", **shape}
        else:
            raw = {**pool_fields(self.pool_config), **shape}
            raw["default_run_cpus"] = min(raw["default_run_cpus"], self.node_cpus)
            raw["default_run_memory_gb"] = min(raw["default_run_memory_gb"], shape["node_memory_gb"])
        if self.idle_timeout_s is not None:
            raw["idle_timeout_s"] = self.idle_timeout_s
        raw.update(self.pool_extra)
        return parse_pool(self.pool_config.name if self.pool_config else "sim", raw)


def pool_fields(config: PoolConfig) -> dict[str, Any]:
    """A parsed pool as the raw fields that parse it again (the fallback is another pool's name:
    the replay has no other pools, so it is left out)."""
    return config.model_dump(include=POOL_FIELDS - {"fallback"})


def lower_bound(work: Workload, setup: Setup) -> dict[str, float]:
    """Every job's CPU-seconds packed perfectly onto nodes: no idle, no boot, no fragmentation."""
    node_hours = cpu_seconds(work) / setup.node_cpus / 3600.0
    return {"cost": node_hours * setup.price, "node_hours": node_hours}


def clairvoyant(work: Workload, setup: Setup) -> dict[str, float]:
    """What a pool that knew every arrival ahead would pay, booting nodes ahead of need and packing
    perfectly (see `sim.reference`): the part of the gap to the lower bound that boots make."""
    shape = setup.shape()
    seconds = clairvoyant_node_seconds(work, shape.cpus, whole_nodes(work, shape), setup.boot.typical())
    bound = lower_bound(work, setup)
    cost = seconds / 3600.0 * setup.price
    return {"cost": cost, "node_hours": seconds / 3600.0,
            "cost_vs_lower_bound": cost / bound["cost"] if bound["cost"] > 0 else math.nan}


def percentiles(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return 0.0, 0.0, 0.0
    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return float(p50), float(p95), float(p99)


def summarize(sim: Simulation, seconds: float, bound: dict[str, float], setup: Setup) -> dict[str, Any]:
    work = sim.work
    waits = [s - a for s, a in zip(sim.start, work.arrival)]
    p50, p95, p99 = percentiles(waits)
    node_hours = sim.paid_node_seconds / 3600.0
    cost = sim.cost_node_seconds / 3600.0
    result = {
        "cost": round(cost, 3),
        "cost_vs_lower_bound": round(cost / bound["cost"], 4) if bound["cost"] > 0 else None,
        "node_hours": round(node_hours, 3),
        "utilization": round(cpu_seconds(work) / (sim.paid_node_seconds * setup.node_cpus), 4)
        if sim.paid_node_seconds > 0 else 0.0,
        "wait_p50_s": round(p50, 1),
        "wait_p95_s": round(p95, 1),
        "wait_p99_s": round(p99, 1),
        "scale_ups": sim.scale_ups,
        "scale_downs": sim.scale_downs,
        "sim_seconds": round(seconds, 2),
        "nodes_launched": sim.nodes_launched,
        "peak_nodes": sim.peak_nodes,
        "evictions": sim.evictions,
        "lost_cpu_hours": round(sim.lost_cpu_seconds / 3600.0, 1),
        "interruptions": sim.interruptions,
        # where the paid node-hours went: booting, idle (ready, no job), and busy nodes' unused CPUs
        "boot_node_hours": round(sim.boot_node_seconds / 3600.0, 1),
        "idle_node_hours": round((sim.paid_node_seconds - sim.boot_node_seconds - sim.busy_node_seconds) / 3600.0, 1),
        "fragmented_node_hours": round(sim.busy_node_seconds / 3600.0 - cpu_seconds(work) / setup.node_cpus / 3600.0, 1),
    }
    scheduled = [w for w, s in zip(waits, work.scheduled) if s]
    if scheduled:
        result["scheduled_runs"] = len(scheduled)
        result["scheduled_wait_p95_s"] = round(percentiles(scheduled)[1], 1)
    return result


def simulate_policy(name: str, work: Workload, setup: Setup, *, progress: Callable[[float], None] | None = None,
                    timeline: bool = False) -> tuple[dict[str, Any], Simulation]:
    """Replay the workload under the registry's policy `name` (`sim/policies.py`)."""
    chosen = policy(name)
    work = chosen.told(work)
    bound = lower_bound(work, setup)
    shape = setup.shape()
    began = time.perf_counter()
    sim = Simulation(work, shape, None, seed=setup.seed, progress=progress, timeline=timeline)
    sim.scaler = chosen.build(work, setup, sim.whole, look_ahead_s(setup.pool(), setup.sensor_interval_s))
    sim.run()
    return summarize(sim, time.perf_counter() - began, bound, setup), sim


def simulate(work: Workload, setup: Setup, policies: tuple[str, ...] = DEFAULT_POLICIES,
             progress: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"trace": work.name, "jobs": len(work), "lower_bound": lower_bound(work, setup),
                           "policies": {}}
    out["lower_bound"] = {k: round(v, 3) for k, v in out["lower_bound"].items()}
    out["clairvoyant"] = {k: round(v, 4) for k, v in clairvoyant(work, setup).items()}
    for name in policies:
        report = (lambda f, name=name: progress(name, f)) if progress else None
        out["policies"][name], _ = simulate_policy(name, work, setup, progress=report)
    return out
