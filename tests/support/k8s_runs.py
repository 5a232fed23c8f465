"""The k8s run launcher under test: aws-sim's pools in the emulator, the loopback Kubernetes API,
an instance whose dagster.yaml names the launcher, and making and launching runs."""

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
from tests.fakes.kube_api import LoopbackKubeApi
from tests.support.aws import empty_pools, sim  # noqa: F401  (sim: a fixture)

IMAGE = "registry.example.com/dpe:1.0"


@pytest.fixture
def kube_api():
    api = LoopbackKubeApi()
    yield api
    api.close()


@pytest.fixture
def instance(sim, kube_api, tmp_path, monkeypatch):
    """A Dagster instance whose dagster.yaml names this launcher, as the Helm values in deploy/ do."""
    env, _ = sim
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # before anything reads busy-ness from runs
    empty_pools(env)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({
        "run_launcher": {"module": "dpe_dagster.launch.k8s", "class": "PoolK8sRunLauncher", "config": {
            "environment": "aws-sim",
            "job_image": IMAGE,
            "job_namespace": "dagster",
            "service_account_name": "dagster",
            "instance_config_map": "dagster-instance",
            "postgres_password_secret": "dagster-postgresql-secret",
            "dagster_home": "/opt/dagster/dagster_home",
            "load_incluster_config": False,
            "kubeconfig_file": str(kube_api.kubeconfig(tmp_path / "kubeconfig")),
        }},
        "telemetry": {"enabled": False},
    }))
    with DagsterInstance.from_config(str(tmp_path)) as dagster:
        yield dagster


def make_run(instance: DagsterInstance, tags: dict) -> DagsterRun:
    origin = JobPythonOrigin("tpch", RepositoryPythonOrigin(
        sys.executable, ModuleCodePointer("assets.definitions", "defs", working_directory="/opt/dpe"),
        container_image=IMAGE))
    return instance.add_run(DagsterRun(job_name="tpch", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTING,
                                       job_code_origin=origin, tags=tags))


def launch(instance: DagsterInstance, run: DagsterRun) -> None:
    launcher = instance.run_launcher
    assert isinstance(launcher, PoolK8sRunLauncher)
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
