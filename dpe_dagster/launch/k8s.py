"""The Kubernetes run launcher: dagster-k8s's `K8sRunLauncher`, plus node pools.

The moment it launches a run tagged with a node pool it (1) places the run: asks that pool for
capacity with the same `plan_pool` the sensor uses, or its fallback pool when the pool's capacity
did not come (see `dpe_dagster.launch.pool_choice`), and (2) adds the pool's nodeSelector,
tolerations, do-not-evict annotations and the run's resource requests to the run's Job. The Job
itself is built by dagster-k8s (`construct_dagster_k8s_job`), with this as one more layer of its
user-defined k8s config, merged over the launcher's and the code location's.

With the environment's `driver_pool` set, the run pod is a Spark driver: it goes to the driver
pool (which is asked for room too) and its executors to the tagged pool, as `run_pods` says and
the autoscaler sizes both.

On a pool with `placement: ending-together` it also (3) chooses the node the run's pod should go
to, as the simulator does (`dpe_dagster.launch.preferred_node`), and adds it to the Job as a
preferred node affinity. Only run pods on their own pool are placed so: executors on the tagged
pool are left to the scheduler. Choosing needs the pool's nodes (its provider), the runs on it (run storage) and the
Kubernetes node names; when any of these cannot be read, the event log says so and the run is
launched without a preferred node.

Runs on a pool must run their steps inside the run pod (`in_process_executor`, the default
`multiprocess_executor`): executors that start one pod per step (dagster-k8s's `k8s_job_executor`,
`celery_k8s_job_executor`) build those pods without the run's container context, so they would
get no pool selector and count as no demand. Such a run is failed at launch, before any node is
asked for, with a message that says so (`step_pod_refusal`).

In `dagster.yaml` (the Helm chart's `runLauncher.customRunLauncher`, see deploy/):

    run_launcher:
      module: dpe_dagster.launch.k8s
      class: PoolK8sRunLauncher
      config: {environment: prod, job_image: ..., instance_config_map: ..., ...}

Run pods run as their own ServiceAccount (`run_service_account`, default `dpe-run`: see
deploy/k8s/rbac.yaml), pinned over the launcher's `service_account_name` and any run's or code
location's `dagster-k8s/config`: the control plane's account (the cloud role, node patch) is never
a run's.

The launcher's own `driver_pool` field is deprecated (the environment's is the one every part
reads); when set it must name the environment's driver pool, or runs fail saying so.
"""

from __future__ import annotations

import time
from typing import Any

from dagster import Field, StringSource
from dagster._core.launcher import LaunchRunContext
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import UserDefinedDagsterK8sConfig
from dagster_k8s.launcher import K8sRunLauncher

from dpe_dagster.config import Environment
from dpe_dagster.environment import CONFIG_FIELDS, load_environment
from dpe_dagster.kube.nodes import KubeNodes, label_selector
from dpe_dagster.launch.capacity import ask_for_capacity
from dpe_dagster.launch.preferred_node import ENDING_TOGETHER, preferred_node
from dpe_dagster.kube.pod_spec import pod_placement, run_k8s_config
from dpe_dagster.pools import PoolError, open_pool
from dpe_dagster.providers import provider
from dpe_dagster.scaling.control import request_capacity
from dpe_dagster.scaling.demand import read_demand, run_pods
from dpe_dagster.scaling.policy import RunDemand
from dpe_dagster.tags import CPU_TAG, MEMORY_TAG, POOL_TAG, TagError, pool_request

RUN_SERVICE_ACCOUNT = "dpe-run"

# Executors (by the name Dagster records in the run's execution plan) that start a pod per step.
STEP_POD_EXECUTORS = {"k8s": "k8s_job_executor", "celery-k8s": "celery_k8s_job_executor"}


def step_pod_refusal(executor_name: str | None) -> str | None:
    """Why a run on a pool cannot use this executor; None when it can."""
    executor = STEP_POD_EXECUTORS.get(executor_name or "")
    if executor is None:
        return None
    return (f"dpe cannot place this run: its job uses {executor}, which starts a pod per step without the run's "
            "node pool (no pool selector, no demand for its nodes); jobs on a node pool must run their steps in "
            "the run pod: use in_process_executor or multiprocess_executor (the default)")


