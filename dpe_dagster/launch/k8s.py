"""The Kubernetes run launcher: dagster-k8s's `K8sRunLauncher`, plus node pools.

The moment it launches a run tagged with a node pool it (1) places the run: asks that pool for
capacity with the same `plan_pool` the sensor uses, or its fallback pool when the pool's capacity
did not come (see `dpe_dagster.launch.placement`), and (2) adds the pool's nodeSelector,
tolerations, do-not-evict annotations and the run's resource requests to the run's Job. The Job
itself is built by dagster-k8s (`construct_dagster_k8s_job`), with this as one more layer of its
user-defined k8s config, merged over the launcher's and the code location's.

In `dagster.yaml` (the Helm chart's `runLauncher.customRunLauncher`, see deploy/):

    run_launcher:
      module: dpe_dagster.launch.k8s
      class: PoolK8sRunLauncher
      config: {environment: prod, job_image: ..., instance_config_map: ..., ...}
"""

from __future__ import annotations

from typing import Any

from dagster import Field, StringSource
from dagster._core.launcher import LaunchRunContext
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import UserDefinedDagsterK8sConfig
from dagster_k8s.launcher import K8sRunLauncher

from dpe_dagster.config import Environment
from dpe_dagster.launch.capacity import ask_for_capacity
from dpe_dagster.launch.pod_spec import pod_placement, run_k8s_config
from dpe_dagster.scaling.tags import TagError, pool_request


def pool_container_context(run: DagsterRun, env: Environment, driver_pool: str | None = None
                           ) -> K8sContainerContext | None:
    """The k8s config that puts this run's pod on its pool; None for a run that names no pool.

    With `driver_pool`, the run's pod is a Spark driver (client mode) whose executors use the
    run's pool: the pod goes to the driver pool, with that pool's default requests."""
    request = pool_request(run.tags, env)
    if request is None:
        return None
    if driver_pool:
        driver = env.pool(driver_pool)
        placement = pod_placement(driver, driver.default_run_cpus, driver.default_run_memory_gb)
    else:
        placement = pod_placement(env.pool(request.pool), request.cpus, request.memory_gb)
    return K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(run_k8s_config(placement)))


class PoolK8sRunLauncher(K8sRunLauncher):
    def __init__(self, environment: str | None = None, driver_pool: str | None = None, **kwargs: Any):
        self._environment = environment
        self._driver_pool = driver_pool
        super().__init__(**kwargs)

    @classmethod
    def config_type(cls):
        return {
            **K8sRunLauncher.config_type(),
            "environment": Field(StringSource, is_required=False,
                                 description="dpe environment name (resources/); DPE_ENV when unset"),
            "driver_pool": Field(StringSource, is_required=False,
                                 description="pool for the run pods themselves (Spark drivers in client mode); "
                                 "the run's tagged pool then holds its executors. Unset: run pods go to the "
                                 "tagged pool"),
        }

    def environment(self) -> Environment:
        from resources import load_environment

        return load_environment(self._environment)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        env = self.environment()
        if not ask_for_capacity(self._instance, run, env):
            return
        # Placement may have moved the run to a fallback pool: build the Job from its tags now.
        run = self._instance.get_run_by_id(run.run_id) or run
        super().launch_run(LaunchRunContext(dagster_run=run, workspace=context.workspace))

    def get_container_context_for_run(self, dagster_run: DagsterRun) -> K8sContainerContext:
        context = super().get_container_context_for_run(dagster_run)
        try:
            pool_context = pool_container_context(dagster_run, self.environment(), self._driver_pool)
        except TagError:
            return context  # such a run is failed by launch_run before any Job exists
        return context.merge(pool_context) if pool_context is not None else context
