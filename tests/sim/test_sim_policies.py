"""The simulation and its policies on small synthetic traces: what a reader of the results checks."""

from __future__ import annotations

import dataclasses
import inspect
import random

import pytest

from dpe_dagster.config import POOL_FIELDS
from dpe_dagster.scaling import control
from dpe_dagster.sim.boot import BootTime
from dpe_dagster.sim.dpe import DpeScaler, SimulatedPool
from dpe_dagster.sim.engine import Simulation, SimulationError
from dpe_dagster.sim.policies import POLICIES
from dpe_dagster.sim.run import UNBOUNDED_POOL, Setup, lower_bound, simulate, simulate_policy
from dpe_dagster.sim.static import static_sizes
from dpe_dagster.sim.trace import Trace
from dpe_dagster.sim.workload import build_workload, expected_durations


def synthetic(jobs: int = 400, seed: int = 3, big: bool = True) -> Trace:
    rng = random.Random(seed)
    trace = Trace("synthetic")
    t = 0.0
    for i in range(jobs):
        t += rng.expovariate(1 / 90)
        cpus = rng.choice([1, 1, 2, 4, 6] + ([12, 16] if big and i % 10 == 0 else []))
        trace.add(t, rng.lognormvariate(6, 1.2), cpus, key=f"u{i % 7}", requested_s=None)
    return trace


def test_the_simulators_dpe_is_an_environments_pool_run_by_the_production_control_step(monkeypatch):
    from resources import repository_environment

    deployed = repository_environment("prod").pool("spot-etl")
    setup = Setup.from_pool(deployed, sensor_interval_s=15, node_cpus=8)
    work = build_workload(synthetic(60))
    scaler = POLICIES["dpe"].build(work, setup, [0] * len(work), 0.0)
    assert scaler.step_function is control.control_step  # the production function object, not a copy
    replayed = scaler.pool
    # every policy setting is the environment's; only the node shape (the trace's: what runs can
    # have of a node, nothing reserved) and the capacity limit (lifted for the replay, as the
    # baselines have none) differ
    for name in POOL_FIELDS - {"fallback", "node_cpus", "node_memory_gb", "default_run_cpus", "default_run_memory_gb",
                               "max_size", "taints", "reserved_cpus", "reserved_memory_gb"}:
        assert getattr(replayed, name) == getattr(deployed, name), name
    assert (replayed.node_cpus, replayed.max_size, replayed.taints) == (8, UNBOUNDED_POOL, deployed.taints)
    assert (replayed.room_cpus, replayed.reserved_cpus) == (8, 0)

    # the replay acts through the provider protocol, as the sensor and the launcher do
    calls = []
    monkeypatch.setattr(SimulatedPool, "set_target", lambda self, size, real=SimulatedPool.set_target:
                        (calls.append(size), real(self, size)))
    row, sim = simulate_policy("dpe", work, setup)
    assert calls and row["nodes_launched"] == sim.nodes_launched > 0

    # no knob of its own: the scaler takes a pool, a sensor interval and the schedules, nothing else
    assert set(inspect.signature(DpeScaler).parameters) == {"pool", "name", "sensor_interval_s", "schedules",
                                                            "lookahead_s"}
    assert {f.name for f in dataclasses.fields(Setup)} & {"placement", "node_aware", "queue_s"} == set()


def test_every_policy_costs_at_least_the_lower_bound_and_runs_every_job():
    work = build_workload(synthetic())
    for cpus in (8.0, 32.0):
        result = simulate(work, Setup(node_cpus=cpus), tuple(POLICIES))
        bound = result["lower_bound"]["cost"]
        assert set(result["policies"]) == set(POLICIES)
        for name, row in result["policies"].items():
            assert row["cost"] >= bound, name
            assert row["cost_vs_lower_bound"] >= 1.0, name
            assert 0 < row["utilization"] <= 1.0, name
            assert row["wait_p50_s"] <= row["wait_p95_s"] <= row["wait_p99_s"], name


