"""With a driver pool, each pool's demand is what lands on it: one driver per run on the driver
pool (the run pod, as the launcher builds it), the run's executors on its tagged pool.

Real parts: a SQLite Dagster instance holding queued runs, the shipped staging environment, the
autoscaler sensor against moto's server on loopback, and the k8s launcher on eks-sim
(tests/support/k8s_runs.py): its Job admitted by the real control plane, the driver pool's instance
joining as a node, and the scheduler binding the run's pod to it."""

from __future__ import annotations

import math

import boto3
import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, build_sensor_context

import resources.aws_sim
import resources.eks_sim
from dpe_dagster.config import ConfigError, parse_environment
from dpe_dagster.launch.k8s import pool_container_context
from dpe_dagster.pools import open_pool
from dpe_dagster.pools.aws.emulator import create_groups
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.scaling.policy import PoolState, plan_pool
from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from dpe_dagster.spark.kubernetes import executor_shape
from dpe_dagster.tags import CPU_TAG, POOL_TAG
from resources import repository_environment
from resources.staging import cluster_environment
from tests.reliability.harness import new_run
from tests.support.aws import dagster, moto  # noqa: F401 (fixtures)
from tests.support.cluster import wait_for
from tests.support.k8s_runs import cluster, eks_sim, instance, jobs, kube, launch, make_run  # noqa: F401 (fixtures)

REGION = "us-east-1"




def queue(instance: DagsterInstance, pool: str, cpus: int | None = None) -> str:
    tags = {POOL_TAG: pool, **({CPU_TAG: str(cpus)} if cpus else {})}
    return new_run(instance, tags, DagsterRunStatus.QUEUED).run_id


def nodes_wanted(env, demand, pool: str) -> int:
    config = env.pool(pool)
    return plan_pool(config, PoolState(target=config.min_size, nodes=()), demand.of(pool), 0.0).target


def test_each_queued_run_asks_the_driver_pool_for_one_driver_and_its_pool_for_its_executors(dagster):
    env = repository_environment("staging")
    assert env.driver_pool == "ondemand-driver"
    driver, spot = env.pool("ondemand-driver"), env.pool("spot-etl")
    small = [queue(dagster, "spot-etl") for _ in range(2)]  # the pool's default: 4 CPUs
    big = queue(dagster, "spot-etl", cpus=12)

    demand = read_demand(dagster, env)

    drivers = demand.of("ondemand-driver")
    assert sorted(d.run_id for d in drivers) == sorted([*small, big])
    assert {(d.cpus, d.memory_gb) for d in drivers} == {(driver.default_run_cpus, driver.default_run_memory_gb)}
    # Three 1-CPU / 3 GB drivers on 2-vCPU / 8 GiB EKS nodes, which have 1.805 CPUs for runs (the
    # kubelet's reservation and the DaemonSets take the rest): one driver per node, as the scheduler
    # would place them; three nodes, not the pool's minimum of one.
    assert driver.room_cpus == pytest.approx(1.805) and driver.room_cpus < 2 * driver.default_run_cpus
    assert nodes_wanted(env, demand, "ondemand-driver") == 3

    cores, _ = executor_shape(spot)
    executors = demand.of("spot-etl")
    per_run = {run_id: sum(1 for e in executors if e.run_id == run_id) for run_id in [*small, big]}
    # As many executors as the request fills (the Spark session's maxExecutors bound).
    assert per_run == {**{run_id: 1 for run_id in small}, big: math.floor(12 / cores)}
    assert all(e.cpus == cores for e in executors)
    # One executor fills one node: 12 CPUs of 3-core executors need 4 nodes, not 12/4 = 3.
    assert nodes_wanted(env, demand, "spot-etl") == 2 + 4


def test_the_run_pod_requests_what_the_driver_pool_is_sized_for(dagster):
    env = repository_environment("staging")
    run = dagster.get_run_by_id(queue(dagster, "spot-etl"))
    driver_demand = read_demand(dagster, env).of("ondemand-driver")[0]
    config = pool_container_context(run, env).run_k8s_config
    assert config.pod_spec_config["node_selector"] == {"dpe.io/pool": "ondemand-driver"}
    requests = config.container_config["resources"]["requests"]
    assert requests == {"cpu": f"{driver_demand.cpus:g}", "memory": f"{round(driver_demand.memory_gb * 1024)}Mi"}


