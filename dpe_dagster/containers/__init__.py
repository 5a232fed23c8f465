"""Any container as an asset on a node pool: what Airflow's KubernetesPodOperator gives its users.

`PoolContainers` is one resource with one method, `run(context, pool=..., image=..., command=...,
cpus=..., memory=...)`, speaking Dagster Pipes, so logs, metadata and asset checks come back from
the container. An asset names a pool, never pod settings. Per environment (`pool_containers`):

- `KubernetesPoolContainers` (where runs go to Kubernetes: Spark's master is `k8s://`): asks for room first, through its run (a tag the
  autoscaler reads as demand; the run pod calls no cloud API), then creates the pod through
  dagster-k8s's `PipesK8sClient` with the pool's nodeSelector, tolerations and do-not-evict
  annotations (`dpe_dagster.kube.pod_spec`) and the requests; it waits for a node at most
  `node_wait_s` (default: the pool's boot timeout) and then fails, saying why the pool did not
  grow, instead of hanging.
- `LocalPoolContainers` (elsewhere): the command runs on this machine as a subprocess through
  `PipesSubprocessClient`; the image is ignored.

Either way the container's time is written into the ledger like a run's (`usage/pods.py`),
attributed to the asset that ran it, and the returned `ContainerRun.materialize_result()` carries
the container's reported metadata plus its cost.
"""

from __future__ import annotations

from dpe_dagster.containers.local import LocalPoolContainers
from dpe_dagster.containers.resource import ContainerRun, PoolContainers, python_with_pipes

from dpe_dagster.config import Environment


def pool_containers(env: Environment) -> PoolContainers:
    """The variant for a configuration: pods where runs go to Kubernetes, subprocesses elsewhere."""
    where = {"config": env.source} if env.source else {"environment": env.name}
    if env.on_kubernetes:
        from dpe_dagster.containers.k8s import KubernetesPoolContainers

        return KubernetesPoolContainers(**where)
    return LocalPoolContainers(**where)


def __getattr__(name: str):
    # The Kubernetes variant imports dagster-k8s and the Kubernetes client (about 1.4 s): only
    # where it is used, not in every process that loads the code location (run workers included).
    if name == "KubernetesPoolContainers":
        from dpe_dagster.containers.k8s import KubernetesPoolContainers

        return KubernetesPoolContainers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ContainerRun", "KubernetesPoolContainers", "LocalPoolContainers", "PoolContainers", "pool_containers",
           "python_with_pipes"]
