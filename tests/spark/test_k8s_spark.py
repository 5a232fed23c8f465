"""Spark on Kubernetes for staging/prod: executors on spot, driver on on-demand, graceful
decommissioning and dynamic allocation with shuffle tracking."""

from __future__ import annotations

import kubernetes_validate
import pytest

from dpe_dagster.config import ConfigError, parse_pool
from dpe_dagster.spark.kubernetes import spark_on_k8s
from resources import load_environment
from tests.fakes.kube_api import K8S_VERSION


@pytest.mark.parametrize("name", ["staging", "prod"])
def test_environment_spark_puts_executors_on_spot_and_the_driver_on_demand(name):
    env = load_environment(name)
    conf = env.spark.conf
    assert env.spark.master.startswith("k8s://")
    spot, driver = env.pool("spot-etl"), env.pool("ondemand-driver")
    assert spot.lifecycle == "spot" and driver.lifecycle == "on-demand"
    assert conf["spark.kubernetes.executor.node.selector.dpe.io/pool"] == "spot-etl"
    assert conf["spark.kubernetes.driver.node.selector.dpe.io/pool"] == "ondemand-driver"
    assert conf["spark.decommission.enabled"] == "true"
    assert conf["spark.storage.decommission.shuffleBlocks.enabled"] == "true"
    assert conf["spark.dynamicAllocation.enabled"] == "true"
    assert conf["spark.dynamicAllocation.shuffleTracking.enabled"] == "true"
    assert conf["spark.dynamicAllocation.shuffleTracking.timeout"].endswith("s")
    assert int(conf["spark.dynamicAllocation.maxExecutors"]) == spot.max_size
    # One executor fills one node and still fits on it.
    cores = int(conf["spark.executor.cores"])
    memory_mib = int(conf["spark.executor.memory"].removesuffix("m"))
    assert 1 <= cores <= spot.node_cpus and memory_mib * 1.10 < spot.node_memory_gb * 1024


def test_executor_pod_template_tolerates_the_spot_taint_and_is_evictable():
    env = load_environment("prod")
    spark = spark_on_k8s(env.pool("spot-etl"), env.pool("ondemand-driver"), image="dpe:1", namespace="dagster",
                         service_account="dagster")
    template = spark.executor_pod_template
    kubernetes_validate.validate(template, K8S_VERSION, strict=True)
    assert template["spec"]["nodeSelector"] == {"dpe.io/pool": "spot-etl"}
    assert {"key": "dpe.io/pool", "operator": "Equal", "value": "spot-etl", "effect": "NoSchedule"} in \
        template["spec"]["tolerations"]
    # Executors may go (decommissioning moves their blocks): no do-not-evict annotation.
    assert "annotations" not in template["metadata"]
    assert template["spec"]["terminationGracePeriodSeconds"] >= 100


def test_a_spot_driver_pool_is_refused_naming_the_field():
    spot = parse_pool("spot-etl", {"provider": "aws_asg", "max_size": 3, "node_cpus": 4, "node_memory_gb": 16,
                                   "price_per_node_hour": 0.07, "lifecycle": "spot", "labels": {"dpe.io/pool": "x"},
                                   "settings": {"group_name": "dpe-spot"}})
    with pytest.raises(ConfigError, match=r"pools\.spot-etl\.lifecycle: the Spark driver's pool must be on-demand"):
        spark_on_k8s(spot, spot, image="dpe:1", namespace="dagster", service_account="dagster")
    unlabeled = parse_pool("bare", {"provider": "aws_asg", "max_size": 3, "node_cpus": 4, "node_memory_gb": 16,
                                    "price_per_node_hour": 0.07, "settings": {"group_name": "dpe-bare"}})
    with pytest.raises(ConfigError, match=r"pools\.bare\.labels"):
        spark_on_k8s(unlabeled, unlabeled, image="dpe:1", namespace="dagster", service_account="dagster")
