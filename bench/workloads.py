"""Short-job workloads, like a data platform's Spark tasks: bursty arrivals, lognormal durations.

Pipelines (DAG runs) arrive as a Poisson process whose rate follows the day (busy office hours,
quiet nights, quieter weekends); each launches a burst of tasks over a few stages, so tasks come in
clumps; each task runs a lognormal time (median well under a minute) on 1-8 CPUs. Tasks of the same
pipeline stage share a user/executable key, so a scheduler can learn their durations from past runs.

    python bench/workloads.py --out short.csv [--days 7] [--dags-per-hour 300] [--seed 1]
    python bench/workloads.py --schedules cron.txt   # a mix of hourly and daily schedules
    python bench/workloads.py --out bursty.csv --bursty --days 2 [--tasks-per-day 70000]

Two more generators, for measuring the simulator at scale: `bursty_tasks` (tens of thousands of
short batch tasks a day, submitted in bursts of hundreds) and `spark_pipelines` (daily and hourly
scheduled pipelines firing at exact times, plus ad-hoc runs, as a `Workload` whose scheduled runs
are marked). Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

from dpe_dagster.sim.trace import Trace
from dpe_dagster.sim.workload import Workload, expected_durations

PIPELINES = 40  # distinct pipelines; each has its own typical size and task length
WEEKDAY_FACTOR = 0.25 + 0.75 * 4.0 * math.sqrt(math.pi) / 24.0  # `day_factor` averaged over a weekday


@dataclass(frozen=True)
class Pipeline:
    name: str
    tasks_median: float
    task_median_s: float
    cpus: int
    stages: int


def day_factor(t: float) -> float:
    """Relative arrival rate at time t (seconds from a Monday 00:00): office hours peak, nights and
    weekends quiet."""
    hour = (t / 3600.0) % 24
    weekday = int(t // 86400) % 7
    daily = 0.25 + 0.75 * math.exp(-((hour - 13.0) / 4.0) ** 2)
    return daily * (0.4 if weekday >= 5 else 1.0)


def pipelines(rng: random.Random) -> list[Pipeline]:
    out = []
    for i in range(PIPELINES):
        out.append(Pipeline(
            name=f"p{i:02d}",
            tasks_median=rng.choice([2, 4, 8, 16]),
            task_median_s=rng.lognormvariate(math.log(25), 0.5),
            cpus=rng.choice([1, 1, 2, 2, 2, 4]),
            stages=rng.choice([1, 2, 3]),
        ))
    return out


def arrivals(rng: random.Random, peak_rate: float, horizon: float):
    """Arrival times of a Poisson process whose rate is peak_rate * day_factor(t), up to horizon
    (by thinning). A generator: the caller's own draws between arrivals keep their place in the
    random sequence."""
    t = 0.0
    while True:
        t += rng.expovariate(peak_rate)
        if t >= horizon:
            return
        if rng.random() <= day_factor(t):
            yield t


def generate(days: float = 7.0, dags_per_hour: float = 300.0, seed: int = 1) -> list[tuple[float, float, int, str, str]]:
    """(arrival_s, duration_s, cpus, user, executable) rows in arrival order."""
    rng = random.Random(seed)
    kinds = pipelines(rng)
    rows = []
    horizon = days * 86400.0
    peak_rate = dags_per_hour / 3600.0
    for t in arrivals(rng, peak_rate, horizon):
        kind = rng.choice(kinds)
        stage_start = t
        for stage in range(kind.stages):
            tasks = max(1, round(rng.lognormvariate(math.log(kind.tasks_median), 0.5)))
            longest = 0.0
            for _ in range(tasks):
                offset = rng.expovariate(1 / 3.0)  # a stage's tasks are submitted within seconds
                duration = max(1.0, rng.lognormvariate(math.log(kind.task_median_s), 0.9))
                rows.append((stage_start + offset, duration, kind.cpus, kind.name, f"stage{stage}"))
                longest = max(longest, offset + duration)
            stage_start += longest + rng.uniform(2, 10)  # the next stage starts when this one ends
    rows.sort()
    return rows


BURST_KINDS = 60  # distinct task kinds; each has its own typical length and CPUs


def bursty_tasks(days: float = 2.0, tasks_per_day: float = 70000.0, burst_median: float = 200.0,
                 burst_sigma: float = 1.0, duration_sigma: float = 1.4, seed: int = 1) -> list[tuple[float, float, int, str, str]]:
    """Short batch tasks in bursts: (arrival_s, duration_s, cpus, user, executable) rows in arrival
    order. Bursts arrive as a Poisson process following the day (`day_factor`); each holds
    lognormally many tasks (median `burst_median`, spread `burst_sigma`: hundreds at once, now and
    then thousands) of one kind, submitted
    within a few seconds; tasks run a lognormal time (median about 30 s, spread `duration_sigma`:
    a long tail of tasks running many minutes) on 1-8 CPUs.
    A weekday holds about `tasks_per_day` tasks, a weekend day 40% of that."""
    rng = random.Random(seed)
    kinds = [(f"b{i:02d}", rng.lognormvariate(math.log(30), 0.35), rng.choice([1, 1, 2, 2, 4, 8]))
             for i in range(BURST_KINDS)]
    mean_burst = burst_median * math.exp(burst_sigma * burst_sigma / 2)
    peak_rate = tasks_per_day / mean_burst / 86400.0 / WEEKDAY_FACTOR  # bursts per second at the daily peak
    rows = []
    horizon = days * 86400.0
    for t in arrivals(rng, peak_rate, horizon):
        name, median_s, cpus = rng.choice(kinds)
        for _ in range(max(1, round(rng.lognormvariate(math.log(burst_median), burst_sigma)))):
            offset = rng.expovariate(1 / 2.0)
            duration = max(1.0, rng.lognormvariate(math.log(median_s), duration_sigma))
            rows.append((t + offset, duration, cpus, name, "task"))
    rows.sort()
    return rows


@dataclass(frozen=True)
class ScheduledPipeline:
    name: str
    every: str  # "daily" or "hourly"
    hour: int  # daily: the hour it fires (UTC); hourly: unused
    minute: int
    cpus: int
    median_s: float


def spark_pipelines(days: float = 7.0, daily: int = 40, hourly: int = 12, adhoc_per_day: float = 300.0,
                    node_cpus: int = 8, seed: int = 1) -> Workload:
    """Spark-like pipelines: `daily` pipelines each firing once a day and `hourly` ones each firing
    every hour, at exact times (whole minutes, several often at the same second), plus ad-hoc runs
    (Poisson, following `day_factor`). A run asks for a few CPUs up to several nodes' worth
    (`node_cpus` per node) and lasts minutes: its pipeline's typical time with day-to-day noise.
    Scheduled runs are marked `scheduled`; every run's expected duration is what past runs of the
    same pipeline say, as `dpe simulate` guesses it from a trace."""
    rng = random.Random(seed)
    sizes = [2, 4, 4, 8, 8, 16, node_cpus * 2, node_cpus * 4, node_cpus * 8]
    scheduled = [ScheduledPipeline(f"daily{i:02d}", "daily", rng.choice([0, 1, 2, 3, 4, 5, 6, 8, 12, 18]),
                                   rng.choice([0, 0, 0, 15, 30, 45]), rng.choice(sizes),
                                   rng.lognormvariate(math.log(900), 0.6)) for i in range(daily)]
    scheduled += [ScheduledPipeline(f"hourly{i:02d}", "hourly", 0, rng.choice([0, 0, 5, 10, 20, 30, 45]),
                                    rng.choice(sizes[:6]), rng.lognormvariate(math.log(240), 0.5))
                  for i in range(hourly)]
    adhoc = [(f"adhoc{i:02d}", rng.choice(sizes), rng.lognormvariate(math.log(600), 0.8)) for i in range(30)]
    rows = []  # (arrival, duration, cpus, key, scheduled)
    horizon = days * 86400.0
    for day in range(math.ceil(days)):
        for pipeline in scheduled:
            hours = [pipeline.hour] if pipeline.every == "daily" else range(24)
            for hour in hours:
                fire = day * 86400.0 + hour * 3600.0 + pipeline.minute * 60.0
                if fire < horizon:
                    duration = max(30.0, pipeline.median_s * rng.lognormvariate(0.0, 0.25))
                    rows.append((fire, duration, pipeline.cpus, pipeline.name, True))
    peak_rate = adhoc_per_day / 86400.0 / WEEKDAY_FACTOR
    for t in arrivals(rng, peak_rate, horizon):
        name, cpus, median_s = rng.choice(adhoc)
        rows.append((t, max(30.0, median_s * rng.lognormvariate(0.0, 0.5)), cpus, name, False))
    rows.sort(key=lambda r: (r[0], r[3]))
    trace = Trace("spark-pipelines")
    for arrival, duration, cpus, key, _ in rows:
        trace.add(arrival, duration, cpus, key=key)
    return Workload(name=trace.name, arrival=list(trace.arrival), duration=list(trace.duration),
                    cpus=list(trace.cpus), memory_gb=[0.0] * len(rows), expected=expected_durations(trace),
                    scheduled=[r[4] for r in rows])


def write_csv(path: Path, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arrival_s", "duration_s", "cpus", "user", "executable"])
        for arrival, duration, cpus, user, exe in rows:
            writer.writerow([f"{arrival:.2f}", f"{duration:.2f}", cpus, user, exe])


SCHEDULES = """\
# A mix of hourly and daily schedules (NAME MINUTE HOUR DOM MONTH DOW CPUS DURATION_S), UTC.
hourly-ingest      5  *    * * *    4   600
hourly-metrics     35 *    * * *    2   300
half-hourly-sync   */30 *  * * *    1   120
daily-rollup       0  2    * * *    16  3600
daily-report       30 6    * * 1-5  8   1200
daily-ml-features  15 1    * * *    32  5400
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the short-job trace (CSV) here")
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--dags-per-hour", type=float, default=300.0, help="pipeline runs per hour at the daily peak")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bursty", action="store_true", help="write bursty short batch tasks instead")
    parser.add_argument("--tasks-per-day", type=float, default=70000.0, help="with --bursty: tasks a day at the peak rate")
    parser.add_argument("--schedules", type=Path, help="write a cron schedule file (hourly and daily) here")
    args = parser.parse_args()
    if not args.out and not args.schedules:
        parser.error("nothing to do: give --out and/or --schedules")
    if args.out:
        if args.bursty:
            rows = bursty_tasks(args.days, args.tasks_per_day, seed=args.seed)
        else:
            rows = generate(args.days, args.dags_per_hour, args.seed)
        write_csv(args.out, rows)
        durations = sorted(r[1] for r in rows)
        print(f"{args.out}: {len(rows):,} tasks over {args.days:g} days, median {durations[len(rows) // 2]:.0f} s")
    if args.schedules:
        args.schedules.write_text(SCHEDULES)
        print(f"{args.schedules}: {sum(1 for line in SCHEDULES.splitlines() if line and not line.startswith('#'))} schedules")


if __name__ == "__main__":
    main()