def test_lower_bound_is_cpu_seconds_over_node_cpus():
    trace = Trace("x")
    trace.add(0, 3600, 4)
    trace.add(10, 1800, 8)
    bound = lower_bound(build_workload(trace), Setup(node_cpus=8, price=2.0))
    assert bound["node_hours"] == pytest.approx((4 * 3600 + 8 * 1800) / 8 / 3600)
    assert bound["cost"] == pytest.approx(2 * bound["node_hours"])


def test_a_lone_job_pays_boot_and_idle_timeout():
    trace = Trace("one")
    trace.add(0, 1000, 2)
    setup = Setup(node_cpus=8, boot=BootTime.fixed(120), idle_timeout_s=300, sensor_interval_s=30)
    row, sim = simulate_policy("dpe", build_workload(trace), setup)
    assert row["wait_p50_s"] == 120  # the launcher asks at once; the job waits one boot
    # paid from the request to the end of the replay (the job's end): boot + run
    assert row["node_hours"] == pytest.approx(1120 / 3600, abs=1e-3)
    assert row["scale_ups"] == 1


def test_idle_node_is_reused_then_removed_after_the_timeout():
    trace = Trace("two")
    trace.add(0, 100, 2)
    trace.add(250, 100, 2)  # arrives while the node idles: no second boot
    trace.add(5000, 100, 2)  # arrives after the node left: a new boot
    setup = Setup(node_cpus=8, idle_timeout_s=300, sensor_interval_s=30, pool_extra={"idle_timeout_mode": "fixed"})
    row, sim = simulate_policy("dpe", build_workload(trace), setup)
    assert [s - a for s, a in zip(sim.start, sim.work.arrival)] == [120, 0, 120]
    assert row["nodes_launched"] == 2 and row["scale_downs"] == 1
    # first node: requested 0, idle from 350, first seen idle by the sensor at its tick at 360 (as
    # production's cursor sees it), removed at the first tick 300 s after that (660)
    assert row["node_hours"] == pytest.approx((660 + 220) / 3600, abs=1e-3)


def test_with_the_default_auto_timeout_an_idle_node_goes_when_nothing_arrives():
    trace = Trace("two")
    trace.add(0, 100, 2)
    trace.add(5000, 100, 2)
    setup = Setup(node_cpus=8, idle_timeout_s=1800, sensor_interval_s=30)
    row, sim = simulate_policy("dpe", build_workload(trace), setup)
    assert setup.pool().idle_timeout_mode == "auto"
    # idle from 220; one run of 2 CPUs in half an hour needs no idle node within a boot, so it goes
    # at the tick that first sees it idle (240), not 1800 s later
    assert row["node_hours"] == pytest.approx((240 + 220) / 3600, abs=1e-3)


def test_a_job_larger_than_a_node_takes_whole_nodes():
    trace = Trace("big")
    trace.add(0, 600, 20)
    trace.add(1, 600, 2)
    row, sim = simulate_policy("dpe", build_workload(trace), Setup(node_cpus=8))
    assert sim.whole == [3, 0]
    assert row["peak_nodes"] == 4


def test_reactive_waits_for_its_scan_and_keeps_empty_nodes_ten_minutes():
    trace = Trace("r")
    trace.add(3, 100, 2)
    trace.add(2000, 100, 2)
    row, sim = simulate_policy("reactive", build_workload(trace), Setup(node_cpus=8))
    # replay time starts at the first arrival: scan at 10 s, node ready at 130 s, job ends at 230 s;
    # seen empty at the 240 s scan, removed at 840 s; the job at 1997 s waits for the 2000 s scan
    # and a boot
    assert [s - a for s, a in zip(sim.start, sim.work.arrival)] == [130, 123]
    assert row["nodes_launched"] == 2
    assert row["node_hours"] == pytest.approx((840 - 10 + 2220 - 2000) / 3600, abs=1e-3)  # paid from request


