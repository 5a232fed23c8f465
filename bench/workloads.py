"""Short-job workloads, like a data platform's Spark tasks: bursty arrivals, lognormal durations.

Pipelines (DAG runs) arrive as a Poisson process whose rate follows the day (busy office hours,
quiet nights, quieter weekends); each launches a burst of tasks over a few stages, so tasks come in
clumps; each task runs a lognormal time (median well under a minute) on 1-8 CPUs. Tasks of the same
pipeline stage share a user/executable key, so a scheduler can learn their durations from past runs.

    python bench/workloads.py --out short.csv [--days 7] [--dags-per-hour 300] [--seed 1]
    python bench/workloads.py --schedules cron.txt   # a mix of hourly and daily schedules

Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

PIPELINES = 40  # distinct pipelines; each has its own typical size and task length


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


def generate(days: float = 7.0, dags_per_hour: float = 300.0, seed: int = 1) -> list[tuple[float, float, int, str, str]]:
    """(arrival_s, duration_s, cpus, user, executable) rows in arrival order."""
    rng = random.Random(seed)
    kinds = pipelines(rng)
    rows = []
    horizon = days * 86400.0
    peak_rate = dags_per_hour / 3600.0
    t = 0.0
    while True:
        # thinning: a Poisson process with rate peak_rate * day_factor(t)
        t += rng.expovariate(peak_rate)
        if t >= horizon:
            break
        if rng.random() > day_factor(t):
            continue
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
    parser.add_argument("--schedules", type=Path, help="write a cron schedule file (hourly and daily) here")
    args = parser.parse_args()
    if not args.out and not args.schedules:
        parser.error("nothing to do: give --out and/or --schedules")
    if args.out:
        rows = generate(args.days, args.dags_per_hour, args.seed)
        write_csv(args.out, rows)
        durations = sorted(r[1] for r in rows)
        print(f"{args.out}: {len(rows):,} tasks over {args.days:g} days, median {durations[len(rows) // 2]:.0f} s")
    if args.schedules:
        args.schedules.write_text(SCHEDULES)
        print(f"{args.schedules}: {sum(1 for l in SCHEDULES.splitlines() if l and not l.startswith('#'))} schedules")


if __name__ == "__main__":
    main()
