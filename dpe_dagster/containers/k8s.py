"""The Kubernetes variant: a pod on the pool's nodes, through dagster-k8s's `PipesK8sClient`."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from dagster import AssetExecutionContext
from dagster_k8s.pipes import PipesK8sClient
from pydantic import Field

from dpe_dagster.config import Environment
from dpe_dagster.containers.capacity import NoCapacity, Placed, ask_pool_for_container, close_ask
from dpe_dagster.containers.request import ContainerRequest
from dpe_dagster.containers.resource import PoolContainers, Ran, fail, new_id
from dpe_dagster.kube.pod_spec import pod_placement
from dpe_dagster.tags import ASSET_ANNOTATION, RUN_ID_ANNOTATION

CONTAINER_NAME = "main"


def pod_for(environment: Environment, request: ContainerRequest, pool: str, asset: str, run_id: str
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's metadata and spec (Kubernetes field names) for `PipesK8sClient`: the pool's
    selector, tolerations and do-not-evict annotations, the container's requests and a memory
    limit equal to its request (so it cannot take a neighbour's memory on a shared node)."""
    placement = pod_placement(environment.pool(pool), request.cpus, request.memory_gb)
    meta = placement.metadata()
    meta["annotations"].update({ASSET_ANNOTATION: asset, RUN_ID_ANNOTATION: run_id})
    spec = {
        **placement.pod_spec(),
        "restartPolicy": "Never",
        "containers": [{
            "name": CONTAINER_NAME,
            "resources": {"requests": dict(placement.requests), "limits": {"memory": placement.requests["memory"]}},
        }],
    }
    return meta, spec


class _PoolPipesK8sClient(PipesK8sClient):
    """`PipesK8sClient`, waiting for the pod to get a node (bounded) before following its logs:
    dagster-k8s alone would wait a day for a pod that no node takes."""

    def __init__(self, wait_for_node: Callable[[Any, str, str], None], **kwargs: Any):
        super().__init__(**kwargs)
        self._wait_for_node = wait_for_node

    @contextmanager
    def consume_pod_logs(self, context, client, namespace, pod_name, **kwargs) -> Iterator:
        self._wait_for_node(client, namespace, pod_name)
        with super().consume_pod_logs(context, client, namespace, pod_name, **kwargs):
            yield


class KubernetesPoolContainers(PoolContainers):
    """Containers as pods on the pool's nodes (staging, prod)."""

    namespace: str | None = Field(default=None, description="the pods' namespace; default: the code server's own")
    load_incluster_config: bool | None = Field(default=None, description="None: in-cluster when in a pod")
    kubeconfig_file: str | None = None
    poll_interval_s: float = Field(default=5.0, description="how often the pod is polled")
    ask_provider: bool = Field(
        default=False, description="ask the pool's provider for room from the run itself (needs cloud credentials "
        "in the run pod); default: record the ask on the run, and the autoscaler sizes the pool")

    def _execute(self, context: AssetExecutionContext, environment: Environment, request: ContainerRequest,
                 env: dict[str, str], extras: dict[str, Any], ran: Ran) -> None:
        demand_id = new_id("container")
        run_id = context.run.run_id
        try:
            placed = ask_pool_for_container(context.instance, environment, request, run_id, demand_id,
                                            context.log.info, ask_provider=self.ask_provider)
        except NoCapacity as error:
            raise fail(f"dpe: container not started: {error}") from None
        try:
            self._run_pod(context, environment, request, env, extras, ran, placed)
        finally:
            close_ask(context.instance, run_id, demand_id)

    def _run_pod(self, context: AssetExecutionContext, environment: Environment, request: ContainerRequest,
                 env: dict[str, str], extras: dict[str, Any], ran: Ran, placed: Placed) -> None:
        ran.pool = placed.pool
        wait_s = self.node_wait_s if self.node_wait_s is not None else environment.pool(placed.pool).boot_timeout_s
        asset = context.asset_key.to_user_string()
        meta, spec = pod_for(environment, request, placed.pool, asset, context.run.run_id)

        def wait_for_node(client: Any, namespace: str, pod_name: str) -> None:
            ran.pod = pod_name
            _wait_for_node(client, namespace, pod_name, placed, wait_s, self.poll_interval_s, ran)

        client = _PoolPipesK8sClient(
            wait_for_node, load_incluster_config=self.load_incluster_config, kubeconfig_file=self.kubeconfig_file,
            poll_interval=self.poll_interval_s)
        ran.invocation = client.run(context=context, extras=extras, image=request.image, command=list(request.command),
                                    namespace=self.namespace, env=env, base_pod_meta=meta, base_pod_spec=spec)
        ran.ended_at = time.time()


def _wait_for_node(client: Any, namespace: str, pod_name: str, placed: Placed, wait_s: float, poll_s: float,
                   ran: Ran) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        pod = client.core_api.read_namespaced_pod(pod_name, namespace)
        phase = pod.status.phase if pod.status else None
        if (pod.spec and pod.spec.node_name) or phase in ("Running", "Succeeded", "Failed"):
            ran.started_at = time.time()
            return
        if time.monotonic() >= deadline:
            why = placed.why_no_node()
            raise fail(f"dpe: pod {pod_name} found no node of pool {placed.pool} within {wait_s:g}s "
                       f"(node_wait_s): the pool cannot take it: {why}. The pod was deleted. Raise the pool's "
                       f"max_size or budget, free room on it, or allow a longer node_wait_s.")
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
