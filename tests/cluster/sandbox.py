"""The `eks-sim` environment's sandbox (resources/eks_sim.py): what `dpe demo` starts so that the
staging/prod path runs on this machine, inside the AWS emulator the demo starts first.

1. the real control plane (tests/cluster/control_plane.py), built from Go modules if this machine
   has not built it yet (tests/cluster/build.py, with its progress);
2. the cluster as deploy/ sets it up: the EKS DaemonSets, deploy/k8s/ (namespace, ServiceAccounts,
   RBAC), and what the Dagster Helm chart would make (tests/cluster/chart.py: its ServiceAccount
   `dagster` and Role, its instance ConfigMap, here holding the demo's own dagster.yaml);
3. nodes joining as the emulator launches instances (tests/cluster/eks.py), with the stand-in
   kubelet running their pods as local processes (tests/cluster/kubelet.py);
4. the Dagster instance's run launcher: dpe's k8s run launcher, talking to the API server with the
   token of the control plane's ServiceAccount `dagster` (so the demo has exactly the rights
   deploy/ grants), which the daemon's autoscaler also uses (KUBECONFIG, for the block).

The demo writes its instance with `instance` (dagster.yaml sections) and calls
`instance_written(path)`, which publishes the file as the chart's instance ConfigMap that run pods
mount. Storage paths are absolute, so a run pod (whose DAGSTER_HOME is the mounted ConfigMap's
folder) writes to the same SQLite files as the daemon.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from dpe_dagster.config import Environment
from dpe_dagster.instance import config_of
from dpe_dagster.paths import dagster_home, dpe_home
from tests.cluster import chart
from tests.cluster.build import build
from tests.cluster.control_plane import ControlPlane
from tests.cluster.eks import EksNodes, install_daemonsets
from tests.cluster.kubelet import PROCESS_KUBELET, ProcessKubelet

PROJECT = Path(__file__).resolve().parents[2]  # the image's WORKDIR holds this project (deploy/Dockerfile)
K8S_DEPLOY = PROJECT / "deploy" / "k8s"
IMAGE = "dpe:eks-sim"  # never pulled: the stand-in kubelet runs the command on this machine
CONTROL_PLANE_ACCOUNT = "dagster"
# What of this process's environment a run pod must not inherit: cloud and cluster credentials.
NOT_FOR_PODS = ("AWS_", "KUBECONFIG", "KUBERNETES_", "DAGSTER_HOME")


def deploy_documents(*names: str) -> list[dict]:
    """The manifests of deploy/k8s/ (all, or these files), namespaces first, as they are applied."""
    paths = [K8S_DEPLOY / name for name in names] if names else sorted(K8S_DEPLOY.glob("*.yaml"))
    documents = [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]
    return sorted(documents, key=lambda doc: doc.get("kind") != "Namespace")


def pod_image_environment() -> dict[str, str]:
    """The run pods' "image": this machine's environment without credentials, this Python first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_FOR_PODS)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def instance_sections(env: Environment, home: Path, kubeconfig: Path) -> dict:
    namespace = env.namespace
    return {
        "storage": {"sqlite": {"base_dir": str(home)}},
        "local_artifact_storage": {"module": "dagster._core.storage.root", "class": "LocalArtifactStorage",
                                   "config": {"base_dir": str(home)}},
        "compute_logs": {"module": "dagster._core.storage.local_compute_log_manager",
                         "class": "LocalComputeLogManager", "config": {"base_dir": str(home / "storage")}},
        "run_launcher": {"module": "dpe_dagster.launch.k8s", "class": "PoolK8sRunLauncher", "config": {
            **config_of(env),
            "job_namespace": namespace, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig),
            "job_image": IMAGE, "image_pull_policy": "IfNotPresent", "service_account_name": "dpe-run",
            "dagster_home": str(home), "instance_config_map": f"{chart.RELEASE}-instance",
            "env_vars": [f"DPE_ENV={env.name}", f"DPE_HOME={dpe_home()}"],
        }},
    }


@dataclass
class EksSandbox:
    env: Environment
    cluster: ControlPlane
    nodes: EksNodes
    kubelet: ProcessKubelet | None
    kubeconfig: Path  # the control plane's ServiceAccount's
    instance: dict

    def instance_written(self, path: Path) -> None:
        """Publish the instance's dagster.yaml as the chart's instance ConfigMap (run pods mount it)."""
        name, namespace = f"{chart.RELEASE}-instance", self.env.namespace
        core = self.cluster.core()
        body = {"metadata": {"name": name, "namespace": namespace}, "data": {"dagster.yaml": Path(path).read_text()}}
        try:
            core.replace_namespaced_config_map(name, namespace, body)
        except Exception:  # noqa: BLE001 - not there yet
            core.create_namespaced_config_map(namespace, body)


@contextlib.contextmanager
def eks_sandbox(env: Environment, cluster: ControlPlane | None = None, workdir: Path | None = None,
                boot_s: float = 3.0, run_pods: bool = True) -> Iterator[EksSandbox]:
    """`cluster`: one already running (the tests'); otherwise one is started for the block.
    `run_pods=False`: kwok plays the nodes' kubelets (pods run, but nothing runs in them)."""
    workdir = Path(workdir or dpe_home() / "eks-sim")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        raise RuntimeError("eks-sim needs the AWS emulator running first (AWS_ENDPOINT_URL): `dpe demo` starts it")
    region = env.block("aws").get("region", "us-east-1")
    saved = os.environ.get("KUBECONFIG")
    with contextlib.ExitStack() as stack:
        if cluster is None:
            print("eks-sim: starting the Kubernetes control plane", file=sys.stderr, flush=True)
            cluster = stack.enter_context(ControlPlane(build().folder, workdir / "cluster"))
        install_daemonsets(cluster)
        # The interruption reader (interruptions.yaml) is prod's: eks-sim has no interruption queue.
        cluster.apply(deploy_documents("namespace.yaml", "rbac.yaml", "run-pods-policy.yaml",
                                       "spark-executor-template.yaml"))
        cluster.apply(chart.objects(chart.values(), env.namespace, instance={}))
        kubeconfig = cluster.kubeconfig_for(workdir / "control-plane.kubeconfig", env.namespace,
                                            CONTROL_PLANE_ACCOUNT)
        kubelet = None
        if run_pods:
            kubelet = stack.enter_context(ProcessKubelet(cluster, workdir / "kubelet", pod_image_environment(),
                                                         image_workdir=PROJECT))
        nodes = stack.enter_context(EksNodes(cluster, endpoint, region, boot_s=boot_s,
                                             kubelet=PROCESS_KUBELET if run_pods else None))
        os.environ["KUBECONFIG"] = str(kubeconfig)
        try:
            yield EksSandbox(env, cluster, nodes, kubelet, kubeconfig,
                             instance_sections(env, dagster_home(), kubeconfig))
        finally:
            if saved is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = saved
