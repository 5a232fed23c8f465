"""dpe's control plane as deploy/ and the Dagster Helm chart put it on a cluster, on the real control
plane: the daemon's run launcher with exactly the environment the chart gives it, the interruption
reader's Deployment started for real, and where the control plane's pods are scheduled.

The chart is not rendered by Helm here (no Helm, no chart in this repository): tests/cluster/chart.py
makes what its templates make from deploy/helm/values.yaml. AWS is moto's server; the pods that
must run are run by the stand-in kubelet (tests/cluster/kubelet.py), with the image's environment
as deploy/Dockerfile sets it; where EKS would give a pod its IAM role (IRSA), the stand-in gives it
the emulator's endpoint and dummy credentials."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from dpe_dagster.pools.aws.emulator import create_groups
from tests.cluster import chart
from tests.cluster.eks import EksNodes
from tests.cluster.kubelet import PROCESS_KUBELET, ProcessKubelet
from tests.cluster.sandbox import deploy_documents
from tests.paths import PROJECT_ROOT
from tests.support.aws import aws, clients, interruption_queue, moto, warn  # noqa: F401  (fixtures and helpers)
from tests.support.cluster import cluster, kube, node_ready, pods_on, wait_for  # noqa: F401  (fixtures)
from tests.support.postgres import postgres_or_skip

NAMESPACE = chart.NAMESPACE
SYSTEM = {"dpe.io/role": "system"}


def dockerfile_env() -> dict[str, str]:
    """The image's ENV (deploy/Dockerfile), with this machine's Python for the image's venv."""
    text = (PROJECT_ROOT / "deploy" / "Dockerfile").read_text()
    block = re.search(r"^ENV (.*?)(?:\n\n|\nRUN|\nWORKDIR)", text, re.M | re.S).group(1)
    env = dict(re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " ")))
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    env.pop("JAVA_HOME"), env.pop("SPARK_HOME")
    return env


@pytest.fixture
def prod(kube, aws, monkeypatch, tmp_path):
    """prod's environment against the emulator, the cluster set up as deploy/README.md says (the
    namespace, deploy/k8s RBAC, the chart's objects with its instance on this machine's PostgreSQL,
    the PostgreSQL secret), a system node group, and the stand-in kubelet for its nodes."""
    postgres_or_skip()
    sqs, events, queue = interruption_queue(aws.url)
    for key, value in {"DPE_CLUSTER_NAME": "dpe-prod", "DPE_AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": aws.url,
                       "DPE_INTERRUPTION_QUEUE_URL": queue}.items():
        monkeypatch.setenv(key, value)
    from resources import repository_environment

    env = repository_environment("prod")
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    # The system node group: not a dpe pool, labelled as deploy/README.md asks.
    from dpe_dagster.pools.aws.eks import node_user_data

    ec2.create_launch_template(LaunchTemplateName="dpe-prod-system", LaunchTemplateData={
        "ImageId": "ami-12c6146b", "InstanceType": "m6i.large", "UserData": node_user_data("dpe-prod", SYSTEM, [])})
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="dpe-prod-system", MinSize=1, MaxSize=1, DesiredCapacity=1,
        AvailabilityZones=["us-east-1a"], LaunchTemplate={"LaunchTemplateName": "dpe-prod-system"})
    kube.apply(deploy_documents("namespace.yaml", "rbac.yaml"))
    pg = {"hostname": "127.0.0.1", "port": 5432, "db_name": "test", "username": "postgres", "params": {}}
    kube.apply(chart.objects(chart.values(), NAMESPACE, instance=chart.instance_yaml(chart.values(), pg)))
    kube.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dagster-postgresql-secret",
                                                                   "namespace": NAMESPACE},
                 "stringData": {"postgresql-password": ""}}])  # trust auth on 127.0.0.1
    image_env = {**dockerfile_env(), "AWS_ENDPOINT_URL": aws.url, "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing"}  # IRSA's stand-in
    with ProcessKubelet(kube, tmp_path / "kubelet", image_env, image_workdir=PROJECT_ROOT) as kubelet, \
            EksNodes(kube, aws.url, boot_s=0.2, kubelet=PROCESS_KUBELET) as nodes:
        system = nodes.node_name(_instances(autoscaling, "dpe-prod-system")[0])
        wait_for("the system node ready", lambda: node_ready(kube.core(), system))
        yield env, nodes, kubelet, system, (sqs, events, queue)


