"""Spark on Kubernetes as staging/prod deploy it: the driver on the on-demand driver pool, the
executors on the pool the run was placed on, with graceful decommissioning and dynamic allocation.

The executor test runs a real Spark driver in client mode (pyspark, in a Dagster run with the
`spark` resource prod's code location gets) against the real control plane, acting as the run
pod's ServiceAccount: Spark creates the executor pods, the scheduler puts them on a node that
joined for the pool's instances, kwok reports them running (no executor JVM starts: there is no
container runtime), and the driver deletes them when the session stops."""

from __future__ import annotations

import pytest
import yaml
from dagster import asset, materialize

from dpe_dagster.config import ConfigError, parse_pool
from dpe_dagster.pools import open_pool
from dpe_dagster.pools.aws.emulator import create_groups
from dpe_dagster.spark.kubernetes import EXECUTOR_SERVICE_ACCOUNT, executor_pod_template, spark_on_k8s
from dpe_dagster.spark.resource import SparkResource
from dpe_dagster.tags import pool_tags
from resources import repository_environment
from tests.cluster.sandbox import deploy_documents
from tests.support.aws import aws, clients, moto  # noqa: F401  (fixtures)
from tests.support.cluster import cluster, eks, kube, node_ready, wait_for  # noqa: F401  (fixtures)

NAMESPACE = "dagster"


@pytest.mark.parametrize("name", ["staging", "prod"])
def test_environment_spark_puts_the_driver_on_demand_and_executors_on_each_pool(name):
    env = repository_environment(name)
    conf = env.spark.conf
    assert env.spark.master.startswith("k8s://")
    driver = env.pool(env.driver_pool)
    assert driver.lifecycle == "on-demand" and driver.taints
    assert conf["spark.kubernetes.driver.node.selector.dpe.io/pool"] == driver.name
    assert conf["spark.decommission.enabled"] == "true"
    assert conf["spark.storage.decommission.shuffleBlocks.enabled"] == "true"
    assert conf["spark.storage.decommission.fallbackStorage.path"].startswith("s3a://")
    assert conf["spark.kubernetes.authenticate.executor.serviceAccountName"] == EXECUTOR_SERVICE_ACCOUNT
    assert conf["spark.dynamicAllocation.shuffleTracking.enabled"] == "true"
    # Nothing about where executors go is environment-wide: it is the run's pool's.
    assert not any(key.startswith("spark.kubernetes.executor.node.selector.") for key in conf)
    assert set(env.spark.executor_conf) == set(env.pools) - {driver.name}
    for pool_name, executors in env.spark.executor_conf.items():
        pool = env.pool(pool_name)
        assert executors["spark.kubernetes.executor.node.selector.dpe.io/pool"] == pool_name
        assert executors["spark.kubernetes.executor.podTemplateFile"].endswith(f"-{pool_name}.yaml")
        assert int(executors["spark.dynamicAllocation.maxExecutors"]) == pool.max_size
        # One executor fills what runs can have of one node, and fits in it.
        cores, memory_mib = int(executors["spark.executor.cores"]), int(executors["spark.executor.memory"][:-1])
        assert 1 <= cores <= pool.room_cpus and memory_mib + max(384, memory_mib * 0.10) <= pool.room_memory_gb * 1024


def test_the_shipped_executor_templates_are_each_pools_and_evictable():
    env = repository_environment("prod")
    [config_map] = deploy_documents("spark-executor-template.yaml")
    for pool_name in env.spark.executor_conf:
        shipped = yaml.safe_load(config_map["data"][f"executor-pod-template-{pool_name}.yaml"])
        assert shipped == executor_pod_template(env.pool(pool_name)), \
            "regenerate deploy/k8s/spark-executor-template.yaml (see deploy/README.md)"
        assert {"key": "dpe.io/pool", "operator": "Equal", "value": pool_name, "effect": "NoSchedule"} in \
            shipped["spec"]["tolerations"]
        # Executors may go (decommissioning moves their blocks): no do-not-evict annotation.
        assert "annotations" not in shipped["metadata"] and shipped["spec"]["terminationGracePeriodSeconds"] >= 100


