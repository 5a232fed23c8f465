"""The generated workloads bench/ measures the simulator on: what their docstrings promise."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import workloads  # noqa: E402


def test_bursty_tasks_are_short_small_and_come_in_bursts_of_hundreds():
    rows = workloads.bursty_tasks(days=0.5, tasks_per_day=40000, seed=3)
    assert rows == workloads.bursty_tasks(days=0.5, tasks_per_day=40000, seed=3)
    assert rows != workloads.bursty_tasks(days=0.5, tasks_per_day=40000, seed=4)
    assert 10000 <= len(rows) <= 30000
    assert 20 <= statistics.median(r[1] for r in rows) <= 45
    assert {r[2] for r in rows} <= {1, 2, 4, 8}
    arrivals = [r[0] for r in rows]
    assert arrivals == sorted(arrivals)
    # the most tasks submitted within any 10 s
    lo, most = 0, 0
    for hi, t in enumerate(arrivals):
        while arrivals[lo] < t - 10.0:
            lo += 1
        most = max(most, hi - lo + 1)
    assert most >= 200


def test_spark_pipelines_fire_on_schedule_and_are_marked():
    work = workloads.spark_pipelines(days=3, daily=10, hourly=4, adhoc_per_day=100, seed=2)
    assert work.arrival == workloads.spark_pipelines(days=3, daily=10, hourly=4, adhoc_per_day=100, seed=2).arrival
    scheduled = [j for j in range(len(work)) if work.scheduled[j]]
    assert len(scheduled) == 3 * (10 + 4 * 24)
    assert all(work.arrival[j] % 60 == 0 for j in scheduled)  # on the minute, to the second
    assert 150 <= len(work) - len(scheduled) <= 450  # ad-hoc runs
    assert max(work.cpus) > 8 and min(work.cpus) <= 4  # a few CPUs up to several 8-CPU nodes
    assert all(d >= 30 for d in work.duration)
    # day-to-day noise: a pipeline's runs do not all last the same
    assert len({work.duration[j] for j in scheduled}) == len(scheduled)
    # what a scheduler guesses: known once past runs finished, never the run's own duration
    assert all(e is None or math.isfinite(e) for e in work.expected)
    assert sum(1 for j in scheduled if work.expected[j] == work.duration[j]) == 0


def test_the_short_job_generator_still_gives_its_former_output():
    rows = workloads.generate(0.2, 300, 1)
    assert len(rows) == 7084
    assert rows[0] == (53.07366198313907, 47.45714369542541, 4, "p39", "stage0")
    assert rows[-1] == (17540.419255178524, 35.0585592885387, 2, "p14", "stage2")
