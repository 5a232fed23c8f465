"""Which of a pool's instances are busy, as Kubernetes sees them; cordoning and draining before removal.

- An instance is a node when a Node's `spec.providerID` names it, as the pool's provider reads it
  (`Provider.node_id`, from the Node's `spec.providerID` or its annotations).
- A node is ready to take work when its `Ready` condition is True and it is not cordoned.
- What on a node is work (`holds_work`): any pod that has not finished, except a DaemonSet's, a
  static (mirror) pod, and a *movable* pod: one that a ReplicaSet, StatefulSet or
  ReplicationController keeps alive elsewhere when it is evicted, that dpe did not place (no
  `dpe.io/pool` or `dagster/run-id` label) and that does not say it must not be evicted. A
  webserver or an add-on that landed on a pool node does not keep the node paid forever: it is
  evicted when the node goes (`drain`), as Cluster Autoscaler moves such pods. Runs, executors,
  containers, Jobs and bare pods are work.
- An instance with no Node yet (still booting, not joined) is not ready and not busy; so is an
  idle node someone cordoned. Either is removed once not ready for the pool's boot timeout.

Which node a run holds: dagster-k8s labels a run's pod with `dagster/run-id`, and dpe's Spark
session labels the run's executor pods the same way (spark/kubernetes.py), so one label query over the
active pods finds every pod of every run. A run maps to the pool node where its pods request the
most CPU (its executors, on an executor pool; its own pod, on the driver pool).

Cost of a look: nothing from the API, after the first: the cluster's nodes and active pods come
from the process's watches of them (kube/watch.py: one list, then a watch, as an informer keeps
them), the pods grouped by node once for every pool a tick looks at (`begin_look`, from the tick's look-ahead; a
grouping is never used past `SNAPSHOT_MAX_AGE_S`, and outside a look nothing is kept); responses are read as JSON, not as client models (bench/RESULTS.md, "Kubernetes at scale (issue 21)").
What decides a removal is read fresh, node by node, at the last moment (`busy_by_instance(...,
fresh=True)`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from dpe_dagster.errors import PoolError
from dpe_dagster.kube.watch import watch
from dpe_dagster.tags import POOL_LABEL, RUN_ID_LABEL

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
ACTIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"
# Controllers that recreate an evicted pod elsewhere: their pods move, they do not hold a node.
REPLICATED = ("ReplicaSet", "StatefulSet", "ReplicationController")
# A pod that says so is never moved (the annotations dpe itself puts on runs, kube/pod_spec.py).
DO_NOT_EVICT = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false", "karpenter.sh/do-not-disrupt": "true"}
# A look's lists serve its pools until the next look begins, never longer than this (a process
# that stops looking must not keep an old list).
SNAPSHOT_MAX_AGE_S = 30.0
# The DaemonSet controller labels its pods so: they never hold work nor wait for room, and a list
# that leaves them out is a third shorter with two DaemonSet pods a node. A DaemonSet pod that
# comes through anyway is still told apart by its owner (`is_daemon`).
NOT_DAEMONSET_PODS = "!pod-template-generation"


# -- what a node and a pod are (Kubernetes JSON, as the API serves it) --------------------------
def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def is_ready(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def _finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _owner_kinds(pod: Mapping[str, Any]) -> list[str]:
    return [o.get("kind", "") for o in _meta(pod).get("ownerReferences") or [] if o.get("controller", True)]


def is_daemon(pod: Mapping[str, Any]) -> bool:
    """A pod that runs on every node and goes with it: a DaemonSet's, or a static (mirror) pod."""
    return MIRROR_ANNOTATION in (_meta(pod).get("annotations") or {}) or "DaemonSet" in _owner_kinds(pod)


def placed_by_dpe(pod: Mapping[str, Any]) -> bool:
    labels = _meta(pod).get("labels") or {}
    return POOL_LABEL in labels or RUN_ID_LABEL in labels


def movable(pod: Mapping[str, Any]) -> bool:
    """A pod that is evicted, not waited for, when its node goes (see the module docstring)."""
    if _finished(pod) or is_daemon(pod) or placed_by_dpe(pod):
        return False
    annotations = _meta(pod).get("annotations") or {}
    if any(annotations.get(key) == value for key, value in DO_NOT_EVICT.items()):
        return False
    return any(kind in REPLICATED for kind in _owner_kinds(pod))


def holds_work(pod: Mapping[str, Any]) -> bool:
    """A pod whose node must not be removed under it."""
    return not (_finished(pod) or is_daemon(pod) or movable(pod))