@pytest.mark.slow
@pytest.mark.parametrize("placed_on", ["spot-etl", "ondemand-etl"])
def test_a_runs_executors_go_to_the_pool_it_was_placed_on(placed_on, aws, eks, kube, monkeypatch, tmp_path):
    """A run placed on the on-demand fallback gets its executors there, not on the spot pool:
    Spark's own pods, scheduled by the real scheduler."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.url)
    monkeypatch.setenv("DPE_CLUSTER_NAME", "dpe-prod")
    env = repository_environment("prod")
    create_groups(env, *clients(aws.url))
    kube.apply(deploy_documents("namespace.yaml", "rbac.yaml"))
    for pool_name in env.spark.executor_conf:
        open_pool(env.pool(pool_name), env).set_target(1)
    names = {pool_name: eks.node_name(open_pool(env.pool(pool_name), env).nodes()[0].id)
             for pool_name in env.spark.executor_conf}
    for name in names.values():
        wait_for(f"{name} ready", lambda: node_ready(kube.core(), name))
    # The executor templates where the run pod mounts them, the driver as the run pod's account.
    [config_map] = deploy_documents("spark-executor-template.yaml")
    for file_name, text in config_map["data"].items():
        (tmp_path / file_name).write_text(text)
    spark = spark_on_k8s(list(env.pools.values()), env.pool(env.driver_pool), image="dpe:1", namespace=NAMESPACE,
                         service_account="dpe-run", template_dir=str(tmp_path), master=f"k8s://{kube.url}",
                         fallback_storage="s3a://dpe-prod-spark-decommission/blocks/")
    # In a run pod Spark's client reads the pod's ServiceAccount token and CA; here they are given
    # as files (the JVM of this process may already be running, so no environment reaches it).
    token = tmp_path / "token"
    token.write_text(kube.token_for(NAMESPACE, "dpe-run"))
    credentials = {"spark.kubernetes.authenticate.oauthTokenFile": str(token),
                   "spark.kubernetes.authenticate.caCertFile": str(kube.ca_file)}
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    master = spark.conf.pop("spark.master")
    # Ask for one executor as the session starts (a run's first stage would ask the same way).
    resource = SparkResource(master=master, conf={**spark.conf, **credentials,
                                                  "spark.dynamicAllocation.initialExecutors": "1"},
                             executor_conf=spark.executor_conf, app_name="dpe-test")
    core = kube.core()
    seen = {}

    @asset
    def executors_land(spark: SparkResource):
        session = spark.session()
        assert session is not None

        def scheduled():
            pods = core.list_namespaced_pod(NAMESPACE, label_selector="spark-role=executor").items
            return [p for p in pods if p.spec.node_name] or None

        seen["pods"] = wait_for("an executor pod scheduled", scheduled, timeout_s=90)

    result = materialize([executors_land], resources={"spark": resource}, tags=pool_tags(placed_on, cpus=3))
    assert result.success
    [pod] = seen["pods"][:1]
    assert pod.spec.node_name == names[placed_on]
    assert pod.spec.node_selector == {"dpe.io/pool": placed_on}
    tolerations = [{k: v for k, v in t.to_dict().items() if k in ("key", "operator", "value", "effect") and v}
                   for t in pod.spec.tolerations]
    assert {"key": "dpe.io/pool", "operator": "Equal", "value": placed_on, "effect": "NoSchedule"} in tolerations
    assert pod.metadata.labels["dagster/run-id"] == result.run_id and pod.metadata.labels["dpe.io/pool"] == placed_on
    assert pod.spec.service_account_name == EXECUTOR_SERVICE_ACCOUNT
    # Spark adds the decommissioning hook a drain's eviction runs.
    assert pod.spec.containers[0].lifecycle.pre_stop._exec.command == ["/opt/decom.sh"]
    # The session stopped with the run: the driver deleted its executors.
    wait_for("the executors deleted", lambda: not core.list_namespaced_pod(
        NAMESPACE, label_selector="spark-role=executor").items, timeout_s=30)


def test_a_spot_driver_pool_is_refused_naming_the_field():
    spot = parse_pool("spot-etl", {"provider": "aws_asg", "max_size": 3, "node_cpus": 4, "node_memory_gb": 16,
                                   "price_per_node_hour": 0.07, "lifecycle": "spot", "labels": {"dpe.io/pool": "x"},
                                   "settings": {"group_name": "dpe-spot"}})
    with pytest.raises(ConfigError, match=r"pools\.spot-etl\.lifecycle: the Spark driver's pool must be on-demand"):
        spark_on_k8s([spot], spot, image="dpe:1", namespace="dagster", service_account="dagster")
    unlabeled = parse_pool("bare", {"provider": "aws_asg", "max_size": 3, "node_cpus": 4, "node_memory_gb": 16,
                                    "price_per_node_hour": 0.07, "settings": {"group_name": "dpe-bare"}})
    driver = parse_pool("driver", {"provider": "aws_asg", "max_size": 3, "node_cpus": 4, "node_memory_gb": 16,
                                   "price_per_node_hour": 0.07, "labels": {"dpe.io/pool": "driver"},
                                   "settings": {"group_name": "dpe-driver"}})
    with pytest.raises(ConfigError, match=r"pools\.bare\.labels"):
        spark_on_k8s([unlabeled], driver, image="dpe:1", namespace="dagster", service_account="dagster")
