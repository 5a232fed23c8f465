"""Cluster API in the tests: its CRDs in the real control plane, and a stand-in for its controllers.

`install_crds` creates Cluster API's CustomResourceDefinitions (Cluster, MachineDeployment,
MachineSet, Machine), read from the module `sigs.k8s.io/cluster-api` at the version
tests/cluster/capi/go.mod pins (Go's module cache; nothing of it is copied here).

`ClusterApiMachines` stands in for Cluster API's MachineDeployment and MachineSet controllers and
for an infrastructure and a bootstrap provider:

- it keeps as many Machines of each MachineDeployment (label `cluster.x-k8s.io/deployment-name`,
  owned by it) as its `spec.replicas`, made from its template; when the replicas go down it deletes
  first the Machines annotated `cluster.x-k8s.io/delete-machine` (as the MachineSet's delete
  policy does), then the newest; it reports `status.replicas` and `status.selector` (the scale
  subresource reads them);
- `boot_s` after a Machine is made, its Node joins: named after the Machine, kwok plays its
  kubelet (Ready), with the template's labels and taints (as a bootstrap provider passes them to
  the kubelet) and the capacity of Cluster Autoscaler's scale-from-zero annotations on the
  MachineDeployment (`capacity.cluster-autoscaler.kubernetes.io/cpu`, `/memory`, `/maxPods`);
  the Machine's `spec.providerID` and `status.nodeRef` then point to it;
- a Machine that is gone takes its Node with it.

Not modelled: MachineSet objects, rollouts of a changed template, the drain Cluster API itself does
before it deletes a Machine (dpe drains before it asks), and Machine phases other than Running.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import yaml

from dpe_dagster.pools.clusterapi.pool import DELETE_MACHINE_ANNOTATION, DEPLOYMENT_LABEL, GROUP, MACHINE_ANNOTATION, VERSION
from tests.cluster.background import Background
from tests.cluster.build import module_source
from tests.cluster.control_plane import ControlPlane
from tests.cluster.nodes import node_manifest

MODULE = "sigs.k8s.io/cluster-api"
CRDS = ("clusters", "machinedeployments", "machinesets", "machines")
PROVIDER_ID_PREFIX = "clusterapi-test:///"  # the stand-in infrastructure provider's machines
CAPACITY_ANNOTATION = "capacity.cluster-autoscaler.kubernetes.io/"  # + cpu, memory, maxPods
_MEMORY_UNITS_MIB = {"Mi": 1, "Gi": 1024, "M": 1e6 / 2 ** 20, "G": 1e9 / 2 ** 20}


def install_crds(cluster: ControlPlane, timeout_s: float = 30) -> None:
    """Cluster API's CRDs in the cluster, established (left as they are when they exist)."""
    from kubernetes import client

    api = client.ApiextensionsV1Api(cluster.api_client())
    folder = module_source("capi", MODULE) / "config" / "crd" / "bases"
    for plural in CRDS:
        document = yaml.safe_load((folder / f"{GROUP}_{plural}.yaml").read_text())
        try:
            api.create_custom_resource_definition(document)
        except client.ApiException as error:
            if error.status != 409:
                raise
    deadline = time.monotonic() + timeout_s
    custom = client.CustomObjectsApi(cluster.api_client())
    for plural in CRDS:
        while not any(c.type == "Established" and c.status == "True" for c in
                      api.read_custom_resource_definition(f"{plural}.{GROUP}").status.conditions or []):
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {plural}.{GROUP} not established within {timeout_s:g}s")
            time.sleep(0.1)
        # Established, and then served: the API server's handler for a new CRD may answer 404 a
        # moment longer (as `kubectl wait --for condition=established` leaves to the next call).
        while True:
            try:
                custom.list_cluster_custom_object(GROUP, VERSION, plural, limit=1)
                break
            except client.ApiException as error:
                if error.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _mib(quantity: str) -> float:
    number = quantity.rstrip("MGi")
    return float(number) * _MEMORY_UNITS_MIB.get(quantity[len(number):], 1 / 2 ** 20)


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.setdefault("metadata", {})


