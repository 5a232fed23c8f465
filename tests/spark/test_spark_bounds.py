"""A run's Spark session holds no more than the run asked for: locally `spark.cores.max` is always
set (from `dpe/cpu`, or the pool's default), on Kubernetes dynamic allocation stops at the
executors that fit the request, not at the pool's `max_size`."""

from __future__ import annotations

import json
import urllib.request

import pytest
from dagster import asset, materialize

from dpe_dagster.pools import open_pool
from dpe_dagster.spark.resource import SparkResource, run_spark_conf
from dpe_dagster.tags import pool_tags
from resources import repository_environment
from tests.support.local import local_environment
from tests.support.local import wait_for


def _master_apps(webui: str) -> list[dict]:
    with urllib.request.urlopen(f"{webui.rstrip('/')}/json/", timeout=5) as response:
        return json.load(response)["activeapps"]


@pytest.mark.slow
def test_a_run_asking_for_one_cpu_gets_one_core_of_a_two_worker_pool(tmp_path):
    env = local_environment(tmp_path, node_cpus=1, node_memory_gb=1, max_size=2, default_run_cpus=1)
    pool = open_pool(env.pools["spot-etl"], env)
    seen = {}

    @asset
    def holds_spark(context, spark: SparkResource) -> None:
        session = spark.session()
        assert session.range(100).count() == 100
        apps = wait_for(lambda: [a for a in _master_apps(pool.master_webui) if context.run.run_id in a["name"]],
                        what="the run's application on the master")
        seen["cores"] = apps[0]["cores"]

    try:
        pool.set_target(2)
        wait_for(lambda: sum(n.state == "running" for n in pool.nodes()) == 2, what="two running workers")
        resource = SparkResource(master=pool.master_url, default_run_cpus={"spot-etl": 1},
                                 conf={"spark.executor.memory": "512m"})
        # The run names its pool but not its CPUs: the pool's default (1 CPU) bounds it.
        result = materialize([holds_spark], resources={"spark": resource}, tags=pool_tags("spot-etl"))
        assert result.success
        assert seen["cores"] == 1
    finally:
        pool.shutdown()


def test_executors_on_kubernetes_are_bounded_by_the_run_request():
    env = repository_environment("prod")
    conf = env.spark.conf_for("spot-etl")
    spot = env.pool("spot-etl")
    cores = int(conf["spark.executor.cores"])
    defaults = {name: pool.default_run_cpus for name, pool in env.pools.items()}
    one_node = run_spark_conf(env.spark.master, conf, {"dpe/node_pool": "spot-etl", "dpe/cpu": str(cores)},
                              defaults)
    assert one_node["spark.dynamicAllocation.maxExecutors"] == "1"
    three = run_spark_conf(env.spark.master, conf, {"dpe/node_pool": "spot-etl", "dpe/cpu": str(3 * cores)},
                           defaults)
    assert three["spark.dynamicAllocation.maxExecutors"] == "3"
    # Never more than the pool can hold, and at least one executor for a fractional request.
    huge = run_spark_conf(env.spark.master, conf, {"dpe/node_pool": "spot-etl", "dpe/cpu": "4000"}, defaults)
    assert huge["spark.dynamicAllocation.maxExecutors"] == str(spot.max_size)
    small = run_spark_conf(env.spark.master, conf, {"dpe/node_pool": "spot-etl", "dpe/cpu": "0.5"}, defaults)
    assert small["spark.dynamicAllocation.maxExecutors"] == "1"
    # Untagged CPUs: the pool's default request.
    default = run_spark_conf(env.spark.master, conf, {"dpe/node_pool": "spot-etl"}, defaults)
    assert default["spark.dynamicAllocation.maxExecutors"] == str(max(1, int(spot.default_run_cpus // cores)))