def test_consolidating_batches_pending_pods():
    trace = Trace("k")
    for i in range(5):
        trace.add(i * 0.5, 300, 4)
    row, sim = simulate_policy("consolidating", build_workload(trace), Setup(node_cpus=8))
    assert row["scale_ups"] == 1 and row["nodes_launched"] == 3  # one batch, five 4-CPU pods
    assert min(s - a for s, a in zip(sim.start, sim.work.arrival)) >= 120


def test_static_sizes_cover_peak_and_p95():
    trace = Trace("s")
    for i in range(100):
        trace.add(i * 100, 50, 8)  # one node busy half the time
    trace.add(20000, 10, 64)  # a brief spike of eight nodes
    work = build_workload(trace)
    sizes = static_sizes(work, [0] * 100 + [8], 8.0)
    assert sizes == {"static-peak": 8, "static-p95": 8}  # never fewer nodes than the largest job
    sizes = static_sizes(work, [0] * 101, 8.0)
    assert sizes["static-p95"] == 1 and sizes["static-peak"] == 8


def test_static_cluster_is_paid_around_the_clock():
    trace = Trace("s")
    trace.add(0, 100, 8)
    trace.add(3600, 100, 8)
    row, _ = simulate_policy("static-peak", build_workload(trace), Setup(node_cpus=8))
    assert row["node_hours"] == pytest.approx(3700 / 3600, abs=1e-3)
    assert row["wait_p95_s"] == 0


def test_dpe_told_the_true_durations_replays_them_and_leaves_the_workload_as_known():
    work = build_workload(synthetic(120, seed=4))
    assert work.expected != work.duration  # production only guesses
    _, told = simulate_policy("dpe-true-durations", work, Setup(node_cpus=8))
    _, known = simulate_policy("dpe", work, Setup(node_cpus=8))
    assert told.work.expected == work.duration
    assert known.work.expected == work.expected != work.duration


def test_no_policy_removes_a_busy_node():
    work = build_workload(synthetic(300, seed=9))
    for name in ("dpe", "reactive", "consolidating"):
        sim = Simulation(work, Setup(node_cpus=8).shape(), None)
        sim.scaler = POLICIES[name].build(work, Setup(node_cpus=8), sim.whole, 0.0)
        original = sim.remove_nodes
        def guarded(nodes, original=original):
            assert all(not n.jobs for n in nodes)
            original(nodes)
        sim.remove_nodes = guarded
        sim.run()
        assert sim.done == len(work)


def test_evictable_baselines_restart_evicted_jobs():
    work = build_workload(synthetic(300, seed=5, big=False))
    row, sim = simulate_policy("consolidating", work, Setup(node_cpus=32, evictable=True))
    assert row["evictions"] > 0 and row["lost_cpu_hours"] > 0
    assert sim.done == len(work)


def test_spot_interruptions_requeue_jobs_and_use_the_fallback_price():
    work = build_workload(synthetic(200, seed=2, big=False))
    setup = Setup(node_cpus=8, spot_rate_per_hour=2.0, price=0.3, fallback_price=1.0)
    row, sim = simulate_policy("dpe", work, setup)
    assert row["interruptions"] > 0 and row["evictions"] > 0
    assert sim.done == len(work)
    assert row["cost"] > 0.3 * row["node_hours"]  # some nodes came from the fallback pool


def test_boot_time_distribution_parses_and_samples():
    assert BootTime.parse("90").sample(random.Random(0)) == 90
    uniform = BootTime.parse("uniform:60:180")
    assert all(60 <= uniform.sample(random.Random(i)) <= 180 for i in range(20))
    assert BootTime.parse("lognormal:120:0.2").typical() > 120
    for bad in ("abc", "-5", "uniform:9:1", "lognormal:0:1", "gamma:1:2"):
        with pytest.raises(ValueError, match="--boot-seconds"):
            BootTime.parse(bad)


def test_expected_durations_use_only_finished_runs_of_the_same_job_as_production_does():
    trace = Trace("h")
    trace.add(0, 100, 1, key="a", requested_s=500)
    trace.add(10, 300, 1, key="a", requested_s=500)  # the first run has not finished yet: no estimate
    trace.add(400, 999, 1, key="a", requested_s=500)  # both finished: median 200
    trace.add(401, 50, 1, key=None, requested_s=None)
    trace.add(1500, 10, 1, key="a", requested_s=500)  # three finished: median 300 (not the mean, 466)
    # a requested time is not an estimate: Dagster runs carry none
    assert expected_durations(trace) == [None, None, 200, None, 300]


