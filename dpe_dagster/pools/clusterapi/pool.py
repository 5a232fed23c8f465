"""A node pool backed by a Cluster API MachineDeployment, through the Kubernetes API of the
management cluster (the cluster that holds the Cluster API objects; here the same as the one the
runs go to).

The MachineDeployment is the source of truth: its `spec.replicas` is the pool's target, its
Machines (label `cluster.x-k8s.io/deployment-name`) are the pool's nodes, each known by its
Machine's name. dpe only ever:

- sets `spec.replicas` through the MachineDeployment's `scale` subresource, clamped to Cluster
  Autoscaler's size annotations on it (`cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size`
  and `-max-size`) when it has them, to the pool's `min_size`/`max_size` otherwise; lowers it only
  to withdraw capacity that has no Machine yet, never below the Machines that exist (a lower
  count lets the MachineSet pick which Machines go, busy or not);
- removes a chosen idle node by annotating its Machine `cluster.x-k8s.io/delete-machine` and then
  lowering the replicas by one: the MachineSet deletes the Machines so marked first. A stuck node
  at the minimum size is replaced instead: its Machine is deleted, the replicas stay, and the
  MachineSet makes a new one. The safe sequence around it (busy checks, cordon, drain) is
  `pools/removal.py`'s;
- keeps the scale-up and back-off marks of `pools/health.py` as `dpe.io/` annotations of the
  MachineDeployment, which every dpe process reads.

A node is pending until its Machine's `status.nodeRef` names a Node that is Ready and schedulable.
Busy-ness, cordoning, draining and which node a run holds come from the Kubernetes Nodes and pods
(`kube/nodes.py`), matched to Machines by the `cluster.x-k8s.io/machine` annotation Cluster API
sets on each Node it joined. A node's price is the pool's `price_per_node_hour`, its lifecycle the
pool's `lifecycle`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

from dpe_dagster.config import Checked, ConfigModel, PoolConfig, validated
from dpe_dagster.pools.base import PENDING, RUNNING, Node, PoolError
from dpe_dagster.pools.health import MARKS, MarkedHealth
from dpe_dagster.pools.removal import SafeRemoval

log = logging.getLogger("dpe.pools.clusterapi")

GROUP = "cluster.x-k8s.io"
VERSION = "v1beta2"
DEPLOYMENTS = "machinedeployments"
MACHINES = "machines"
DEPLOYMENT_LABEL = "cluster.x-k8s.io/deployment-name"  # on each Machine of a MachineDeployment
DELETE_MACHINE_ANNOTATION = "cluster.x-k8s.io/delete-machine"  # the MachineSet deletes these first
MIN_SIZE_ANNOTATION = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size"
MAX_SIZE_ANNOTATION = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size"
MACHINE_ANNOTATION = "cluster.x-k8s.io/machine"  # on each Node Cluster API joined: its Machine's name
# pools/health.py's marks (scale-up since, back-off) are annotations of the MachineDeployment.
MARK_PREFIX = "dpe.io/"
_DNS_LABEL = "a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)"
_DNS_NAME = "a Kubernetes object name (lowercase letters, digits, '-' and '.', at most 253)"


def _is_name(value: Any, longest: int, dots: bool) -> bool:
    allowed = "abcdefghijklmnopqrstuvwxyz0123456789-" + ("." if dots else "")
    return (isinstance(value, str) and 0 < len(value) <= longest and all(c in allowed for c in value)
            and value[0].isalnum() and value[-1].isalnum())


class ClusterApiSettings(ConfigModel):
    """Per-pool settings (`pools.<name>.settings` for provider `clusterapi`)."""

    namespace: Checked(str, lambda value: _is_name(value, 63, False), _DNS_LABEL,
                       description="the namespace of the MachineDeployment") = "default"
    machine_deployment: Checked(str, lambda value: _is_name(value, 253, True), _DNS_NAME,
                                description="the MachineDeployment whose Machines are the pool's nodes")

    @classmethod
    def parse(cls, pool_name: str, raw: Mapping[str, Any]) -> "ClusterApiSettings":
        return validated(cls, dict(raw), ("pools", pool_name, "settings"))


def _unix(timestamp: str | None) -> float:
    return datetime.fromisoformat(timestamp).timestamp() if timestamp else 0.0


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def machine_of(node: Mapping[str, Any]) -> str | None:
    """The Machine a Kubernetes Node (the API's object) is, from the annotation Cluster API sets."""
    return (_meta(node).get("annotations") or {}).get(MACHINE_ANNOTATION)


def _size_annotation(deployment: Mapping[str, Any], key: str) -> int | None:
    value = (_meta(deployment).get("annotations") or {}).get(key)
    try:
        return int(value) if value is not None else None
    except ValueError:
        log.warning("MachineDeployment %s: annotation %s=%r is not an integer; ignored", _meta(deployment).get("name"),
                    key, value)
        return None


class ClusterApiPool(SafeRemoval, MarkedHealth):
    """A `NodePool` whose nodes are the Machines of one MachineDeployment."""

    cordons = True

    def __init__(self, config: PoolConfig, settings: ClusterApiSettings, custom: Any, kube: Any):
        self.config = config
        self.name = config.name
        self.settings = settings
        self.custom = custom  # kubernetes.client.CustomObjectsApi
        self.kube = kube  # kube.nodes.KubeNodes, matching a Node to its Machine (`machine_of`)

    @classmethod
    def from_config(cls, pool: PoolConfig) -> "ClusterApiPool":
        from kubernetes import client

        from dpe_dagster.kube.nodes import KubeNodes

        settings = ClusterApiSettings.parse(pool.name, pool.settings or {})
        kube = KubeNodes.from_environment(pool.labels, machine_of)
        return cls(pool, settings, client.CustomObjectsApi(kube.core.api_client), kube)

    # -- the API ----------------------------------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"MachineDeployment {self.settings.namespace}/{self.settings.machine_deployment}"

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client import ApiException

        try:
            return fn(*args, **kwargs)
        except ApiException as error:
            raise PoolError(f"pool {self.name}: {what} of {self._where} failed: {error.status} {error.reason}") from error
        except Exception as error:  # connection refused, TLS: the API is not there
            raise PoolError(f"pool {self.name}: {what} of {self._where} failed: {error}") from error

    def _deployment(self) -> dict:
        from kubernetes.client import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.settings.namespace, DEPLOYMENTS,
                                                            self.settings.machine_deployment)
        except ApiException as error:
            if error.status == 404:
                raise PoolError(f"pools.{self.name}.settings.machine_deployment: {self._where} does not exist "
                                "(or Cluster API's CRDs are not installed)") from error
            raise PoolError(f"pool {self.name}: reading {self._where} failed: {error.status} {error.reason}") from error
        except Exception as error:
            raise PoolError(f"pool {self.name}: reading {self._where} failed: {error}") from error

    def _machines(self) -> list[dict]:
        """The MachineDeployment's Machines that are not being deleted, oldest first."""
        listed = self._call("listing the Machines", self.custom.list_namespaced_custom_object, GROUP, VERSION,
                            self.settings.namespace, MACHINES,
                            label_selector=f"{DEPLOYMENT_LABEL}={self.settings.machine_deployment}")
        machines = [m for m in listed.get("items") or [] if not _meta(m).get("deletionTimestamp")]
        return sorted(machines, key=lambda m: (_meta(m).get("creationTimestamp") or "", _meta(m)["name"]))

    def _bounds(self, deployment: Mapping[str, Any]) -> tuple[int, int]:
        low = _size_annotation(deployment, MIN_SIZE_ANNOTATION)
        high = _size_annotation(deployment, MAX_SIZE_ANNOTATION)
        return (self.config.min_size if low is None else low, self.config.max_size if high is None else high)

    def _scale(self, replicas: int) -> None:
        self._call("scaling", self.custom.patch_namespaced_custom_object_scale, GROUP, VERSION,
                   self.settings.namespace, DEPLOYMENTS, self.settings.machine_deployment,
                   {"spec": {"replicas": replicas}})

    def _busy(self, machine_names: Sequence[str], fresh: bool) -> dict[str, tuple[bool, bool | None]]:
        """machine name -> (its node ready to take work, busy); busy None when Kubernetes cannot tell."""
        try:
            return self.kube.busy_by_instance(machine_names, fresh)
        except Exception as error:  # another API call; its failure must not remove nodes
            log.warning("pool %s: cannot tell which nodes are busy (%s); treating all as busy", self.name, error)
            return {name: (False, None) for name in machine_names}

    # -- NodePool ---------------------------------------------------------------------------------
    def target(self) -> int:
        return int((self._deployment().get("spec") or {}).get("replicas") or 0)

    def set_target(self, size: int) -> None:
        deployment = self._deployment()
        low, high = self._bounds(deployment)
        replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
        wanted = min(max(int(size), low), high)
        if wanted != size:
            log.info("pool %s: asked for %d node(s); %s allows %d..%d, asking for %d", self.name, size, self._where,
                     low, high, wanted)
        if wanted < replicas:
            # Withdraw only replicas that have no Machine yet: Machines go through remove_nodes.
            wanted = max(wanted, len(self._machines()))
        if wanted == replicas or (wanted > replicas and not self.may_scale_up(_marks(deployment))):
            return
        self._scale(wanted)
        if wanted > replicas:
            self.scale_up_asked(_marks(deployment))

    def nodes(self) -> list[Node]:
        deployment = self._deployment()
        template = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
        machine_type = (template.get("infrastructureRef") or {}).get("name", "unknown")
        machines = self._machines()
        busy = self._busy([_meta(m)["name"] for m in machines], fresh=False)
        nodes = []
        for machine in machines:
            name = _meta(machine)["name"]
            has_node = bool(((machine.get("status") or {}).get("nodeRef") or {}).get("name"))
            ready, is_busy = busy.get(name, (False, None))
            nodes.append(Node(
                id=name,
                state=RUNNING if has_node and ready else PENDING,
                launched_at=_unix(_meta(machine).get("creationTimestamp")),
                busy=is_busy is not False,
                busy_known=is_busy is not None,
                lifecycle=self.config.lifecycle,
                instance_type=machine_type,
                zone=(machine.get("spec") or {}).get("failureDomain") or "",
            ))
        self.scale_up_arrived(_marks(deployment), sum(n.state == RUNNING for n in nodes),
                              int((deployment.get("spec") or {}).get("replicas") or 0))
        return nodes

    def run_nodes(self) -> dict[str, str]:
        names = [_meta(m)["name"] for m in self._machines()]
        if not names:
            return {}
        try:
            return self.kube.run_instances(names)
        except Exception as error:  # another API call; its failure must not fail the tick
            log.warning("pool %s: cannot tell which nodes the runs hold (%s); packing without it", self.name, error)
            return {}

    def stranded_pods(self) -> list[tuple[str, float, float]]:
        try:
            return self.kube.stranded(self.config.labels, [(t.key, t.value, t.effect) for t in self.config.taints],
                                      self.config.room_cpus, self.config.room_memory_gb)
        except Exception as error:  # another API call; its failure must not fail the tick
            log.warning("pool %s: cannot tell which pods found no room (%s)", self.name, error)
            return []

    # -- removal: the primitives of pools/removal.py's sequence ------------------------------------
    def removal_members(self) -> tuple[list[str], int, int]:
        deployment = self._deployment()
        replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
        return [_meta(m)["name"] for m in self._machines()], replicas, self._bounds(deployment)[0]

    def busy_now(self, node_ids: Sequence[str]) -> dict[str, bool | None]:
        return {name: state[1] for name, state in self._busy(list(node_ids), fresh=True).items()}

    def cordon(self, node_ids: Sequence[str], cordoned: bool = True) -> None:
        self.kube.cordon_instances(node_ids, cordoned)

    def drain(self, node_ids: Sequence[str]) -> None:
        self.kube.evict(node_ids)

    def terminate(self, node_id: str, lower_target: bool) -> None:
        if not lower_target:
            # Replaced: the MachineSet keeps its replicas and makes a new Machine for this one.
            self._call(f"deleting Machine {node_id}", self.custom.delete_namespaced_custom_object, GROUP, VERSION,
                       self.settings.namespace, MACHINES, node_id)
            return
        self._call(f"marking Machine {node_id} for deletion", self.custom.patch_namespaced_custom_object, GROUP,
                   VERSION, self.settings.namespace, MACHINES, node_id,
                   {"metadata": {"annotations": {DELETE_MACHINE_ANNOTATION: "true"}}})
        self._scale(max(0, self.target() - 1))

    # -- scale-up health and back-off: the primitives of pools/health.py's rule, on annotations ----
    def read_marks(self) -> dict[str, str]:
        return _marks(self._deployment())

    def write_marks(self, values: Mapping[str, str | None]) -> None:
        self._call("annotating", self.custom.patch_namespaced_custom_object, GROUP, VERSION, self.settings.namespace,
                   DEPLOYMENTS, self.settings.machine_deployment,
                   {"metadata": {"annotations": {MARK_PREFIX + key: value for key, value in values.items()}}})

    def sizes(self) -> tuple[int, int, int, int]:
        deployment = self._deployment()
        nodes = self.nodes()
        return (int((deployment.get("spec") or {}).get("replicas") or 0), sum(n.state == RUNNING for n in nodes),
                len(nodes), self._bounds(deployment)[0])

    def withdraw(self, size: int) -> None:
        self._scale(size)


def _marks(deployment: Mapping[str, Any]) -> dict[str, str]:
    """The marks of pools/health.py among the MachineDeployment's annotations, by name."""
    annotations = _meta(deployment).get("annotations") or {}
    return {key: annotations[MARK_PREFIX + key] for key in MARKS if MARK_PREFIX + key in annotations}