def _instances(autoscaling, group: str) -> list[str]:
    [found] = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
    return [i["InstanceId"] for i in found["Instances"]]


def test_the_daemons_launcher_launches_a_run_with_what_the_chart_gives_it(prod, kube, monkeypatch, tmp_path):
    """The run launcher's config from the Helm values resolves with exactly the daemon's
    environment as the chart makes it (no DAGSTER_K8S_INSTANCE_CONFIG_MAP, no
    DAGSTER_K8S_PG_PASSWORD_SECRET since Dagster 1.5.5), and the Job it creates names a Secret and
    an env ConfigMap that exist in the cluster."""
    from dagster import DagsterInstance

    from tests.support.k8s_runs import launch, make_run

    env, *_ = prod
    for key in [k for k in __import__("os").environ if k.startswith("DAGSTER_")]:
        monkeypatch.delenv(key)
    for key, value in chart.daemon_environment(chart.values(), pg_password="").items():
        monkeypatch.setenv(key, value)
    instance_yaml = chart.instance_yaml(chart.values(), {"hostname": "127.0.0.1", "port": 5432, "db_name": "test",
                                                         "username": "postgres", "params": {}})
    launcher = instance_yaml["run_launcher"]["config"]
    # Not in a pod: the one change, where the API server is.
    launcher.update(load_incluster_config=False,
                    kubeconfig_file=str(kube.kubeconfig_for(tmp_path / "dagster.kubeconfig", NAMESPACE, "dagster")))
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        instance.wipe()
        run = make_run(instance, {"dpe/node_pool": "spot-etl"})
        launch(instance, run)
        batch, core = client.BatchV1Api(kube.api_client()), kube.core()
        job = wait_for("the run's Job", lambda: batch.read_namespaced_job(f"dagster-run-{run.run_id}", NAMESPACE))
        spec = job.spec.template.spec
        container = spec.containers[0]
        # The names the launcher resolved are the chart's objects (the run worker gets the instance
        # itself in its arguments; the ConfigMap and the secret must still exist).
        launcher = instance.run_launcher
        assert core.read_namespaced_config_map(launcher.instance_config_map, NAMESPACE).data["dagster.yaml"]
        assert core.read_namespaced_secret(launcher.postgres_password_secret, NAMESPACE)
        [password] = [e for e in container.env if e.name == "DAGSTER_PG_PASSWORD"]
        secret = password.value_from.secret_key_ref
        assert "postgresql-password" in core.read_namespaced_secret(secret.name, NAMESPACE).data
        for source in container.env_from:
            assert core.read_namespaced_config_map(source.config_map_ref.name, NAMESPACE)
        assert {e.name: e.value for e in container.env}["DAGSTER_HOME"] == chart.DAGSTER_HOME
        # The pod is admitted (its ServiceAccount dpe-run exists) and waits for its pool to grow.
        wait_for("the run's pod", lambda: core.list_namespaced_pod(NAMESPACE, label_selector=f"dagster/run-id={run.run_id}").items)
        instance.wipe()


