"""The Node a machine's kubelet registers, as the tests' stand-ins for a cloud make it (EKS
instances: eks.py; Cluster API Machines: cluster_api.py). kwok plays its kubelet (annotation
`kwok.x-k8s.io/node: fake`), or, with `kubelet=`, the stand-in kubelet of tests/cluster/kubelet.py."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from tests.cluster.control_plane import KWOK_ANNOTATION

PROCESS_KUBELET_ANNOTATION = "dpe.test/kubelet"  # nodes the stand-in kubelet plays


def quantity_mib(mib: float) -> str:
    return f"{int(mib)}Mi"


def node_manifest(name: str, provider_id: str, labels: Mapping[str, str], taints: Iterable[tuple[str, str, str]], *,
                  capacity_cpus: float, capacity_memory_mib: float, allocatable_cpus: float,
                  allocatable_memory_mib: float, pods: int, address: str = "10.0.0.1",
                  kubelet: str | None = None) -> dict[str, Any]:
    """A Node with the well-known labels of a Linux node and these labels, taints and resources."""
    annotations = {PROCESS_KUBELET_ANNOTATION: kubelet} if kubelet else {KWOK_ANNOTATION: "fake"}
    capacity = {"cpu": f"{capacity_cpus:g}", "memory": quantity_mib(capacity_memory_mib), "pods": str(pods),
                "ephemeral-storage": "20Gi"}
    allocatable = {"cpu": f"{int(round(allocatable_cpus * 1000))}m", "memory": quantity_mib(allocatable_memory_mib),
                   "pods": str(pods), "ephemeral-storage": "18Gi"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": annotations, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", **labels}},
        "spec": {"providerID": provider_id,
                 "taints": [{"key": k, **({"value": v} if v else {}), "effect": e} for k, v, e in taints]},
        "status": {"capacity": capacity, "allocatable": allocatable,
                   "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}]},
    }