class ClusterApiMachines(Background):
    """Keeps Machines and Nodes in step with the MachineDeployments, in a thread (`start`) or one
    pass at a time (`sync`)."""

    name = "cluster-api-machines"

    def __init__(self, cluster: ControlPlane, *, boot_s: float = 1.0, interval_s: float = 0.25):
        from kubernetes import client

        super().__init__(interval_s)
        self.custom = client.CustomObjectsApi(cluster.api_client())
        self.core = cluster.core()
        self.boot_s = boot_s
        self._made: dict[str, float] = {}  # Machine uid -> when this controller first saw it (monotonic)

    def _list(self, plural: str) -> list[dict]:
        return self.custom.list_cluster_custom_object(GROUP, VERSION, plural).get("items") or []

    def sync(self) -> None:
        machines = [m for m in self._list("machines") if not _meta(m).get("deletionTimestamp")]
        for deployment in self._list("machinedeployments"):
            ns, name = _meta(deployment)["namespace"], _meta(deployment)["name"]
            mine = [m for m in machines if _meta(m)["namespace"] == ns
                    and (_meta(m).get("labels") or {}).get(DEPLOYMENT_LABEL) == name]
            self._scale(deployment, mine)
        nodes = {n.metadata.name: n for n in self.core.list_node().items
                 if (n.spec.provider_id or "").startswith(PROVIDER_ID_PREFIX)}
        machines = [m for m in self._list("machines") if not _meta(m).get("deletionTimestamp")]
        for machine in machines:
            self._join(machine, nodes)
        alive = {_meta(m)["name"] for m in machines}
        for name in set(nodes) - alive:
            with contextlib.suppress(Exception):
                self.core.delete_node(name)
        self._made = {uid: at for uid, at in self._made.items() if uid in {_meta(m)["uid"] for m in machines}}

    # -- the MachineDeployment and MachineSet controllers --------------------------------------------
    def _scale(self, deployment: dict, machines: list[dict]) -> None:
        ns, name = _meta(deployment)["namespace"], _meta(deployment)["name"]
        replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
        for _ in range(replicas - len(machines)):
            machines.append(self._make_machine(deployment))
        if len(machines) > replicas:
            # Marked ones first, then the newest (a Machine whose node has not joined goes before one that has).
            def order(machine: dict) -> tuple:
                meta = _meta(machine)
                return DELETE_MACHINE_ANNOTATION in (meta.get("annotations") or {}), meta["creationTimestamp"], meta["name"]

            for machine in sorted(machines, key=order, reverse=True)[:len(machines) - replicas]:
                with contextlib.suppress(Exception):
                    self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "machines", _meta(machine)["name"])
                machines.remove(machine)
        status = deployment.get("status") or {}
        selector = f"{DEPLOYMENT_LABEL}={name}"
        if status.get("replicas") != len(machines) or status.get("selector") != selector:
            self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, "machinedeployments", name, {
                "status": {"replicas": len(machines), "selector": selector}})

    def _make_machine(self, deployment: dict) -> dict:
        ns, name = _meta(deployment)["namespace"], _meta(deployment)["name"]
        template = deployment["spec"]["template"]
        machine_name = f"{name}-{uuid.uuid4().hex[:5]}"
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "machines", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Machine",
            "metadata": {"name": machine_name, "namespace": ns,
                         "labels": {**((template.get("metadata") or {}).get("labels") or {}), DEPLOYMENT_LABEL: name,
                                    "cluster.x-k8s.io/cluster-name": deployment["spec"]["clusterName"]},
                         "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "MachineDeployment",
                                              "name": name, "uid": _meta(deployment)["uid"], "controller": True}]},
            "spec": dict(template["spec"]),
        })

    # -- the infrastructure and bootstrap providers, and the kubelet's joining ------------------------
    def _join(self, machine: dict, nodes: dict[str, Any]) -> None:
        meta = _meta(machine)
        first = self._made.setdefault(meta["uid"], time.monotonic())
        if meta["name"] in nodes or time.monotonic() - first < self.boot_s:
            return
        deployment = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], "machinedeployments", meta["labels"][DEPLOYMENT_LABEL])
        shape = {key[len(CAPACITY_ANNOTATION):]: value for key, value in
                 (_meta(deployment).get("annotations") or {}).items() if key.startswith(CAPACITY_ANNOTATION)}
        cpus, memory_mib, pods = float(shape.get("cpu", "2")), _mib(shape.get("memory", "8Gi")), int(
            shape.get("maxPods", "110"))
        provider_id = f"{PROVIDER_ID_PREFIX}{meta['namespace']}/{meta['name']}"
        labels = {k: v for k, v in (meta.get("labels") or {}).items() if not k.startswith("cluster.x-k8s.io/")}
        taints = [(t["key"], t.get("value", ""), t["effect"]) for t in (machine.get("spec") or {}).get("taints") or []]
        node = node_manifest(meta["name"], provider_id, labels, taints, capacity_cpus=cpus,
                             capacity_memory_mib=memory_mib, allocatable_cpus=cpus, allocatable_memory_mib=memory_mib,
                             pods=pods)
        # What Cluster API's Machine controller annotates a Node it joined with.
        node["metadata"]["annotations"].update({MACHINE_ANNOTATION: meta["name"],
                                                "cluster.x-k8s.io/cluster-namespace": meta["namespace"]})
        self.core.create_node(node)
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, meta["namespace"], "machines", meta["name"],
                                                   {"spec": {"providerID": provider_id}})
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"], "machines", meta["name"], {
            "status": {"nodeRef": {"name": meta["name"]}, "phase": "Running"}})


def machine_deployment(namespace: str, name: str, cluster_name: str, *, replicas: int = 0,
                       labels: dict[str, str] | None = None, taints: list[tuple[str, str, str]] = (),
                       cpus: float = 2, memory_gb: float = 8, annotations: dict[str, str] | None = None
                       ) -> list[dict[str, Any]]:
    """A Cluster and one MachineDeployment of it whose nodes have this shape, labels and taints, as
    an operator would apply them (references to infrastructure and bootstrap templates that the
    stand-in providers do not read)."""
    return [
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Cluster", "metadata": {"name": cluster_name, "namespace": namespace},
         "spec": {"infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "TestCluster",
                                        "name": cluster_name}}},
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MachineDeployment",
         "metadata": {"name": name, "namespace": namespace, "annotations": {
             f"{CAPACITY_ANNOTATION}cpu": f"{cpus:g}", f"{CAPACITY_ANNOTATION}memory": f"{int(memory_gb * 1024)}Mi",
             **(annotations or {})}},
         "spec": {"clusterName": cluster_name, "replicas": replicas,
                  "selector": {"matchLabels": {DEPLOYMENT_LABEL: name}},
                  "template": {"metadata": {"labels": {**(labels or {}), DEPLOYMENT_LABEL: name}}, "spec": {
                      "clusterName": cluster_name,
                      "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "KubeadmConfigTemplate",
                                                  "name": name}},
                      "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "TestMachineTemplate",
                                            "name": name},
                      **({"taints": [{"key": k, **({"value": v} if v else {}), "effect": e, "propagation": "Always"}
                                     for k, v, e in taints]} if taints else {})}}}},
    ]
