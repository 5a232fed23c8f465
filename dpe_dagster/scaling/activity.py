"""What a pool's recent activity is, for the policy's `auto` idle timeout and wait target:
how many CPUs arriving runs ask for per second and how often runs arrive (decaying averages), and
how long a node takes to boot. The simulator and the production sensor keep it with the same code."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from dpe_dagster.config import PoolConfig
from dpe_dagster.scaling.policy import PoolActivity, RunDemand

ARRIVAL_RATE_WINDOW_S = 1800.0  # "recent" arrivals: an exponentially decaying average over this time
# A node's typical boot when nothing better is known: a cloud instance takes about one to two minutes
# to join; a pool whose boot timeout is shorter boots at most that long.
TYPICAL_BOOT_S = 120.0


def typical_boot_s(boot_timeout_s: float) -> float:
    """How long a node of a pool with this boot timeout typically takes to take work."""
    return min(TYPICAL_BOOT_S, boot_timeout_s)


@dataclass(frozen=True)
class ArrivalRate:
    """CPUs asked per second by arriving runs, and how often runs arrive (sensor ticks that saw new
    runs, per second: a burst of runs counts once), both decaying over ARRIVAL_RATE_WINDOW_S."""

    rate: float = 0.0
    at: float = 0.0  # when `rate` and `arrivals_per_s` were last updated (unix s)
    arrivals_per_s: float | None = 0.0  # None: not known (a cursor that does not hold it)

    def _decay(self, now: float) -> float:
        return math.exp(-max(0.0, now - self.at) / ARRIVAL_RATE_WINDOW_S)

    def at_time(self, now: float) -> float:
        return self.rate * self._decay(now)

    def arrivals_per_s_at(self, now: float) -> float | None:
        return None if self.arrivals_per_s is None else self.arrivals_per_s * self._decay(now)

    def add(self, cpus: float, now: float) -> "ArrivalRate":
        """The rate after one sensor tick that saw new runs asking for `cpus` CPUs in all."""
        arrivals = self.arrivals_per_s_at(now)
        return ArrivalRate(self.at_time(now) + cpus / ARRIVAL_RATE_WINDOW_S, now,
                           None if arrivals is None else arrivals + 1.0 / ARRIVAL_RATE_WINDOW_S)


@dataclass(frozen=True)
class PoolArrivals:
    """The sensor's memory of a pool's arrivals between ticks: the rate, and the runs already
    counted (the pool's active runs at the last tick), so a run is counted once however many ticks
    it waits or runs."""

    rate: ArrivalRate = ArrivalRate()
    counted: frozenset[str] = field(default_factory=frozenset)

    def see(self, demand: Iterable[RunDemand], now: float) -> "PoolArrivals":
        demand = list(demand)
        new = [run for run in demand if run.run_id not in self.counted]
        rate = self.rate.add(sum(run.cpus for run in new), now) if new else self.rate
        return PoolArrivals(rate, frozenset(run.run_id for run in demand))

    def activity(self, config: PoolConfig, now: float) -> PoolActivity:
        return pool_activity(config, self.rate, now)

    def to_json(self) -> dict[str, Any]:
        return {"rate": self.rate.rate, "at": self.rate.at, "arrivals_per_s": self.rate.arrivals_per_s,
                "counted": sorted(self.counted)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "PoolArrivals":
        arrivals = raw.get("arrivals_per_s")
        return cls(ArrivalRate(float(raw.get("rate", 0.0)), float(raw.get("at", 0.0)),
                               None if arrivals is None else float(arrivals)),
                   frozenset(str(run_id) for run_id in raw.get("counted", ())))


def pool_activity(config: PoolConfig, rate: ArrivalRate | None, now: float) -> PoolActivity:
    """What the policy is told of a pool's recent activity: the arrival rate (the sensor keeps it;
    a launcher, which keeps none, says 0: it never scales down, where the rate matters), how often
    runs arrive, a typical boot, and the pool's wait target."""
    return PoolActivity(rate.at_time(now) if rate is not None else 0.0, typical_boot_s(config.boot_timeout_s),
                        config.wait_target_s, rate.arrivals_per_s_at(now) if rate is not None else 0.0)