def oversized_pod(run: DagsterRun, env: Environment) -> str | None:
    """Why this run's pod can never be scheduled: it asks for more than one node of its pool has for
    runs (a pod runs on one node; `room_cpus`, `room_memory_gb`). None when it fits, or names no pool."""
    request = pool_request(run.tags, env)
    if request is None:
        return None
    pod = run_pods(request, env).run_pod
    pool = env.pool(pod.pool)
    if pod.cpus <= pool.room_cpus and pod.memory_gb <= pool.room_memory_gb:
        return None
    tags = CPU_TAG if pod.cpus > pool.room_cpus else MEMORY_TAG
    return (f"dpe cannot place this run: its pod asks for {pod.cpus:g} CPUs and {pod.memory_gb:g} GB ({tags}), and a "
            f"node of pool {pool.name} has {pool.room_cpus:g} CPUs and {pool.room_memory_gb:g} GB for runs "
            f"({pool.node_cpus:g} and {pool.node_memory_gb:g} less what the kubelet and DaemonSets keep): a pod runs "
            "on one node, so it would never be scheduled. Ask for less, or use a pool of larger nodes")


def pool_container_context(run: DagsterRun, env: Environment,
                           preferred_node_name: str | None = None) -> K8sContainerContext | None:
    """The k8s config that puts this run's pod where `run_pods` says; None for a run that names no
    pool. `preferred_node_name`: the Kubernetes node the pod should prefer on its own pool (not
    on a driver pool)."""
    request = pool_request(run.tags, env)
    if request is None:
        return None
    pod = run_pods(request, env).run_pod
    placement = pod_placement(env.pool(pod.pool), pod.cpus, pod.memory_gb,
                              preferred_node=None if env.driver_pool else preferred_node_name)
    return K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(run_k8s_config(placement)))


def driver_pool_conflict(launcher_driver_pool: str | None, env: Environment) -> str | None:
    """Why the launcher's deprecated `driver_pool` cannot be used with this environment, or None."""
    if not launcher_driver_pool or launcher_driver_pool == env.driver_pool:
        return None
    return (f"run_launcher.config.driver_pool: {launcher_driver_pool!r} disagrees with environment {env.name!r}'s "
            f"driver_pool ({env.driver_pool!r}); the autoscaler sizes pools by the environment's, so set it there "
            "and remove it from the launcher's config")


def _said(error: Exception) -> str:
    """An error in one line: a Kubernetes API refusal by its status and message (not its headers)."""
    body = getattr(error, "body", None)
    if getattr(error, "status", None) and body:
        try:
            import json

            return f"HTTP {error.status}: {json.loads(body).get('message', body)}"
        except (TypeError, ValueError):
            return f"HTTP {error.status}: {body}"
    return f"{type(error).__name__}: {error}"


