"""Two controllers at once (two daemons' sensors) against one PostgreSQL instance and one group.

What keeps them from conflicting is a lock, not a compare-and-set: `scale_pool` remakes any plan
that changes a pool under that pool's PostgreSQL advisory lock, from the provider's state read
again inside the lock, and applies it before releasing. A compare-and-set on the desired capacity
would not do: scale-in is "terminate these instances", and two controllers that each saw the same
idle nodes would both act on them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from dagster import DagsterEventType, instance_for_test

from dpe_dagster.pools import open_pool
from dpe_dagster.pools.aws.emulator import MotoServer, create_groups
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.usage.eventlog import read_node_lifetimes
from tests.support.postgres import postgres_or_skip
from tests.reliability.harness import advance, alive_instances, clients, environment, queue_run

pytestmark = pytest.mark.slow

CONTROLLER = textwrap.dedent("""
    import sys, time
    from dagster import DagsterInstance
    from dpe_dagster.pools import open_pool
    from dpe_dagster.scaling.control import scale_pool
    from dpe_dagster.scaling.demand import read_demand
    from tests.reliability.harness import environment

    env = environment(idle_timeout_s=0)
    config = env.pool("spot-etl")
    pool = open_pool(config, env)
    instance = DagsterInstance.from_config(sys.argv[1])
    start_at = float(sys.argv[2])
    while time.time() < start_at:  # both controllers start their ticks at the same moment
        time.sleep(0.01)
    memory = {}
    for _ in range(4):
        tick, memory = scale_pool(instance, config, pool, read_demand(instance, env).of("spot-etl"), memory,
                                  time.time(), fresh_demand=lambda: read_demand(instance, env).of("spot-etl"))
        print("removed", [n.node_id for n in tick.removed], flush=True)
""")


def test_two_controllers_take_no_conflicting_actions(tmp_path, monkeypatch):
    url = postgres_or_skip()
    home = tmp_path / "dagster"
    home.mkdir()
    with MotoServer() as moto, instance_for_test(
            temp_dir=str(home), overrides={"storage": {"postgres": {"postgres_url": url}}}) as instance:
        for key, value in {"AWS_ENDPOINT_URL": moto.url, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "DAGSTER_HOME": str(home)}.items():
            monkeypatch.setenv(key, value)
        instance.wipe()
        try:
            env = environment(idle_timeout_s=0)
            autoscaling, ec2 = clients(moto.url)
            create_groups(env, autoscaling, ec2)
            config = env.pool("spot-etl")
            pool = open_pool(config, env)
            runs = [queue_run(instance, "spot-etl") for _ in range(3)]
            scale_pool(instance, config, pool, read_demand(instance, env).of("spot-etl"), {}, 0.0)
            assert len(alive_instances(autoscaling, ec2, "dpe-sim-spot-etl")) == 3
            # One run keeps working; two end: two idle nodes to remove, one busy node to keep.
            for run_id in runs:
                advance(instance, run_id, DagsterEventType.RUN_START)
            for run_id in runs[1:]:
                advance(instance, run_id, DagsterEventType.RUN_SUCCESS)
            busy = [n.id for n in pool.nodes() if n.busy]
            assert len(busy) == 1

            import time

            start_at = str(time.time() + 8)
            controllers = [subprocess.Popen([sys.executable, "-c", CONTROLLER, str(home), start_at],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                            env=dict(os.environ))
                           for _ in range(2)]
            outputs = [c.communicate(timeout=240) for c in controllers]
            for controller, (out, errors) in zip(controllers, outputs):
                assert controller.returncode == 0, errors[-3000:]
            removed = [line for out, _ in outputs for line in out.splitlines() if line != "removed []"]
            assert len(removed) == 1, f"exactly one controller acts on the decision: {removed}"
            assert alive_instances(autoscaling, ec2, "dpe-sim-spot-etl") == busy
            assert pool.target() == 1
            lifetimes = read_node_lifetimes(instance)
            assert len(lifetimes) == 2 and len({n.node_id for n in lifetimes}) == 2
        finally:
            instance.wipe()
