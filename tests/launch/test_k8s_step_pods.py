"""Runs whose executor launches one pod per step (dagster-k8s's `k8s_job_executor`) are refused
at launch: dagster-k8s builds those step pods without the run's container context, so they would
get no pool selector and count as no demand. The run fails with a message naming the executor
and what is supported, no node is requested for it and no Job reaches the cluster.

On the real control plane through eks-sim (tests/support/k8s_runs.py)."""

from __future__ import annotations

import sys

from dagster import DagsterRunStatus, in_process_executor, job, op
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster_k8s import k8s_job_executor

from dpe_dagster.pools import open_pool
from dpe_dagster.tags import POOL_TAG
from tests.support.cluster import wait_for
from tests.support.k8s_runs import IMAGE, cluster, eks_sim, instance, jobs, kube, launch  # noqa: F401 - fixtures


@op
def step():
    return 1


@job(executor_def=k8s_job_executor)
def pod_per_step():
    step()


@job(executor_def=in_process_executor)
def one_pod():
    step()


def _origin(name: str) -> JobPythonOrigin:
    return JobPythonOrigin(name, RepositoryPythonOrigin(
        sys.executable, ModuleCodePointer("assets.definitions", "defs", working_directory="/opt/dpe"),
        container_image=IMAGE))


def test_a_run_under_the_k8s_job_executor_fails_at_launch_and_asks_for_no_node(eks_sim, instance, kube):  # noqa: F811
    env, _ = eks_sim
    spot = open_pool(env.pool("spot-etl"), env)
    run = instance.create_run_for_job(pod_per_step, tags={POOL_TAG: "spot-etl"}, status=DagsterRunStatus.STARTING,
                                      job_code_origin=_origin("pod_per_step"))
    launch(instance, run)

    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    messages = [e.message or "" for e in instance.all_logs(run.run_id)]
    assert any("k8s_job_executor" in m and "in_process_executor" in m and "multiprocess_executor" in m
               for m in messages), messages
    assert jobs(kube) == []
    assert kube.core().list_namespaced_pod("dagster").items == []
    assert spot.target() == 0


def test_a_run_under_the_in_process_executor_still_launches(eks_sim, instance, kube):  # noqa: F811
    env, sandbox = eks_sim
    run = instance.create_run_for_job(one_pod, tags={POOL_TAG: "spot-etl"}, status=DagsterRunStatus.STARTING,
                                      job_code_origin=_origin("one_pod"))
    launch(instance, run)
    [made] = jobs(kube)
    assert made["metadata"]["name"] == f"dagster-run-{run.run_id}"
    spot = open_pool(env.pool("spot-etl"), env)
    assert spot.target() == 1
    # The pool's instance joins, and the scheduler binds the run's pod to it.
    core = kube.core()

    def bound():
        pods = core.list_namespaced_pod("dagster", label_selector=f"dagster/run-id={run.run_id}").items
        return pods[0].spec.node_name if pods and pods[0].spec.node_name else None

    node = wait_for("the run's pod bound to a node", bound, timeout_s=60)
    [instance_id] = [n.id for n in spot.nodes()]
    assert node == sandbox.nodes.node_name(instance_id)
    assert core.read_node(node).metadata.labels["dpe.io/pool"] == "spot-etl"
