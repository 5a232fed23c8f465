"""The policies a replay compares, by name: the one registry that `dpe simulate`, the replay
(`sim/run.py`) and the benchmarks read. Each builds a `Scaler` (`sim/engine.py`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from dpe_dagster.sim.consolidating import ConsolidatingScaler
from dpe_dagster.sim.dpe import DpeScaler, trace_schedules
from dpe_dagster.sim.reactive import ReactiveScaler
from dpe_dagster.sim.workload import Workload

if TYPE_CHECKING:
    from dpe_dagster.sim.engine import Scaler
    from dpe_dagster.sim.run import Setup

# (the workload, the replay's setup, the whole nodes each job takes, the pre-warming look-ahead)
ScalerFactory = Callable[[Workload, "Setup", list[int], float], "Scaler"]


def as_known(work: Workload) -> Workload:
    """The workload as production knows it: expected durations guessed from past runs."""
    return work


def with_true_durations(work: Workload) -> Workload:
    """The workload with every job's true duration known at its arrival (no scheduler has it)."""
    return dataclasses.replace(work, expected=list(work.duration))


@dataclass(frozen=True)
class Policy:
    """One policy a replay can run: what it models (`dpe simulate --help` shows it), how its scaler
    is built, and what it is told of the jobs."""

    summary: str
    build: ScalerFactory
    # what the policy is told of the jobs; a policy told more than production knows is not
    # replayed unless asked for by name
    told: Callable[[Workload], Workload] = as_known

    @property
    def by_default(self) -> bool:
        return self.told is as_known


def _dpe(name: str, prewarm: bool) -> ScalerFactory:
    def build(work: Workload, setup: Setup, whole: list[int], lookahead_s: float) -> Scaler:
        pool = setup.pool()
        return DpeScaler(pool, name=name, sensor_interval_s=setup.sensor_interval_s,
                         schedules=trace_schedules(work, pool.name) if prewarm else [], lookahead_s=lookahead_s)
    return build


def _static(name: str) -> ScalerFactory:
    def build(work: Workload, setup: Setup, whole: list[int], lookahead_s: float) -> Scaler:
        # NumPy (the sim extra) sizes the cluster: imported here, so the names are read without it
        from dpe_dagster.sim.static import StaticScaler, static_sizes

        return StaticScaler(name, static_sizes(work, whole, setup.node_cpus)[name])
    return build


POLICIES: dict[str, Policy] = {
    "dpe": Policy("the pool as the environment deploys it, run by the production control step", _dpe("dpe", False)),
    "dpe-true-durations": Policy("dpe told every job's true duration at its arrival",
                                 _dpe("dpe-true-durations", False), told=with_true_durations),
    "dpe-prewarm": Policy("dpe, plus the trace's scheduled runs as the sensor reads schedules",
                          _dpe("dpe-prewarm", True)),
    "reactive": Policy("Kubernetes Cluster Autoscaler with its defaults",
                       lambda work, setup, whole, lookahead_s: ReactiveScaler(evictable=setup.evictable)),
    "consolidating": Policy("Karpenter with its defaults",
                            lambda work, setup, whole, lookahead_s: ConsolidatingScaler(evictable=setup.evictable)),
    "static-peak": Policy("a fixed 24x7 cluster of the trace's peak demand", _static("static-peak")),
    "static-p95": Policy("a fixed 24x7 cluster of the trace's 95th percentile demand", _static("static-p95")),
}
# What a replay runs when no policy is named: every policy told only what production knows.
DEFAULT_POLICIES = tuple(name for name, policy in POLICIES.items() if policy.by_default)


def checked(names: Iterable[str]) -> tuple[str, ...]:
    """The names, when each is a policy's; else a ValueError naming the others and the allowed."""
    names = tuple(names)
    wrong = [name for name in names if name not in POLICIES]
    if wrong:
        raise ValueError(f"--policy: {', '.join(map(repr, wrong))} is not a policy; allowed: {', '.join(POLICIES)}")
    return names


def policy(name: str) -> Policy:
    return POLICIES[checked([name])[0]]
