"""Runs whose executor launches one pod per step (dagster-k8s's `k8s_job_executor`) are refused
at launch: dagster-k8s builds those step pods without the run's container context, so they would
get no pool selector and count as no demand. The run fails with a message naming the executor
and what is supported, and no node is requested for it."""

from __future__ import annotations

import sys

from dagster import DagsterRunStatus, in_process_executor, job, op
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster_k8s import k8s_job_executor

from dpe_dagster.pools import open_pool
from dpe_dagster.tags import POOL_TAG
from tests.support.k8s_runs import IMAGE, instance, kube_api, launch, sim  # noqa: F401 - fixtures


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


def test_a_run_under_the_k8s_job_executor_fails_at_launch_and_asks_for_no_node(sim, instance, kube_api):  # noqa: F811
    env, _ = sim
    spot = open_pool(env.pool("spot-etl"), env)
    run = instance.create_run_for_job(pod_per_step, tags={POOL_TAG: "spot-etl"}, status=DagsterRunStatus.STARTING,
                                      job_code_origin=_origin("pod_per_step"))
    launch(instance, run)

    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    messages = [e.message or "" for e in instance.all_logs(run.run_id)]
    assert any("k8s_job_executor" in m and "in_process_executor" in m and "multiprocess_executor" in m
               for m in messages), messages
    assert kube_api.jobs == []
    assert spot.target() == 0


def test_a_run_under_the_in_process_executor_still_launches(sim, instance, kube_api):  # noqa: F811
    env, _ = sim
    run = instance.create_run_for_job(one_pod, tags={POOL_TAG: "spot-etl"}, status=DagsterRunStatus.STARTING,
                                      job_code_origin=_origin("one_pod"))
    launch(instance, run)
    assert len(kube_api.jobs) == 1
    assert open_pool(env.pool("spot-etl"), env).target() == 1