def _cpus(quantity: Any) -> float:
    text = str(quantity).strip()
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def cpu_request(pod: Mapping[str, Any]) -> float:
    """The CPUs a pod asks for (its containers' requests; a container that asks for none counts
    as a little, so that a run's pod still places it when nothing else does)."""
    total = 0.0
    for container in (pod.get("spec") or {}).get("containers") or []:
        requests = (container.get("resources") or {}).get("requests") or {}
        total += _cpus(requests["cpu"]) if "cpu" in requests else 0.001
    return total


_MEMORY_UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30,
                 "Ti": 2 ** 40}


def memory_request_gb(pod: Mapping[str, Any]) -> float:
    """The memory (GB, 2^30 bytes) a pod's containers request."""
    total = 0.0
    for container in (pod.get("spec") or {}).get("containers") or []:
        quantity = str(((container.get("resources") or {}).get("requests") or {}).get("memory", "0")).strip()
        number = quantity.rstrip("kMGTi")
        total += float(number or 0) * _MEMORY_UNITS.get(quantity[len(number):], 1) / 2 ** 30
    return total


def _unschedulable(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Pending" and any(
        c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
        for c in status.get("conditions") or [])


def _selects(pod: Mapping[str, Any], node_labels: Mapping[str, str]) -> bool:
    """The pod may go to a node with these labels: its nodeSelector matches, and it has no required
    node affinity (not evaluated here: such a pod is left to whoever set it)."""
    spec = pod.get("spec") or {}
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution")
    selector = spec.get("nodeSelector") or {}
    return not required and bool(selector) and all(node_labels.get(k) == v for k, v in selector.items())


def _tolerates(pod: Mapping[str, Any], taints: Sequence[tuple[str, str, str]]) -> bool:
    tolerations = (pod.get("spec") or {}).get("tolerations") or []

    def tolerated(key: str, value: str, effect: str) -> bool:
        return any((t.get("operator") == "Exists" and (not t.get("key") or t.get("key") == key)
                    or t.get("key") == key and t.get("value", "") == value)
                   and (not t.get("effect") or t.get("effect") == effect) for t in tolerations)

    return all(effect == "PreferNoSchedule" or tolerated(key, value, effect) for key, value, effect in taints)


def node_name_of(pod: Mapping[str, Any]) -> str | None:
    return (pod.get("spec") or {}).get("nodeName")


# -- one list of the cluster's active pods, shared within a tick --------------------------------
class _Snapshots:
    """Lists from the API (the cluster's active pods by node; a pool's nodes) that the pools of one
    look share: from `begin_look()` (a tick's look-ahead, a launcher's scale-up) for at most
    SNAPSHOT_MAX_AGE_S. Outside a look every read goes to the API."""

    def __init__(self):
        self._lock = threading.Lock()
        self._lists: dict[tuple[str, str], Any] = {}
        self._since: float | None = None

    def begin(self) -> None:
        with self._lock:
            self._lists.clear()
            self._since = time.monotonic()

    def get(self, key: tuple[str, str], read: Callable[[], Any]) -> Any:
        with self._lock:
            looking = self._since is not None and time.monotonic() - self._since <= SNAPSHOT_MAX_AGE_S
            if looking and key in self._lists:
                return self._lists[key]
        value = read()
        if looking:
            with self._lock:
                self._lists[key] = value
        return value

    def forget(self, host: str) -> None:
        with self._lock:
            for key in [key for key in self._lists if key[0] == host]:
                del self._lists[key]


def _by_node(pods: list[dict]) -> dict[str, list[dict]]:
    by_node: dict[str, list[dict]] = {}
    for pod in pods:
        # Pods no node took yet are kept under "" (`KubeNodes.stranded` reads them).
        by_node.setdefault(node_name_of(pod) or "", []).append(pod)
    return by_node


_SNAPSHOTS = _Snapshots()


def begin_look() -> None:
    """A look at many pools starts (a tick's `Provider.look_ahead`, a launcher's scale-up): the
    cluster's pods and each pool's nodes are listed once, afresh, for all of them."""
    _SNAPSHOTS.begin()


