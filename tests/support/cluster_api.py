"""Cluster API for the tests: its CRDs in the shared cluster (installed by the first test that needs
them), a namespace of the test's own with a Cluster and a MachineDeployment, the stand-in
controllers turning its Machines into Nodes, and a `clusterapi` environment on it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from dpe_dagster.config import Environment, parse_environment
from dpe_dagster.pools.clusterapi.pool import GROUP, VERSION
from tests.cluster.build import GoMissing
from tests.cluster.cluster_api import ClusterApiMachines, install_crds, machine_deployment
from tests.support.cluster import _required

DEPLOYMENT = "spot-etl-workers"
BOOT_S = 2.0  # a Machine's Node joins this long after the Machine is made


@dataclass
class ClusterApi:
    namespace: str
    machines: ClusterApiMachines
    custom: Any  # kubernetes.client.CustomObjectsApi as cluster-admin

    def create(self, documents: list[dict[str, Any]]) -> None:
        for document in documents:
            plural = document["kind"].lower() + "s"
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, document)

    def deployment(self, name: str = DEPLOYMENT) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "machinedeployments", name)

    def machines_of(self, name: str = DEPLOYMENT) -> list[dict]:
        return self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "machines", label_selector=f"cluster.x-k8s.io/deployment-name={name}",
        )["items"]


@pytest.fixture
def capi(kube):
    """Cluster API's CRDs, a namespace of this test's own, and the stand-in controllers running."""
    from kubernetes import client

    try:
        install_crds(kube)
    except GoMissing as error:
        if _required():
            pytest.fail(f"DPE_REQUIRE_CLUSTER=1 and {error}")
        pytest.skip(f"needs Cluster API's CRDs: {error}")
    namespace = f"capi-{uuid.uuid4().hex[:8]}"
    kube.core().create_namespace({"metadata": {"name": namespace}})
    with ClusterApiMachines(kube, boot_s=BOOT_S) as machines:
        yield ClusterApi(namespace, machines, client.CustomObjectsApi(kube.api_client()))


def environment(namespace: str, **overrides) -> Environment:
    """One `clusterapi` pool, spot-etl, on the MachineDeployment `DEPLOYMENT` (shaped by `deploy`)."""
    pool = {
        "provider": "clusterapi", "min_size": 0, "max_size": 4, "node_cpus": 2, "node_memory_gb": 8,
        "lifecycle": "spot", "price_per_node_hour": 0.035, "idle_timeout_s": 30, "boot_timeout_s": 60,
        "idle_timeout_mode": "fixed",  # idle nodes go after idle_timeout_s, as the tests count on
        # What the cluster's DaemonSets (kube-proxy, aws-node) take of each node, rounded up.
        "reserved_cpus": 0.25, "reserved_memory_gb": 0.5,
        # The test's namespace too: its pods go only to its own Machines' Nodes, never to a node
        # another test's stand-ins left labelled spot-etl.
        "labels": {"dpe.io/pool": "spot-etl", "dpe.test/namespace": namespace},
        "settings": {"namespace": namespace, "machine_deployment": DEPLOYMENT},
    }
    pool.update(overrides)
    return parse_environment("test", {"pools": {"spot-etl": pool}})


def deploy(capi: ClusterApi, env: Environment, annotations: dict[str, str] | None = None) -> None:
    """The Cluster and the MachineDeployment of the pool spot-etl, its nodes of the pool's shape,
    labels and taints."""
    config = env.pool("spot-etl")
    capi.create(machine_deployment(
        capi.namespace, DEPLOYMENT, "test-cluster", labels=dict(config.labels),
        taints=[(t.key, t.value, t.effect) for t in config.taints], cpus=config.node_cpus,
        memory_gb=config.node_memory_gb, annotations=annotations))