class PoolK8sRunLauncher(K8sRunLauncher):
    def __init__(self, config: str | None = None, environment: str | None = None, driver_pool: str | None = None,
                 run_service_account: str = RUN_SERVICE_ACCOUNT, **kwargs: Any):
        self._config = config
        self._environment = environment
        self._driver_pool = driver_pool
        self._run_service_account = run_service_account
        # run id -> the node name chosen at launch, read while dagster-k8s builds that run's Job
        # (and only then: terminating or checking a run must not ask any API for a node).
        self._preferred_node_names: dict[str, str] = {}
        super().__init__(**kwargs)

    @classmethod
    def config_type(cls):
        return {
            **K8sRunLauncher.config_type(),
            **CONFIG_FIELDS,
            "driver_pool": Field(StringSource, is_required=False,
                                 description="deprecated: set driver_pool in the dpe configuration; "
                                 "when set here it must name the environment's driver pool"),
            "run_service_account": Field(StringSource, is_required=False, default_value=RUN_SERVICE_ACCOUNT,
                                         description="the ServiceAccount every run pod runs as, whatever else asks "
                                         "for one (deploy/k8s/rbac.yaml: no node or cloud rights)"),
        }

    def environment(self) -> Environment:
        return load_environment(self._config, name=self._environment)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        env = self.environment()
        conflict = driver_pool_conflict(self._driver_pool, env)
        if conflict:
            self._instance.report_run_failed(run, message=f"dpe cannot place this run: {conflict}")
            return
        refusal = step_pod_refusal(self._executor_name(run)) if POOL_TAG in run.tags else None
        if refusal:
            self._instance.report_run_failed(run, message=refusal)
            return
        try:
            too_big = oversized_pod(run, env)
        except TagError:
            too_big = None  # ask_for_capacity fails the run, naming the tag
        if too_big:
            self._instance.report_run_failed(run, message=too_big)
            return
        if not ask_for_capacity(self._instance, run, env):
            return
        # Placement may have moved the run to a fallback pool: build the Job from its tags now.
        run = self._instance.get_run_by_id(run.run_id) or run
        self._ask_driver_pool(run, env)
        node_name = self._choose_node(run, env)
        if node_name:
            self._preferred_node_names[run.run_id] = node_name
        try:
            super().launch_run(LaunchRunContext(dagster_run=run, workspace=context.workspace))
        finally:
            self._preferred_node_names.pop(run.run_id, None)

    def _ask_driver_pool(self, run: DagsterRun, env: Environment) -> None:
        """Ask the driver pool for the run pod's room now (its tagged pool was asked by placement)."""
        if env.driver_pool is None or pool_request(run.tags, env) is None:
            return
        try:
            request_capacity(self._instance, env, env.driver_pool,
                             lambda message: self._instance.report_engine_event(message, run))
        except PoolError as error:  # the sensor asks again next tick
            self._instance.report_engine_event(
                f"dpe: driver pool {env.driver_pool}: asking for capacity failed ({error}); the autoscaler retries", run)

    def _executor_name(self, run: DagsterRun) -> str | None:
        """The executor the run's job uses, as recorded in its execution plan snapshot."""
        if not run.execution_plan_snapshot_id:
            return None
        return self._instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id).executor_name

    def _choose_node(self, run: DagsterRun, env: Environment) -> str | None:
        """The name of the Kubernetes node this run's pod should prefer, or None (first-fit pool,
        a driver pool in use, no node with room, or something could not be read)."""
        if env.driver_pool:
            return None  # the run pod goes to the driver pool; the tagged pool holds executors
        request = pool_request(run.tags, env)
        pool = None if request is None else env.pool(request.pool)
        if pool is None or pool.placement != ENDING_TOGETHER:
            return None
        try:
            provider_pool = open_pool(pool, env)
            nodes = provider_pool.nodes()
            # With the pool: each active run knows the node it holds and when it should end.
            active = read_demand(self._instance, env, {pool.name: provider_pool}).of(pool.name)
            node_id = provider(pool.provider).node_id
            kube_nodes = KubeNodes(self._api_client.core_api, label_selector(pool.labels), node_id).nodes_by_instance()
        except Exception as error:  # noqa: BLE001 - the scheduler can still place the pod on the pool
            self._instance.report_engine_event(
                f"dpe: pool {pool.name} places runs ending-together, but its nodes, runs or Kubernetes nodes could "
                f"not be read ({_said(error)}); launching without a preferred node", run)
            return None
        this_run = next((d for d in active if d.run_id == run.run_id),
                        RunDemand(run.run_id, request.cpus, request.memory_gb))
        node_id = preferred_node(pool, nodes, active, this_run, time.time())
        if node_id is None:
            self._instance.report_engine_event(
                f"dpe: no running node of pool {pool.name} has room for this run; the scheduler places it "
                "(on a node the pool grows for it, when none frees up first)", run)
            return None
        kube_node = kube_nodes.get(node_id)
        if kube_node is None:
            self._instance.report_engine_event(
                f"dpe: pool {pool.name} would place this run on node {node_id}, which Kubernetes does not list "
                "(yet); launching without a preferred node", run)
            return None
        name = kube_node["metadata"]["name"]
        self._instance.report_engine_event(
            f"dpe: pool {pool.name} places runs ending-together: this run prefers node {name} ({node_id})", run)
        return name

    def get_container_context_for_run(self, dagster_run: DagsterRun) -> K8sContainerContext:
        context = super().get_container_context_for_run(dagster_run)
        try:
            pool_context = pool_container_context(dagster_run, self.environment(),
                                                  self._preferred_node_names.get(dagster_run.run_id))
        except TagError:
            pool_context = None  # such a run is failed by launch_run before any Job exists
        if pool_context is not None:
            context = context.merge(pool_context)
        return context.merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
            {"pod_spec_config": {"service_account_name": self._run_service_account}})))