class KubeNodes:
    """The Kubernetes API's view of the nodes behind a pool's instances."""

    def __init__(self, core_api: Any, label_selector: str | None, node_id: Callable[[Mapping], str | None]):
        # node_id: a Node (the API's object, a mapping) -> the id of the pool's node it is (`Provider.node_id`)
        self.core = core_api
        self.label_selector = label_selector
        self.node_id = node_id

    @classmethod
    def from_environment(cls, labels: Mapping[str, str] | None,
                         node_id: Callable[[Mapping], str | None]) -> "KubeNodes":
        """In a pod: the service account (in-cluster config); elsewhere: KUBECONFIG / ~/.kube/config."""
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=configuration)
            else:
                # KUBECONFIG is read now, not when the kubernetes package was imported.
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
        except config.ConfigException as error:
            raise PoolError(f"busy_source kubernetes: no Kubernetes API to ask ({error}); run dpe in the cluster "
                            "(service account) or set KUBECONFIG") from error
        # The client's connections take the TLS settings when it is made: after the configuration is read.
        return cls(client.CoreV1Api(client.ApiClient(configuration)), label_selector(labels), node_id)

    # -- reading ---------------------------------------------------------------------------------
    @property
    def _host(self) -> str:
        return str(self.core.api_client.configuration.host)

    def _items(self, method: Callable[..., Any], *args: Any, **params: Any) -> list[dict]:
        """A list call's items as JSON (the client's models cost ~10x more to build)."""
        response = method(*args, _preload_content=False, **params)
        return json.loads(response.data).get("items") or []

    def nodes_by_instance(self, fresh: bool = True) -> dict[str, dict]:
        """The pool's nodes by instance id: read now, or (`fresh=False`) from the process's watch of
        the cluster's nodes."""
        params = {"label_selector": self.label_selector} if self.label_selector else {}
        if fresh:
            nodes = self._items(self.core.list_node, **params)
        else:
            nodes_watch = watch(self._host, self.core.list_node)
            everyone = nodes_watch.items(lambda: self._items(self.core.list_node))
            wanted = dict(item.split("=", 1) for item in (self.label_selector or "").split(",") if "=" in item)
            nodes = [node for node in everyone if all(
                (_meta(node).get("labels") or {}).get(key) == value for key, value in wanted.items())]
        found = {}
        for node in nodes:
            iid = self.node_id(node)
            if iid:
                found[iid] = node
        return found

    def _all_active_pods(self) -> list[dict]:
        return self._items(self.core.list_pod_for_all_namespaces, field_selector=ACTIVE_PODS,
                           label_selector=NOT_DAEMONSET_PODS)

    def pods_by_node(self, fresh: bool = False, node_names: Sequence[str] = ()) -> dict[str, list[dict]]:
        """Active pods by node name: from the tick's shared list, or (`fresh`) asked now for these
        nodes only (one call per node: for the few a removal is about to take)."""
        if not fresh:
            pods = watch(self._host, self.core.list_pod_for_all_namespaces, ACTIVE_PODS, NOT_DAEMONSET_PODS)
            return _SNAPSHOTS.get((self._host, "pods"), lambda: _by_node(pods.items(self._all_active_pods)))
        return {name: self._items(self.core.list_pod_for_all_namespaces,
                                  field_selector=f"spec.nodeName={name},{ACTIVE_PODS}") for name in node_names}

    def busy_by_instance(self, instance_ids: Iterable[str], fresh: bool = False) -> dict[str, tuple[bool, bool]]:
        """instance id -> (ready to take work, busy). `fresh`: read now, node by node (before a
        removal); otherwise from the pod list the pools share within a tick. Errors propagate: the
        caller counts a node it cannot see as busy, for a bounded grace (its busy status is unknown)."""
        instance_ids = list(instance_ids)
        nodes = self.nodes_by_instance(fresh)
        names = [_meta(nodes[iid])["name"] for iid in instance_ids if iid in nodes]
        pods = self.pods_by_node(fresh, names) if names else {}
        out = {}
        for iid in instance_ids:
            node = nodes.get(iid)
            if node is None:
                out[iid] = (False, False)
                continue
            busy = any(holds_work(pod) for pod in pods.get(_meta(node)["name"], []))
            out[iid] = (is_ready(node), busy)
        return out

    def run_instances(self, instance_ids: Iterable[str]) -> dict[str, str]:
        """Dagster run id -> the instance (among these) whose node the run's active pods request
        the most CPU on (ties: the lowest instance id)."""
        wanted = set(instance_ids)
        instance_of_node = {_meta(node)["name"]: iid for iid, node in self.nodes_by_instance(fresh=False).items()
                            if iid in wanted}
        cpus: dict[str, dict[str, float]] = {}  # run id -> instance id -> CPUs requested there
        by_node = self.pods_by_node()
        for name, iid in instance_of_node.items():
            for pod in by_node.get(name, []):
                run_id = (_meta(pod).get("labels") or {}).get(RUN_ID_LABEL)
                if run_id and holds_work(pod):
                    held = cpus.setdefault(run_id, {})
                    held[iid] = held.get(iid, 0.0) + cpu_request(pod)
        return {run_id: min(held, key=lambda iid: (-held[iid], iid)) for run_id, held in cpus.items()}

    def pods_left(self, instance_ids: Sequence[str]) -> int:
        """How many pods that do not go with their node (not DaemonSets', not static) are still on
        these instances' nodes, read now: 0 once they are drained (or the nodes gone)."""
        nodes = self.nodes_by_instance()
        names = [_meta(nodes[iid])["name"] for iid in instance_ids if iid in nodes]
        return sum(not_a_daemon(pod) for pods in self.pods_by_node(fresh=True, node_names=names).values()
                   for pod in pods) if names else 0

    def stranded(self, node_labels: Mapping[str, str], taints: Sequence[tuple[str, str, str]], room_cpus: float,
                 room_memory_gb: float) -> list[tuple[str, float, float]]:
        """The pods the scheduler found no room for (PodScheduled False, Unschedulable) that select
        this pool's nodes, tolerate their taints and fit an empty node of the pool: (namespace/name,
        CPUs, GB) each. Where dpe's model of a node says there is room and the scheduler says there
        is none, these ask for a node of their own (scaling/policy.py, `RunDemand.stranded`)."""
        found = []
        for pod in self.pods_by_node().get("", []):
            if not _unschedulable(pod) or not _selects(pod, node_labels) or not _tolerates(pod, taints):
                continue
            cpus, memory_gb = cpu_request(pod), memory_request_gb(pod)
            if cpus <= room_cpus and memory_gb <= room_memory_gb:
                found.append((f"{_meta(pod).get('namespace')}/{_meta(pod).get('name')}", cpus, memory_gb))
        return found

    # -- acting ----------------------------------------------------------------------------------
    def cordon_instances(self, instance_ids: Sequence[str], cordoned: bool = True) -> list[str]:
        """Mark the nodes of these instances unschedulable (or schedulable again); returns the node
        names changed. An instance with no node has nothing to cordon."""
        nodes = self.nodes_by_instance()
        changed = []
        for iid in instance_ids:
            node = nodes.get(iid)
            if node is None:
                continue
            self.core.patch_node(_meta(node)["name"], {"spec": {"unschedulable": cordoned}})
            changed.append(_meta(node)["name"])
        _SNAPSHOTS.forget(self._host)
        return changed

    def evict(self, instance_ids: Sequence[str], which: Callable[[Mapping[str, Any]], bool] = movable,
              grace_period_s: int | None = None) -> list[str]:
        """Evict the pods on these instances' nodes that `which` selects (default: the movable
        ones), through the Eviction API, so PodDisruptionBudgets and each pod's grace period (and
        preStop hook) are honoured. Returns "namespace/name" of each pod evicted; a refused
        eviction (a budget, HTTP 429) raises PoolError naming the pod."""
        from kubernetes import client

        nodes = self.nodes_by_instance()
        names = [_meta(nodes[iid])["name"] for iid in instance_ids if iid in nodes]
        evicted = []
        for pods in self.pods_by_node(fresh=True, node_names=names).values():
            for pod in pods:
                if not which(pod) or (_meta(pod).get("deletionTimestamp")):
                    continue
                namespace, name = _meta(pod)["namespace"], _meta(pod)["name"]
                body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace),
                                         delete_options=client.V1DeleteOptions(grace_period_seconds=grace_period_s)
                                         if grace_period_s is not None else None)
                try:
                    self.core.create_namespaced_pod_eviction(name, namespace, body)
                except client.ApiException as error:
                    if error.status == 404:
                        continue  # gone already
                    raise PoolError(f"could not evict pod {namespace}/{name} from node {node_name_of(pod)}: "
                                    f"{error.status} {error.reason}") from error
                evicted.append(f"{namespace}/{name}")
        _SNAPSHOTS.forget(self._host)
        return evicted


def label_selector(labels: Mapping[str, str] | None) -> str | None:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or None


def not_a_daemon(pod: Mapping[str, Any]) -> bool:
    """Every pod that does not go with its node: what a node about to be taken away is drained of."""
    return not (_finished(pod) or is_daemon(pod))
