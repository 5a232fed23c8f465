"""deploy/: the CloudFormation template passes cfn-lint and makes the spot pool dpe expects; the
Helm values configure dpe's launcher with config Dagster accepts and PostgreSQL storage; the
Kubernetes manifests are taken by the real API server; the Dockerfile copies what exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.cluster import cluster, kube  # noqa: F401  (fixtures)
from tests.paths import PROJECT_ROOT as ROOT
from tests.support.deploy import DEPLOY
from tests.support.deploy import CloudFormationLoader as _CfnLoader
from tests.support.deploy import Stack

TEMPLATES = DEPLOY / "cloudformation"
TEMPLATE = TEMPLATES / "node-pool.yaml"


@pytest.mark.parametrize("template", sorted(TEMPLATES.glob("*.yaml")), ids=lambda p: p.name)
def test_cloudformation_templates_pass_cfn_lint(template):
    result = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(template)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def stack_parameters(pool) -> dict:
    """What deploy/README.md says to pass for one pool of the environment."""
    return {"ClusterName": "dpe-prod", "PoolName": pool.name, "Lifecycle": pool.lifecycle,
            "Tainted": "true" if pool.taints else "false", "InstanceTypes": ",".join(pool.settings["instance_types"]),
            "NodeCpus": str(int(pool.node_cpus)), "NodeMemory": f"{int(pool.node_memory_gb)}Gi",
            "ClusterEndpoint": "https://0123.gr7.us-east-1.eks.amazonaws.com", "ClusterCertificateAuthority": "LS0t",
            "NodeImageId": "ami-0123456789abcdef0", "NodeInstanceProfileArn": "arn:aws:iam::111122223333:instance-profile/n",
            "NodeSecurityGroupIds": ["sg-0123"], "SubnetIds": ["subnet-1", "subnet-2"],
            "InterruptionQueueArn": "arn:aws:sqs:us-east-1:111122223333:dpe-prod-interruptions",
            "LifecycleHookRoleArn": "arn:aws:iam::111122223333:role/dpe-prod-lifecycle-hook"}


@pytest.mark.parametrize("pool_name", ["spot-etl", "ondemand-etl", "ondemand-driver"])
def test_the_node_pool_template_makes_each_pool_of_prod_as_dpe_expects(pool_name, monkeypatch):
    """One template for every pool (spot or on-demand, tainted, its own instance types), as prod
    declares them: the group dpe sizes, the nodes' labels and taints the pool's pods select and
    tolerate, and what the kubelet leaves of such a node for runs."""
    from dpe_dagster.pools.aws.eks import instance_shape, kubelet_labels_and_taints, node_labels, node_resources
    from resources import repository_environment

    monkeypatch.setenv("DPE_CLUSTER_NAME", "dpe-prod")
    pool = repository_environment("prod").pool(pool_name)
    stack = Stack(yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader), stack_parameters(pool))
    group, launch = stack.resource("AutoScalingGroup"), stack.resource("LaunchTemplate")
    assert group["AutoScalingGroupName"] == pool.settings["group_name"]
    assert "DesiredCapacity" not in group, "dpe owns the desired capacity"
    policy = group["MixedInstancesPolicy"]
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == list(pool.settings["instance_types"])
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == (0 if pool.lifecycle == "spot"
                                                                                      else 100)
    assert policy["InstancesDistribution"]["SpotAllocationStrategy"] == "price-capacity-optimized"
    # AWS launches no replacement of its own for a rebalance recommendation (dpe does), and any
    # termination it starts waits in the hook for dpe's drain.
    assert group["CapacityRebalance"] is False
    [hook] = group["LifecycleHookSpecificationList"]
    assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert hook["NotificationTargetARN"].endswith(":dpe-prod-interruptions") and hook["DefaultResult"] == "CONTINUE"
    tags = {t["Key"]: t for t in group["Tags"]}
    assert tags["dpe:managed"]["Value"] == "true" and tags["dpe:managed"]["PropagateAtLaunch"] is False
    data = launch["LaunchTemplateData"]
    # Pods must not reach the node's role through the instance metadata service.
    assert data["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}
    labels, taints = kubelet_labels_and_taints(data["UserData"])
    assert labels == node_labels(pool)
    assert taints == [(t.key, t.value, t.effect) for t in pool.taints]
    for instance_type in pool.settings["instance_types"]:
        shape, resources = instance_shape(instance_type), node_resources(instance_type)
        assert (shape.vcpus, shape.memory_gib) == (pool.node_cpus, pool.node_memory_gb), instance_type
        # What the pool counts as room for runs is there on every type it may get.
        assert resources.room_cpus >= pool.room_cpus and resources.room_memory_mib / 1024 >= pool.room_memory_gb - 1e-9


def test_the_emulator_joins_nodes_as_the_template_does(monkeypatch):
    """aws-sim's and eks-sim's groups carry the same user data as node-pool.yaml makes."""
    from dpe_dagster.pools.aws.eks import kubelet_labels_and_taints, node_labels, node_user_data
    from resources import repository_environment

    for pool in repository_environment("eks-sim").pools.values():
        emulated = node_user_data("dpe-sim", node_labels(pool), [(t.key, t.value, t.effect) for t in pool.taints])
        stack = Stack(yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader),
                      {**stack_parameters(pool), "ClusterName": "dpe-sim"})
        assert kubelet_labels_and_taints(emulated) == kubelet_labels_and_taints(
            stack.resource("LaunchTemplate")["LaunchTemplateData"]["UserData"])


def test_helm_values_use_dpes_launcher_with_config_dagster_accepts_and_postgres(monkeypatch):
    # What the chart sets in its daemon's pod, and nothing else (tests/cluster/chart.py).
    from tests.cluster import chart

    for name in [k for k in __import__("os").environ if k.startswith("DAGSTER_")]:
        monkeypatch.delenv(name)
    for name, value in chart.daemon_environment(chart.values(), pg_password="secret").items():
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
    from resources import repository_environment

    env = repository_environment(custom["config"]["environment"])
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
def test_kubernetes_manifests_are_accepted_by_the_api_server(path, kube):
    """Each manifest as the real API server takes it (schema, defaulting, admission), with the
    namespace in place: a server-side dry run, nothing stored."""
    from kubernetes import utils

    from tests.cluster.sandbox import deploy_documents

    kube.apply(deploy_documents("namespace.yaml"))
    for document in yaml.safe_load_all(path.read_text()):
        if document and document["kind"] != "Namespace":
            utils.create_from_dict(kube.api_client(), document, dry_run="All")


def test_the_image_carries_the_s3_filesystem_of_pysparks_hadoop():
    """Decommissioned blocks go to s3a://: the image adds hadoop-aws at pyspark's own Hadoop."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    [client_api] = sorted(jars.glob("hadoop-client-api-*.jar"))
    hadoop = client_api.name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG HADOOP_VERSION={hadoop}" in dockerfile
    assert "hadoop-aws-$HADOOP_VERSION.jar" in dockerfile and "awssdk/bundle/$AWS_SDK_VERSION" in dockerfile


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
