"""deploy/: the CloudFormation template passes cfn-lint and makes the spot pool dpe expects; the
Helm values configure dpe's launcher with config Dagster accepts and PostgreSQL storage; the
Kubernetes manifests pass kubernetes-validate; the Dockerfile copies what exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.fakes.kube_api import K8S_VERSION
from tests.paths import PROJECT_ROOT as ROOT
from tests.support.deploy import DEPLOY
from tests.support.deploy import CloudFormationLoader as _CfnLoader

TEMPLATE = DEPLOY / "cloudformation" / "spot-node-pool.yaml"


def test_cloudformation_template_passes_cfn_lint():
    result = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_spot_group_is_mixed_price_capacity_optimized_rebalancing_and_scales_from_zero():
    template = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    group = template["Resources"]["AutoScalingGroup"]["Properties"]
    assert "DesiredCapacity" not in group, "dpe owns the desired capacity"
    assert group["CapacityRebalance"] is True
    policy = group["MixedInstancesPolicy"]
    assert policy["InstancesDistribution"]["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 0
    assert len(policy["LaunchTemplate"]["Overrides"]) >= 4
    assert len(template["Parameters"]["InstanceTypes"]["Default"].split(",")) >= 4
    tags = {t["Key"] if isinstance(t["Key"], str) else str(t["Key"]): t for t in group["Tags"]}
    for key in ("k8s.io/cluster-autoscaler/node-template/label/dpe.io/pool",
                "k8s.io/cluster-autoscaler/node-template/taint/dpe.io/pool", "dpe:managed"):
        assert key in tags and tags[key]["PropagateAtLaunch"] is False
    user_data = str(template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"])
    assert "--node-labels=dpe.io/pool=${PoolName}" in user_data
    assert "--register-with-taints=dpe.io/pool=${PoolName}:NoSchedule" in user_data
    # The group name is what staging/prod derive: <cluster>-<pool>.
    assert group["AutoScalingGroupName"] == {"Sub": "${ClusterName}-${PoolName}"}


def test_cloudformation_pool_matches_the_prod_environment(monkeypatch):
    from resources import load_environment

    monkeypatch.setenv("DPE_CLUSTER_NAME", "dpe-prod")
    spot = load_environment("prod").pool("spot-etl")
    template = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    assert template["Parameters"]["PoolName"]["Default"] == spot.name
    assert spot.settings["group_name"] == "dpe-prod-spot-etl"
    assert spot.labels == {"dpe.io/pool": "spot-etl"}
    assert [(t.key, t.value, t.effect) for t in spot.taints] == [("dpe.io/pool", "spot-etl", "NoSchedule")]
    assert template["Parameters"]["InstanceTypes"]["Default"].split(",") == list(spot.settings["instance_types"])


def test_helm_values_use_dpes_launcher_with_config_dagster_accepts_and_postgres(monkeypatch):
    # What the chart sets in its daemon and webserver pods.
    for name, value in {"DAGSTER_HOME": "/opt/dagster/dagster_home", "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
                        "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
                        "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP": "dagster-pipeline-env"}.items():
        monkeypatch.setenv(name, value)
    from dagster._config import process_config, resolve_to_config_type

    from dpe_dagster.launch.k8s import PoolK8sRunLauncher

    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    launcher = values["runLauncher"]
    assert launcher["type"] == "CustomRunLauncher"
    custom = launcher["config"]["customRunLauncher"]
    assert (custom["module"], custom["class"]) == ("dpe_dagster.launch.k8s", "PoolK8sRunLauncher")
    result = process_config(resolve_to_config_type(PoolK8sRunLauncher.config_type()), custom["config"])
    assert result.success, result.errors
    from resources import load_environment

    env = load_environment(custom["config"]["environment"])
    assert "driver_pool" not in custom["config"], "the environment's driver_pool is the one every part reads"
    assert env.driver_pool and env.pool(env.driver_pool).lifecycle == "on-demand"
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["dagsterDaemon"]["image"]["repository"] == values["dagster-user-deployments"]["deployments"][0][
        "image"]["repository"], "the daemon launches runs: it needs dpe's image"
    assert "secret" not in yaml.safe_dump(values["postgresql"]).lower().replace("postgresqlsecretname", "")
    # Spot loss fails over only if the chart's instance retries runs and notices dead run workers
    # as dpe's own instance does, with a start timeout that leaves room for a boot and the fallback.
    from dpe_dagster.instance import instance_config, start_timeout_s

    ours, daemon = instance_config(env), values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    assert coordinator["type"] == "CustomRunCoordinator"
    custom_coordinator = coordinator["config"]["customRunCoordinator"]
    assert {k: custom_coordinator[k] for k in ("module", "class")} == {
        k: ours["run_coordinator"][k] for k in ("module", "class")}
    from dpe_dagster.launch.coordinator import PoolRunCoordinator

    checked = process_config(resolve_to_config_type(PoolRunCoordinator.config_type()), custom_coordinator["config"])
    assert checked.success, checked.errors
    assert custom_coordinator["config"]["tag_concurrency_limits"] == ours["run_coordinator"]["config"][
        "tag_concurrency_limits"], "the budget hold must be in production's queue too"
    assert daemon["runRetries"] == {"enabled": True, "maxRetries": ours["run_retries"]["max_retries"],
                                    "retryOnAssetOrOpFailure": ours["run_retries"]["retry_on_asset_or_op_failure"]}
    assert daemon["runMonitoring"]["enabled"] is True
    assert daemon["runMonitoring"]["startTimeoutSeconds"] == start_timeout_s(env) == 720


@pytest.mark.parametrize("path", sorted((DEPLOY / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_validate(path):
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_executor_pod_template_configmap_is_current_and_valid(monkeypatch):
    from dpe_dagster.spark.kubernetes import spark_on_k8s
    from resources import load_environment

    config_map = yaml.safe_load((DEPLOY / "k8s" / "spark-executor-template.yaml").read_text())
    env = load_environment("prod")
    expected = spark_on_k8s(env.pool("spot-etl"), env.pool("ondemand-driver"), image="any", namespace="dagster",
                            service_account="dagster").executor_pod_template
    shipped = yaml.safe_load(config_map["data"]["executor-pod-template.yaml"])
    assert shipped == expected, "regenerate deploy/k8s/spark-executor-template.yaml (see deploy/README.md)"
    kubernetes_validate.validate(shipped, K8S_VERSION, strict=True)
    mount = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())["runLauncher"]["config"][
        "customRunLauncher"]["config"]["volume_mounts"][0]["mountPath"]
    assert env.spark.conf["spark.kubernetes.executor.podTemplateFile"].startswith(mount + "/")


def test_dockerfile_copies_files_that_exist_and_matches_the_projects_python():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    minor = re.search(r'requires-python = ">=3\.(\d+)', pyproject).group(1)
    assert re.search(rf"^FROM python:3\.{minor}-", dockerfile, re.M)
    assert "openjdk-17" in dockerfile and "uv sync --frozen" in dockerfile
    entrypoint = (DEPLOY / "docker" / "entrypoint.sh").read_text()
    assert "KubernetesExecutorBackend" in entrypoint
    assert subprocess.run(["bash", "-n", str(DEPLOY / "docker" / "entrypoint.sh")]).returncode == 0
