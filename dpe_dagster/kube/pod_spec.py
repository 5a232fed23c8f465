"""From a node pool to what a pod needs to land on it, and stay there. Pure: no I/O, no client.

Assets name only the pool (tag `dpe/node_pool`); the pool's configuration says which labels its
nodes carry and which taints keep other pods off them. This module turns that into:

- a `nodeSelector` on the pool's labels, so the pod lands only on the pool's nodes;
- `tolerations` for the pool's taints, so it may land there at all;
- annotations that keep the node under a running pod: Cluster Autoscaler's
  `safe-to-evict: "false"` and Karpenter's `do-not-disrupt: "true"` (a run is a batch job that
  cannot move; dpe itself removes the node once the run is done);
- resource requests from the run's `dpe/cpu` / `dpe/memory` (what the policy packed);
- for pools with `placement: ending-together`, a *preferred* node affinity for the node the
  launcher chose (`launch/preferred_node.py`): preferred, not required, so a pod whose node is gone
  or full by the time it is scheduled lands elsewhere on the pool instead of waiting.

The k8s run launcher uses it for run Jobs; the Spark settings and any later Pipes resource reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from dpe_dagster.config import ConfigError, PoolConfig
from dpe_dagster.tags import POOL_LABEL

# The node label the kubelet sets to the node's name: what a pod can prefer a node by.
HOSTNAME_LABEL = "kubernetes.io/hostname"
# The largest weight the API allows: among the pool's nodes, the chosen one wins outright.
PREFERRED_NODE_WEIGHT = 100
NOT_SAFE_TO_EVICT = {
    "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
    "karpenter.sh/do-not-disrupt": "true",
}


@dataclass(frozen=True)
class PodPlacement:
    node_selector: dict[str, str]
    tolerations: list[dict[str, str]]
    annotations: dict[str, str]
    labels: dict[str, str]
    requests: dict[str, str] = field(default_factory=dict)
    preferred_node: str | None = None  # a Kubernetes node name

    def pod_spec(self) -> dict[str, Any]:
        """The Kubernetes (camelCase) pod spec fields."""
        spec: dict[str, Any] = {"nodeSelector": dict(self.node_selector),
                                "tolerations": [dict(t) for t in self.tolerations]}
        if self.preferred_node:
            spec["affinity"] = preferred_node_affinity(self.preferred_node)
        return spec

    def metadata(self) -> dict[str, Any]:
        return {"annotations": dict(self.annotations), "labels": dict(self.labels)}


def preferred_node_affinity(node_name: str) -> dict[str, Any]:
    """A pod affinity that asks the scheduler for this node when it fits, any other node of the
    pool's selector when not (the node left, filled up, or is cordoned)."""
    return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": PREFERRED_NODE_WEIGHT,
        "preference": {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node_name]}]},
    }]}}


def _quantity_cpu(cpus: float) -> str:
    return f"{int(cpus)}" if float(cpus).is_integer() else f"{int(round(cpus * 1000))}m"


def _quantity_memory(gb: float) -> str:
    return f"{int(round(gb * 1024))}Mi"


def pod_placement(pool: PoolConfig, cpus: float | None = None, memory_gb: float | None = None,
                  *, evictable: bool = False, preferred_node: str | None = None) -> PodPlacement:
    """How a pod is put on `pool`; `evictable=True` for pods that tolerate being moved (Spark
    executors under graceful decommissioning), which then carry no do-not-evict annotations.
    `preferred_node`: the name of the Kubernetes node the pod should go to when it fits there."""
    if not pool.labels:
        raise ConfigError(f"pools.{pool.name}.labels: a pool that runs pods needs at least one node label to "
                          f"select its nodes by, e.g. {{{POOL_LABEL!r}: {pool.name!r}}}")
    tolerations = []
    for taint in pool.taints:
        toleration = {"key": taint.key, "operator": "Equal", "value": taint.value, "effect": taint.effect}
        if not taint.value:
            toleration = {"key": taint.key, "operator": "Exists", "effect": taint.effect}
        tolerations.append(toleration)
    requests = {}
    if cpus is not None:
        requests["cpu"] = _quantity_cpu(cpus)
    if memory_gb is not None:
        requests["memory"] = _quantity_memory(memory_gb)
    return PodPlacement(
        node_selector=dict(pool.labels),
        tolerations=tolerations,
        annotations={} if evictable else dict(NOT_SAFE_TO_EVICT),
        labels={POOL_LABEL: pool.name},
        requests=requests,
        preferred_node=preferred_node,
    )


def run_k8s_config(placement: PodPlacement) -> dict[str, Any]:
    """The placement as dagster-k8s's user-defined k8s config (the `dagster-k8s/config` shape),
    to be merged over the launcher's own."""
    config: dict[str, Any] = {
        "pod_spec_config": placement.pod_spec(),
        "pod_template_spec_metadata": placement.metadata(),
        "job_metadata": {"labels": dict(placement.labels)},
    }
    if placement.requests:
        config["container_config"] = {"resources": {"requests": dict(placement.requests)}}
    return config


def merge_pod_template(template: Mapping[str, Any], placement: PodPlacement) -> dict[str, Any]:
    """A pod (template) manifest with the placement merged in: selector keys and annotations of the
    placement win, tolerations are added."""
    pod = {k: v for k, v in template.items()}
    metadata = dict(pod.get("metadata", {}))
    metadata["labels"] = {**metadata.get("labels", {}), **placement.labels}
    if placement.annotations:
        metadata["annotations"] = {**metadata.get("annotations", {}), **placement.annotations}
    spec = dict(pod.get("spec", {}))
    spec["nodeSelector"] = {**spec.get("nodeSelector", {}), **placement.node_selector}
    spec["tolerations"] = [*spec.get("tolerations", []), *(t for t in placement.tolerations
                                                            if t not in spec.get("tolerations", []))]
    pod["metadata"], pod["spec"] = metadata, spec
    return pod