def test_the_interruption_readers_deployment_runs_and_acts_with_its_own_rights(prod, kube):
    """deploy/k8s/interruptions.yaml started for real: its pod runs `dpe interruptions` (the
    instance from the chart's ConfigMap, the password from the secret, the control plane's
    ServiceAccount), stays up, and cordons and drains a node EC2 warns about."""
    env, nodes, kubelet, system, (sqs, events, queue) = prod
    from dpe_dagster.pools import open_pool

    spot = open_pool(env.pool("spot-etl"), env)
    spot.set_target(1)
    [instance_id] = [n.id for n in spot.nodes()]
    warned = nodes.node_name(instance_id)
    [deployment] = deploy_documents("interruptions.yaml")
    for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if var["name"] == "DPE_INTERRUPTION_QUEUE_URL":
            var["value"] = queue  # CHANGE in the manifest: the stack's QueueUrl output
    kube.apply([deployment])
    core = kube.core()

    def reader_pod():
        pods = core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/name=dpe-interruptions").items
        return pods[0] if pods and pods[0].status.phase == "Running" else None

    pod = wait_for("the reader's pod running", reader_pod, timeout_s=60)
    assert pod.spec.node_name == system, "the control plane runs on the system node group"
    time.sleep(8)  # an instance that cannot be opened exits at start (exit 2): it must still run
    assert core.read_namespaced_pod(pod.metadata.name, NAMESPACE).status.phase == "Running", \
        kubelet.logs(NAMESPACE, pod.metadata.name)
    warn(events, instance_id)
    wait_for("the warned node cordoned by the reader", lambda: core.read_node(warned).spec.unschedulable,
             timeout_s=40)
    wait_for("the replacement asked for", lambda: spot.target() == 2, timeout_s=10)
    assert "spot interruption warning" in kubelet.logs(NAMESPACE, pod.metadata.name)


def test_the_control_plane_is_scheduled_on_the_system_nodes_never_on_a_pool(prod, kube):
    """Every pool is tainted and Dagster's own pods select the system node group: a pool node runs
    only what dpe puts there (and DaemonSets), so nothing keeps it paid."""
    env, nodes, kubelet, system, _ = prod
    from dpe_dagster.pools import open_pool

    pool_nodes = []
    for name in ("spot-etl", "ondemand-driver"):
        pool = open_pool(env.pool(name), env)
        pool.set_target(max(1, env.pool(name).min_size))
        pool_nodes += [nodes.node_name(n.id) for n in pool.nodes()]
    for node in pool_nodes:
        wait_for(f"{node} ready", lambda: node_ready(kube.core(), node))
    # The chart's pods, placed as the values say (the kubelet cannot run Dagster's images here:
    # where they land is what is checked).
    for deployment in chart.deployments(chart.values()):
        deployment["spec"]["template"]["spec"]["containers"][0]["command"] = ["sleep", "60"]
        kube.apply([deployment])
    core = kube.core()

    def placed():
        pods = [p for p in core.list_namespaced_pod(NAMESPACE).items if p.metadata.labels.get("app.kubernetes.io/instance")]
        return pods if len(pods) == 3 and all(p.spec.node_name for p in pods) else None

    for pod in wait_for("the chart's pods scheduled", placed, timeout_s=40):
        assert pod.spec.node_name == system, pod.metadata.name
    for node in pool_nodes:
        assert all(p.metadata.namespace == "kube-system" for p in pods_on(core, node)), node
    assert all(not n.busy for n in open_pool(env.pool("spot-etl"), env).nodes())


def test_the_control_planes_account_keeps_pods_and_nodes_by_watch(kube):
    """dpe's processes keep the cluster's pods and nodes by one watch each (kube/watch.py). With
    the rights rbac.yaml gives the chart's `dagster` account, the watch holds: one list, then
    events. (Without `watch`, it would fall back to a full list every time it tried.)"""
    from dpe_dagster.kube.watch import Watch

    kube.apply([*deploy_documents("namespace.yaml", "rbac.yaml"), {  # the chart makes the account
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "dagster", "namespace": "dagster"}}])
    core = kube.core(kube.token_for("dagster", "dagster"))
    pods = Watch(core.list_pod_for_all_namespaces, None, None)
    nodes = Watch(core.list_node, None, None)
    try:
        wait_for("both watches listed", lambda: pods.lists and nodes.lists, timeout_s=10)
        kube.core().create_namespaced_pod("dagster", {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "watched"}, "spec": {"containers": [{"name": "main", "image": "dpe:1"}]}})
        wait_for("the new pod seen through the watch", lambda: any(
            p["metadata"]["name"] == "watched" for p in pods.items(lambda: [])), timeout_s=10)
        time.sleep(2)  # a refused watch would have listed again by now
        assert pods.lists == 1 and nodes.lists == 1
    finally:
        pods.stop()
        nodes.stop()