def test_a_driver_pool_that_is_not_a_pool_is_refused_naming_the_field():
    raw = resources.aws_sim.environment()
    raw["driver_pool"] = "ondemand-drivers"
    with pytest.raises(ConfigError, match=r"^driver_pool: 'ondemand-drivers' is not a defined pool; "
                                          r"defined pools: ondemand-etl, spot-etl"):
        parse_environment("aws-sim", raw)


# -- the sensor path against the AWS emulator ---------------------------------------------------
def staging_on(endpoint: str):
    """The shipped staging pools and Spark settings, against the emulator, busy-ness from runs."""
    raw = cluster_environment("staging", spot_max=6, ondemand_max=3, idle_timeout_s=300)
    raw["aws"] = {"region": REGION, "endpoint_url": endpoint, "max_attempts": 3}
    for pool in raw["pools"].values():
        pool["settings"]["busy_source"] = "dagster_runs"
    return parse_environment("staging", raw)


def test_the_autoscaler_sensor_sizes_the_driver_pool_and_the_executor_pool(moto, dagster, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env = staging_on(moto.url)
    autoscaling = boto3.client("autoscaling", region_name=REGION, endpoint_url=moto.url)
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
    create_groups(env, autoscaling, ec2)
    for _ in range(5):
        queue(dagster, "spot-etl")  # 5 drivers of 1 CPU: 3 driver nodes; 5 executors: 5 spot nodes

    build_autoscaler_sensor(env)(build_sensor_context(instance=dagster))

    assert open_pool(env.pool("ondemand-driver"), env).target() == 3
    assert open_pool(env.pool("spot-etl"), env).target() == 5


# -- the launcher ---------------------------------------------------------------------------------
@pytest.fixture
def driver_pool_env(monkeypatch):
    """eks-sim with run pods on its on-demand pool (the launcher reads the environment at each launch)."""
    shipped = resources.eks_sim.environment
    monkeypatch.setattr(resources.eks_sim, "environment", lambda: {**shipped(), "driver_pool": "ondemand-etl"})


def test_the_launcher_puts_the_run_pod_on_the_driver_pool_and_asks_it_for_room(driver_pool_env, eks_sim, instance,
                                                                                 kube):
    env, _ = eks_sim
    run = make_run(instance, {POOL_TAG: "spot-etl"})
    launch(instance, run)
    [job] = jobs(kube)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"dpe.io/pool": "ondemand-etl"}
    assert open_pool(env.pool("ondemand-etl"), env).target() == 1  # asked at launch, not at the next tick
    assert open_pool(env.pool("spot-etl"), env).target() == 1

    # The driver pool's instance joins, and the scheduler binds the run's pod to it.
    core = kube.core()

    def bound():
        pods = core.list_namespaced_pod("dagster", label_selector=f"dagster/run-id={run.run_id}").items
        return pods[0] if pods and pods[0].spec.node_name else None

    node = core.read_node(wait_for("the run's pod bound to a node", bound, timeout_s=60).spec.node_name)
    assert node.metadata.labels["dpe.io/pool"] == "ondemand-etl"
    [driver_node] = [n.id for n in open_pool(env.pool("ondemand-etl"), env).nodes()]
    assert node.spec.provider_id.endswith(f"/{driver_node}")


def test_a_launcher_driver_pool_that_disagrees_with_the_environment_fails_the_run_saying_so(eks_sim, instance, kube,
                                                                                            tmp_path):
    config = yaml.safe_load((tmp_path / "dagster.yaml").read_text())
    config["run_launcher"]["config"]["driver_pool"] = "ondemand-etl"
    home = tmp_path / "with-launcher-driver-pool"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with DagsterInstance.from_config(str(home)) as other:
        run = make_run(other, {POOL_TAG: "spot-etl"})
        launch(other, run)
        assert other.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        failure = [e.message for e in other.all_logs(run.run_id) if "driver_pool" in (e.message or "")]
    assert failure and "run_launcher.config.driver_pool: 'ondemand-etl' disagrees with environment 'eks-sim'" in failure[0]
    assert jobs(kube) == []
