"""EKS in the tests: the AWS emulator's instances join the real control plane as Nodes.

`EksNodes` watches the emulator's Auto Scaling groups, as a node's boot and EKS's cloud
controller would, and keeps the cluster's Nodes in step with their instances:

- an instance that is running in a group joins `boot_s` after dpe (or anyone) launched it: a Node
  named after its private DNS name, `spec.providerID` `aws:///<zone>/<instance id>`, the
  well-known labels (hostname, instance type, zone, region, os, arch), and the labels and taints
  its launch template's user data gives the kubelet (`pools/aws/eks.py`: the NodeConfig that
  deploy/cloudformation/node-pool.yaml and the emulator both write); capacity from the instance
  type, allocatable less kube-reserved and the eviction threshold as the EKS AMI computes them;
- an instance that is gone (terminated, or no longer in a group) takes its Node with it, as the
  cloud node lifecycle controller deletes a Node whose instance no longer exists;
- `install_daemonsets` creates kube-proxy and the VPC CNI as real DaemonSets (kube-system), so
  every node runs their pods and they take their requests from what is left for runs.

Who plays the kubelet: kwok for nodes annotated `kwok.x-k8s.io/node=fake` (the default), or, with
`kubelet=`, the stand-in kubelet that runs pods as local processes (tests/cluster/kubelet.py),
which can also fall silent (`ProcessKubelet.silence`).

What is not modelled: the instance's boot itself (a fixed delay), and EKS's access entries (the
node is created by the test's admin credentials, not by its own kubelet's).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import boto3

from dpe_dagster.pools.aws.eks import EKS_DAEMONSETS, kubelet_labels_and_taints, node_resources
from tests.cluster.background import Background
from tests.cluster.control_plane import ControlPlane
from tests.cluster.nodes import node_manifest, quantity_mib

_ALIVE = ("pending", "running")


def eks_node_manifest(instance: dict[str, Any], region: str, labels: dict[str, str],
                      taints: list[tuple[str, str, str]], kubelet: str | None = None) -> dict[str, Any]:
    """The Node an EKS kubelet registers for this EC2 instance (as DescribeInstances returns it)."""
    zone = instance["Placement"]["AvailabilityZone"]
    resources = node_resources(instance["InstanceType"])
    return node_manifest(
        instance["PrivateDnsName"], f"aws:///{zone}/{instance['InstanceId']}",
        {"node.kubernetes.io/instance-type": instance["InstanceType"], "topology.kubernetes.io/zone": zone,
         "topology.kubernetes.io/region": region, **labels}, taints,
        capacity_cpus=resources.capacity_cpus, capacity_memory_mib=resources.capacity_memory_mib,
        allocatable_cpus=resources.allocatable_cpus, allocatable_memory_mib=resources.allocatable_memory_mib,
        pods=resources.pods, address=instance.get("PrivateIpAddress", "10.0.0.1"), kubelet=kubelet)


def install_daemonsets(cluster: ControlPlane) -> None:
    """kube-proxy and aws-node (the VPC CNI) as an EKS cluster runs them: on every node, whatever
    its taints, requesting what their add-ons request."""
    cluster.apply({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": ds.name, "namespace": "kube-system", "labels": {"k8s-app": ds.name}},
        "spec": {"selector": {"matchLabels": {"k8s-app": ds.name}}, "template": {
            "metadata": {"labels": {"k8s-app": ds.name}},
            "spec": {"priorityClassName": "system-node-critical", "hostNetwork": True,
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": ds.name, "image": ds.image, "resources": {"requests": {
                         "cpu": f"{int(ds.cpus * 1000)}m",
                         **({"memory": quantity_mib(ds.memory_mib)} if ds.memory_mib else {})}}}]}}},
    } for ds in EKS_DAEMONSETS)


class EksNodes(Background):
    """Keeps the cluster's Nodes in step with the emulator's instances, in a thread (`start`) or
    one pass at a time (`sync`)."""

    name = "eks-nodes"

    def __init__(self, cluster: ControlPlane, endpoint_url: str, region: str = "us-east-1", *, boot_s: float = 1.0,
                 kubelet: str | None = None, interval_s: float = 0.25):
        kwargs = {"region_name": region, "endpoint_url": endpoint_url, "aws_access_key_id": "testing",
                  "aws_secret_access_key": "testing"}
        self.autoscaling = boto3.client("autoscaling", **kwargs)
        self.ec2 = boto3.client("ec2", **kwargs)
        self.core = cluster.core()
        self.region = region
        self.boot_s = boot_s
        super().__init__(interval_s)
        self.kubelet = kubelet
        self.first_seen: dict[str, float] = {}
        self._user_data: dict[tuple[str, str], tuple[dict, list]] = {}
        self._lock = threading.Lock()

    # -- one pass -------------------------------------------------------------------------------
    def _template_of(self, group: dict, member: dict) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
        spec = member.get("LaunchTemplate") or group.get("LaunchTemplate") or (
            group.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {}).get("LaunchTemplateSpecification", {}))
        name = spec.get("LaunchTemplateName") or spec.get("LaunchTemplateId", "")
        version = str(spec.get("Version", "$Latest"))
        key = (name, version)
        if key not in self._user_data:
            by = {"LaunchTemplateName": name} if spec.get("LaunchTemplateName") else {"LaunchTemplateId": name}
            versions = self.ec2.describe_launch_template_versions(**by, Versions=[version])["LaunchTemplateVersions"]
            self._user_data[key] = kubelet_labels_and_taints(versions[0]["LaunchTemplateData"].get("UserData", ""))
        return self._user_data[key]

    def sync(self) -> None:
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        now = time.monotonic()
        wanted: dict[str, tuple[dict, dict]] = {}  # instance id -> (group, member)
        for page in self.autoscaling.get_paginator("describe_auto_scaling_groups").paginate():
            for group in page["AutoScalingGroups"]:
                for member in group.get("Instances", []):
                    if not member.get("LifecycleState", "").startswith(("Terminating", "Terminated", "Detach")):
                        wanted[member["InstanceId"]] = (group, member)
        described: dict[str, dict] = {}
        if wanted:
            for reservation in self.ec2.describe_instances(Filters=[
                    {"Name": "instance-id", "Values": list(wanted)}])["Reservations"]:
                for inst in reservation["Instances"]:
                    described[inst["InstanceId"]] = inst
        alive = {iid: described[iid] for iid in wanted
                 if iid in described and described[iid]["State"]["Name"] in _ALIVE}
        nodes = {n.spec.provider_id.rsplit("/", 1)[-1]: n for n in self.core.list_node().items
                 if n.spec and (n.spec.provider_id or "").startswith("aws:///")}
        for iid, node in nodes.items():
            if iid not in alive:
                with contextlib.suppress(Exception):
                    self.core.delete_node(node.metadata.name)
                self.first_seen.pop(iid, None)
        for iid, inst in alive.items():
            self.first_seen.setdefault(iid, now)
            if iid in nodes or now - self.first_seen[iid] < self.boot_s:
                continue
            group, member = wanted[iid]
            labels, taints = self._template_of(group, member)
            self.core.create_node(eks_node_manifest(inst, self.region, labels, taints, self.kubelet))

    # -- helpers for tests ----------------------------------------------------------------------
    def node_name(self, instance_id: str, timeout_s: float = 30) -> str:
        """The name of the Node of this instance, once it has joined."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.core.list_node().items:
                if (node.spec.provider_id or "").endswith(f"/{instance_id}"):
                    return node.metadata.name
            time.sleep(0.1)
        raise TimeoutError(f"instance {instance_id} did not join as a Node within {timeout_s:g}s "
                           f"(errors: {self.errors[-3:]})")
