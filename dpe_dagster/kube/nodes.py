"""Which of a pool's instances are busy, as Kubernetes sees them; cordoning before removal.

- An instance is a node when a Node's `spec.providerID` names it, as the pool's provider reads it
  (`Provider.node_id`; on EKS `aws:///us-east-1a/i-0abc...`).
- A node is ready to take work when its `Ready` condition is True and it is not cordoned.
- A node is busy when any pod that is not a DaemonSet's (nor a static/mirror pod) and has not
  finished runs on it: such a pod is a run, an executor or a user's workload, and removing the node
  would kill it. DaemonSet pods run on every node and go with it.
- An instance with no Node yet (still booting, not joined) is not ready and not busy; so is an
  idle node someone cordoned. Either is removed once not ready for the pool's boot timeout.

Which node a run holds: dagster-k8s labels a run's pod with `dagster/run-id`, and dpe's Spark
session labels the run's executor pods the same way (spark/kubernetes.py), so one label query over the
active pods finds every pod of every run. A run maps to the pool node where its pods request the
most CPU (its executors, on an executor pool; its own pod, on the driver pool).

Reads use field selectors (`spec.nodeName=...`), one list call per node of the pool, so the cost
grows with the pool, not the cluster. No Kubernetes API server can run on the development
machine: the tests serve Kubernetes-format JSON over HTTP on loopback to the real client.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Sequence

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
RUN_ID_LABEL = "dagster/run-id"  # dagster-k8s's label on run pods; dpe puts it on executors too
ACTIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"


def is_ready(node: Any) -> bool:
    if node.spec is not None and node.spec.unschedulable:
        return False
    conditions = (node.status.conditions or []) if node.status is not None else []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def holds_work(pod: Any) -> bool:
    """A pod whose node must not be removed under it."""
    if pod.status is not None and pod.status.phase in ("Succeeded", "Failed"):
        return False
    if MIRROR_ANNOTATION in ((pod.metadata.annotations or {}) if pod.metadata else {}):
        return False
    owners = (pod.metadata.owner_references or []) if pod.metadata else []
    return not any(owner.kind == "DaemonSet" for owner in owners)


def cpu_request(pod: Any) -> float:
    """The CPUs a pod asks for (its containers' requests; a container that asks for none counts
    as a little, so that a run's pod still places it when nothing else does)."""
    total = 0.0
    for container in (pod.spec.containers or []) if pod.spec is not None else []:
        requests = (container.resources.requests or {}) if container.resources is not None else {}
        total += _cpus(requests.get("cpu")) if "cpu" in requests else 0.001
    return total


def _cpus(quantity: Any) -> float:
    text = str(quantity).strip()
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


class KubeNodes:
    """The kubernetes client's view of the nodes behind a pool's instances."""

    def __init__(self, core_api: Any, label_selector: str | None, node_id: Callable[[str | None], str | None]):
        # node_id: a Node's spec.providerID -> the id of the pool's node it is (the provider's parser)
        self.core = core_api
        self.label_selector = label_selector
        self.node_id = node_id

    @classmethod
    def from_environment(cls, labels: Mapping[str, str] | None,
                         node_id: Callable[[str | None], str | None]) -> "KubeNodes":
        """In a pod: the service account (in-cluster config); elsewhere: KUBECONFIG / ~/.kube/config."""
        from kubernetes import client, config

        api_client = client.ApiClient(configuration=client.Configuration())
        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=api_client.configuration)
            else:
                # KUBECONFIG is read now, not when the kubernetes package was imported.
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG"),
                                        client_configuration=api_client.configuration)
        except config.ConfigException as error:
            from dpe_dagster.errors import PoolError

            raise PoolError(f"busy_source kubernetes: no Kubernetes API to ask ({error}); run dpe in the cluster "
                            "(service account) or set KUBECONFIG") from error
        selector = ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or None
        return cls(client.CoreV1Api(api_client), selector, node_id)

    def nodes_by_instance(self) -> dict[str, Any]:
        kwargs = {"label_selector": self.label_selector} if self.label_selector else {}
        found = {}
        for node in self.core.list_node(**kwargs).items:
            iid = self.node_id(node.spec.provider_id if node.spec else None)
            if iid:
                found[iid] = node
        return found

    def pods_on(self, node_name: str) -> list[Any]:
        return self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node_name},{ACTIVE_PODS}").items

    def busy_by_instance(self, instance_ids: Iterable[str]) -> dict[str, tuple[bool, bool]]:
        """instance id -> (ready to take work, busy). Errors propagate: the caller counts a node it
        cannot see as busy, for a bounded grace (its busy status is unknown)."""
        nodes = self.nodes_by_instance()
        out = {}
        for iid in instance_ids:
            node = nodes.get(iid)
            if node is None:
                out[iid] = (False, False)
                continue
            busy = any(holds_work(pod) for pod in self.pods_on(node.metadata.name))
            out[iid] = (is_ready(node), busy)
        return out

    def run_instances(self, instance_ids: Iterable[str]) -> dict[str, str]:
        """Dagster run id -> the instance (among these) whose node the run's active pods request
        the most CPU on (ties: the lowest instance id). Two list calls: the pool's nodes and the
        active pods carrying a run id label."""
        wanted = set(instance_ids)
        instance_of_node = {node.metadata.name: iid for iid, node in self.nodes_by_instance().items() if iid in wanted}
        pods = self.core.list_pod_for_all_namespaces(label_selector=RUN_ID_LABEL, field_selector=ACTIVE_PODS).items
        cpus: dict[str, dict[str, float]] = {}  # run id -> instance id -> CPUs requested there
        for pod in pods:
            run_id = ((pod.metadata.labels or {}) if pod.metadata else {}).get(RUN_ID_LABEL)
            iid = instance_of_node.get(pod.spec.node_name if pod.spec else None)
            if run_id and iid and holds_work(pod):
                held = cpus.setdefault(run_id, {})
                held[iid] = held.get(iid, 0.0) + cpu_request(pod)
        return {run_id: min(held, key=lambda iid: (-held[iid], iid)) for run_id, held in cpus.items()}

    def cordon_instances(self, instance_ids: Sequence[str], cordoned: bool = True) -> list[str]:
        """Mark the nodes of these instances unschedulable (or schedulable again); returns the node
        names changed. An instance with no node has nothing to cordon."""
        nodes = self.nodes_by_instance()
        changed = []
        for iid in instance_ids:
            node = nodes.get(iid)
            if node is None:
                continue
            self.core.patch_node(node.metadata.name, {"spec": {"unschedulable": cordoned}})
            changed.append(node.metadata.name)
        return changed
