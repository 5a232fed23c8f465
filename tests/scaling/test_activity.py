"""A pool's recent activity (arrival rate, boot) as the sensor keeps it across ticks, and what it
does to the `auto` idle timeout: each run counted once, the rate decaying, the policy's timeout
following it in production as in the simulator."""

from __future__ import annotations

import json

import pytest
from dagster import build_sensor_context

from dpe_dagster.config import parse_environment, parse_pool
from dpe_dagster.pools.base import Node
from dpe_dagster.scaling.activity import ARRIVAL_RATE_WINDOW_S, TYPICAL_BOOT_S, PoolArrivals
from dpe_dagster.scaling.cursor import load_arrivals
from dpe_dagster.scaling.policy import PoolState, RunDemand, idle_timeout
from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from tests.reliability.harness import queue_run


def boot_timeout(seconds):
    return parse_pool("p", {"provider": "local", "max_size": 4, "node_cpus": 2, "node_memory_gb": 4,
                            "price_per_node_hour": 1, "boot_timeout_s": seconds})


def test_each_run_is_counted_once_and_the_rate_decays():
    runs = [RunDemand("a", 2, 4), RunDemand("b", 4, 8)]
    seen = PoolArrivals().see(runs, now=1000)
    assert seen.activity(boot_timeout(600), 1000).cpu_arrival_rate == pytest.approx(6 / ARRIVAL_RATE_WINDOW_S)
    again = seen.see(runs, now=1010)  # the same runs, still waiting or running: nothing new
    assert again.rate == seen.rate
    later = again.see([*runs, RunDemand("c", 1, 1)], now=1000 + ARRIVAL_RATE_WINDOW_S)
    assert later.rate.rate == pytest.approx(6 / ARRIVAL_RATE_WINDOW_S / 2.718281828 + 1 / ARRIVAL_RATE_WINDOW_S)
    assert later.activity(boot_timeout(600), 1000 + 2 * ARRIVAL_RATE_WINDOW_S).cpu_arrival_rate < later.rate.rate
    assert PoolArrivals.from_json(json.loads(json.dumps(later.to_json()))) == later
    assert seen.activity(boot_timeout(30), 1000).boot_s == 30 and seen.activity(boot_timeout(600), 1000).boot_s == TYPICAL_BOOT_S


def test_the_auto_idle_timeout_follows_arrivals():
    config = parse_environment("t", {"pools": {"p": {
        "provider": "local", "max_size": 4, "node_cpus": 2, "node_memory_gb": 4, "price_per_node_hour": 1,
        "idle_timeout_s": 900, "idle_timeout_mode": "auto"}}}).pool("p")
    idle = (Node("n1", "running", 0, False), Node("n2", "running", 0, False))
    quiet = PoolArrivals().activity(boot_timeout(600), 0)
    burst = PoolArrivals().see([RunDemand(str(i), 2, 1) for i in range(200)], 0).activity(boot_timeout(600), 0)
    stream = PoolArrivals()
    for t in range(0, 1800, 15):  # a run of 2 CPUs at every tick for half an hour
        stream = stream.see([RunDemand(str(t), 2, 1)], t)
    steady = stream.activity(boot_timeout(600), 1800)
    timeouts = [idle_timeout(config, PoolState(2, idle, activity=a)) for a in (None, quiet, burst, steady)]
    assert timeouts[0] == 900, "no activity known: the pool's fixed timeout"
    assert timeouts[1] == 0, "nothing arriving: nothing to wait for"
    assert timeouts[2] == 0, "one burst in half an hour needs a node once, not 200 times: not worth keeping it"
    assert TYPICAL_BOOT_S < timeouts[3] <= 900, "runs arriving all along: keep nodes longer, never past the cap"


def test_the_sensor_keeps_arrivals_in_its_cursor_and_counts_a_run_once(aws_sim):
    env, instance, _ = aws_sim(idle_timeout_mode="auto")
    sensor = build_autoscaler_sensor(env)

    def tick(cursor):
        context = build_sensor_context(instance=instance, cursor=cursor)
        sensor(context)
        return context.cursor

    first = queue_run(instance, "spot-etl", cpus=2)
    cursor = tick(None)
    rate = load_arrivals(cursor)["spot-etl"].rate.rate
    assert rate == pytest.approx(2 / ARRIVAL_RATE_WINDOW_S)
    assert load_arrivals(cursor)["spot-etl"].counted == {first}
    cursor = tick(cursor)  # the run still waits: not counted again
    assert load_arrivals(cursor)["spot-etl"].rate.rate == pytest.approx(rate)
    second = queue_run(instance, "spot-etl", cpus=4)
    cursor = tick(cursor)
    assert load_arrivals(cursor)["spot-etl"].rate.rate == pytest.approx(6 / ARRIVAL_RATE_WINDOW_S, rel=1e-3)
    assert load_arrivals(cursor)["spot-etl"].counted == {first, second}
    assert load_arrivals(cursor)["ondemand-etl"].rate.rate == 0
