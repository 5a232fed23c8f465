"""What an EC2 instance is as an EKS node: its shape, what pods can get of it, and how it joins.

- **Shape.** `INSTANCE_TYPES`: vCPUs, memory and the pods the VPC CNI lets it run (secondary IPs
  per ENI, no prefix delegation: `max_pods = ENIs x (IPs per ENI - 1) + 2`, the figures of the EKS
  AMI's eni-max-pods.txt), for the types dpe's pools and examples use. Others: `instance_shape`
  fails naming the type; add it here.
- **Allocatable**, as the EKS AMI's kubelet computes it: kube-reserved CPU is 6% of the first
  core, 1% of the second, 0.5% of the third and fourth and 0.25% of every further core;
  kube-reserved memory is 255 MiB + 11 MiB per pod the node can run; the hard eviction threshold
  keeps 100 MiB more. Pods get allocatable less what the node's DaemonSets request
  (`EKS_DAEMONSETS`: kube-proxy and the VPC CNI, as an EKS cluster runs them).
- **Joining.** A node's labels and taints come from its launch template's user data: an AL2023
  `NodeConfig` whose kubelet flags carry `--node-labels` and `--register-with-taints`
  (`node_user_data` writes it for a pool, as deploy/cloudformation/node-pool.yaml does;
  `kubelet_labels_and_taints` reads it back).

Pure: no I/O.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import yaml

from dpe_dagster.config import PoolConfig
from dpe_dagster.errors import ConfigError
from dpe_dagster.tags import LIFECYCLE_LABEL

MIB_PER_GIB = 1024.0
EVICTION_HARD_MIB = 100.0


@dataclass(frozen=True)
class InstanceShape:
    vcpus: int
    memory_gib: float
    max_pods: int


# vCPUs, GiB, max pods (VPC CNI without prefix delegation).
INSTANCE_TYPES: dict[str, InstanceShape] = {
    **{f"{family}.large": InstanceShape(2, 8, 29) for family in ("m5", "m5a", "m5n", "m6i", "m6a", "m7i", "m7a")},
    **{f"{family}.xlarge": InstanceShape(4, 16, 58) for family in ("m5", "m5a", "m5n", "m6i", "m6a", "m7i", "m7a")},
    **{f"{family}.2xlarge": InstanceShape(8, 32, 58) for family in ("m5", "m5a", "m5n", "m6i", "m6a", "m7i", "m7a")},
    **{f"{family}.4xlarge": InstanceShape(16, 64, 234) for family in ("m5", "m5a", "m5n", "m6i", "m6a", "m7i", "m7a")},
    **{f"{family}.large": InstanceShape(2, 4, 29) for family in ("c5", "c6i", "c7i")},
    **{f"{family}.xlarge": InstanceShape(4, 8, 58) for family in ("c5", "c6i", "c7i")},
    **{f"{family}.large": InstanceShape(2, 16, 29) for family in ("r5", "r6i", "r7i")},
    **{f"{family}.xlarge": InstanceShape(4, 32, 58) for family in ("r5", "r6i", "r7i")},
}


@dataclass(frozen=True)
class DaemonSetRequest:
    name: str
    image: str
    cpus: float
    memory_mib: float = 0.0


# The DaemonSets every EKS node runs, with what they request (EKS add-on defaults).
EKS_DAEMONSETS = (
    DaemonSetRequest("kube-proxy", "602401143452.dkr.ecr.us-east-1.amazonaws.com/eks/kube-proxy:v1.36.0-eksbuild.1",
                     cpus=0.1),
    DaemonSetRequest("aws-node", "602401143452.dkr.ecr.us-east-1.amazonaws.com/amazon-k8s-cni:v1.21.0-eksbuild.1",
                     cpus=0.025),
)


def instance_shape(instance_type: str) -> InstanceShape:
    shape = INSTANCE_TYPES.get(instance_type)
    if shape is None:
        raise ConfigError(f"instance type {instance_type!r}: dpe does not know its shape; known: "
                          f"{', '.join(sorted(INSTANCE_TYPES))} (dpe_dagster/pools/aws/eks.py)")
    return shape


def kube_reserved_cpus(vcpus: int) -> float:
    tiers = ((1, 0.06), (1, 0.01), (2, 0.005))
    reserved, left = 0.0, float(vcpus)
    for cores, share in tiers:
        take = min(left, cores)
        reserved += take * share
        left -= take
    return round(reserved + max(0.0, left) * 0.0025, 4)


def kube_reserved_memory_mib(max_pods: int) -> float:
    return 255.0 + 11.0 * max_pods


@dataclass(frozen=True)
class NodeResources:
    """What a node reports (capacity), what the kubelet lets pods have (allocatable), and what
    is left for pods that are not DaemonSets' (room)."""

    capacity_cpus: float
    capacity_memory_mib: float
    allocatable_cpus: float
    allocatable_memory_mib: float
    pods: int
    room_cpus: float
    room_memory_mib: float