def test_a_job_no_node_can_hold_is_a_clear_error():
    trace = Trace("x")
    trace.add(0, 10, 2)
    work = build_workload(trace)
    sim = Simulation(work, Setup(node_cpus=8).shape(), None)
    sim.scaler = DpeScaler(Setup(node_cpus=8).pool())
    sim.scaler.choose = lambda s, j, e: None  # a scheduler that never finds room
    with pytest.raises(SimulationError, match="can never run"):
        sim.run()


def test_a_scaler_that_wakes_itself_forever_is_an_error():
    class Restless(DpeScaler):
        def step(self, sim, arrived, ticked, changed):
            super().step(sim, arrived, ticked, changed)
            sim.wake_at(sim.now)

    work = build_workload(synthetic(5))
    sim = Simulation(work, Setup(node_cpus=8).shape(), None)
    sim.scaler = Restless(Setup(node_cpus=8).pool())
    with pytest.raises(SimulationError, match="keeps waking itself"):
        sim.run()


def test_sensor_ticks_fall_on_the_grid_even_with_rounding():
    from dpe_dagster.sim.dpe import grid_at_or_after

    assert grid_at_or_after(4920150.0 + 1e-9, 30.0) > 4920150.0
    assert grid_at_or_after(60.0, 30.0) == 60.0


def test_the_replays_sensor_wakes_when_the_policys_own_rule_says(monkeypatch):
    """The replay skips the sensor's ticks at which nothing changes, asking the policy itself when
    time alone changes its plan: vary the idle timeout rule in policy.py and the idle node goes
    when the varied rule says (a simulator with its own copy of the rule would wake at 540)."""
    from dpe_dagster.scaling import policy

    trace = Trace("one")
    trace.add(0, 100, 2)
    trace.add(5000, 100, 2)
    setup = Setup(node_cpus=8, idle_timeout_s=300, sensor_interval_s=30, pool_extra={"idle_timeout_mode": "fixed"})

    def first_node_removed_at() -> float:
        _, sim = simulate_policy("dpe", build_workload(trace), setup)
        return sim.scaler.books.lifetimes["n1"].removed_at

    # ready at 120, idle from 220, first seen idle at the tick at 240: gone at the tick 300 s later
    assert first_node_removed_at() == 540
    monkeypatch.setattr(policy, "_timeouts", lambda pool, activity, idle_nodes: [45.0] * idle_nodes)
    assert first_node_removed_at() == 300  # 240 + 45, at the next tick


def test_a_burst_of_short_runs_drains_through_fewer_nodes_when_its_target_outlasts_a_boot():
    """Runs whose duration is known (past runs of the same job) take a new node's room one after
    another until the wait target: a target of 200 s boots a third of the nodes a 10 s one does,
    and every run still starts within it."""
    trace = Trace("burst")
    for k in range(3):  # history: the job takes 30 s
        trace.add(1000.0 * k, 30, 8, key="task")
    for i in range(12):
        trace.add(5000 + i * 0.1, 30, 8, key="task")
    work = build_workload(trace)
    launched, waits = {}, {}
    for target in (10, 200):
        setup = Setup(node_cpus=8, boot=BootTime.fixed(120), sensor_interval_s=15,
                      pool_extra={"wait_target_s": target})
        row, sim = simulate_policy("dpe", work, setup)
        launched[target] = row["nodes_launched"]
        waits[target] = [s - a for s, a in zip(sim.start[3:], work.arrival[3:])]
    assert launched[10] - launched[200] == 8  # 12 nodes for the burst, against 4
    assert max(waits[10]) <= 121 and max(waits[200]) <= 200
    assert sorted({round(w / 30) * 30 for w in waits[200]}) == [120, 150, 180]  # three runs per node, in turn
