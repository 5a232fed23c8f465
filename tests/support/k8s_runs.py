"""The k8s run launcher under test, as eks-sim deploys it on the real control plane: eks-sim's pools
in the AWS emulator, nodes joining as instances launch (the stand-in kubelet runs their pods), the
RBAC of deploy/k8s/ and the Dagster chart's objects, an instance whose dagster.yaml names the
launcher acting as the control plane's ServiceAccount, and making and launching runs."""

from __future__ import annotations

import sys
import uuid

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.launcher import LaunchRunContext
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.storage.dagster_run import DagsterRun

from dpe_dagster.launch.k8s import PoolK8sRunLauncher
from dpe_dagster.pools.aws.emulator import emulated_aws
from resources import repository_environment
from tests.cluster.sandbox import IMAGE, eks_sandbox
from tests.support.aws import empty_pools
from tests.support.cluster import cluster, kept, kube  # noqa: F401  (fixtures)

__all__ = ["IMAGE", "eks_sim", "instance", "make_run", "launch", "jobs", "cluster", "kube"]


@pytest.fixture(scope="module")
def eks_sim(cluster, tmp_path_factory):
    """eks-sim's environment, its groups in an emulator of their own, on the session's cluster,
    kwok playing the kubelets (a run's pod runs, nothing runs in it): (env, the sandbox)."""
    env = repository_environment("eks-sim")
    with emulated_aws(env), eks_sandbox(env, cluster=cluster, workdir=tmp_path_factory.mktemp("eks-sim"),
                                        boot_s=0.5, run_pods=False) as sandbox, kept(cluster):
        yield env, sandbox


@pytest.fixture
def instance(eks_sim, kube, tmp_path, monkeypatch):
    """A Dagster instance whose dagster.yaml names the k8s run launcher as eks-sim writes it; every
    pool empty."""
    env, sandbox = eks_sim
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(sandbox.kubeconfig))  # the control plane's account, as deployed
    empty_pools(env)
    launcher = sandbox.instance["run_launcher"]
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({
        "run_launcher": {**launcher, "config": {**launcher["config"], "dagster_home": str(tmp_path)}},
        "telemetry": {"enabled": False},
    }))
    with DagsterInstance.from_config(str(tmp_path)) as dagster:
        yield dagster


def make_run(instance: DagsterInstance, tags: dict, job_name: str = "tpch") -> DagsterRun:
    origin = JobPythonOrigin(job_name, RepositoryPythonOrigin(
        sys.executable, ModuleCodePointer("assets.definitions", "defs", working_directory="/opt/dpe"),
        container_image=IMAGE))
    return instance.add_run(DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTING,
                                       job_code_origin=origin, tags=tags))


def launch(instance: DagsterInstance, run: DagsterRun) -> None:
    launcher = instance.run_launcher
    assert isinstance(launcher, PoolK8sRunLauncher)
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))


def jobs(cluster, namespace: str = "dagster") -> list[dict]:
    """The Jobs in the namespace, as the API server stored them (camelCase JSON)."""
    from kubernetes import client

    api = client.BatchV1Api(cluster.api_client())
    return [api.api_client.sanitize_for_serialization(job) for job in api.list_namespaced_job(namespace).items]