def node_resources(instance_type: str, daemonsets: Iterable[DaemonSetRequest] = EKS_DAEMONSETS) -> NodeResources:
    shape = instance_shape(instance_type)
    capacity_mib = shape.memory_gib * MIB_PER_GIB
    allocatable_cpus = shape.vcpus - kube_reserved_cpus(shape.vcpus)
    allocatable_mib = capacity_mib - kube_reserved_memory_mib(shape.max_pods) - EVICTION_HARD_MIB
    daemonsets = list(daemonsets)
    return NodeResources(
        capacity_cpus=float(shape.vcpus), capacity_memory_mib=capacity_mib,
        allocatable_cpus=allocatable_cpus, allocatable_memory_mib=allocatable_mib, pods=shape.max_pods,
        room_cpus=round(allocatable_cpus - sum(d.cpus for d in daemonsets), 4),
        room_memory_mib=allocatable_mib - sum(d.memory_mib for d in daemonsets),
    )


def max_pods_for(vcpus: float) -> int:
    """The pods a node of this many vCPUs runs (the fewest among the known types of that size)."""
    sizes = sorted({shape.vcpus for shape in INSTANCE_TYPES.values()})
    size = next((s for s in sizes if s >= vcpus), sizes[-1])
    return min(shape.max_pods for shape in INSTANCE_TYPES.values() if shape.vcpus == size)


def reserved_for_shape(node_cpus: float, node_memory_gb: float,
                       daemonsets: Iterable[DaemonSetRequest] = EKS_DAEMONSETS) -> tuple[float, float]:
    """(CPUs, GB) of a node of this shape that runs cannot have on EKS: kube-reserved, the
    eviction threshold and the DaemonSets' requests."""
    daemonsets = list(daemonsets)
    cpus = kube_reserved_cpus(math.ceil(node_cpus)) + sum(d.cpus for d in daemonsets)
    memory_mib = (kube_reserved_memory_mib(max_pods_for(node_cpus)) + EVICTION_HARD_MIB
                  + sum(d.memory_mib for d in daemonsets))
    # Rounded up: what runs may count on is never more than the node has.
    return _ceil4(cpus), _ceil4(memory_mib / MIB_PER_GIB)


def _ceil4(value: float) -> float:
    return math.ceil(round(value * 10_000, 6)) / 10_000


# -- joining: the launch template's user data ---------------------------------------------------
BOUNDARY = "BOUNDARY"


def taint_text(key: str, value: str, effect: str) -> str:
    return f"{key}={value}:{effect}" if value else f"{key}:{effect}"


def node_labels(pool: PoolConfig) -> dict[str, str]:
    """The labels a pool's nodes register with: the pool's own and its lifecycle."""
    return {**pool.labels, LIFECYCLE_LABEL: pool.lifecycle}


def node_user_data(cluster: str, labels: Mapping[str, str], taints: Iterable[tuple[str, str, str]],
                   endpoint: str = "https://cluster.invalid", certificate_authority: str = "",
                   service_cidr: str = "10.100.0.0/16") -> str:
    """The user data (base64) of a pool's launch template: an AL2023 NodeConfig whose kubelet
    flags give the node the pool's labels and taints."""
    flags = [f"--node-labels={','.join(f'{k}={v}' for k, v in sorted(labels.items()))}"]
    taints = list(taints)
    if taints:
        flags.append(f"--register-with-taints={','.join(taint_text(*t) for t in taints)}")
    config = yaml.safe_dump({"apiVersion": "node.eks.aws/v1alpha1", "kind": "NodeConfig", "spec": {
        "cluster": {"name": cluster, "apiServerEndpoint": endpoint, "certificateAuthority": certificate_authority,
                    "cidr": service_cidr},
        "kubelet": {"flags": flags}}}, sort_keys=False)
    text = (f'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{BOUNDARY}"\n\n--{BOUNDARY}\n'
            f"Content-Type: application/node.eks.aws\n\n{config}\n--{BOUNDARY}--\n")
    return base64.b64encode(text.encode()).decode()


_PART = re.compile(r"Content-Type: application/node\.eks\.aws\s*\n\s*\n(?P<body>.*?)\n--", re.DOTALL)


def kubelet_labels_and_taints(user_data: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """The labels and taints a node registers with, from its user data (base64 or plain)."""
    try:
        text = base64.b64decode(user_data, validate=True).decode()
    except ValueError:
        text = user_data
    labels: dict[str, str] = {}
    taints: list[tuple[str, str, str]] = []
    for part in _PART.finditer(text):
        config = yaml.safe_load(part.group("body")) or {}
        for flag in ((config.get("spec") or {}).get("kubelet") or {}).get("flags") or []:
            name, _, value = str(flag).partition("=")
            if name == "--node-labels":
                labels.update(item.split("=", 1) for item in value.split(",") if "=" in item)
            elif name == "--register-with-taints":
                for item in filter(None, value.split(",")):
                    key_value, _, effect = item.rpartition(":")
                    key, _, val = key_value.partition("=")
                    taints.append((key, val, effect))
    return labels, taints
