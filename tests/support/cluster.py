"""The real Kubernetes control plane for the tests (tests/cluster/): started once per test session,
emptied after each test that uses it, with the AWS emulator's instances joining it as EKS nodes.

Where Go is missing the tests that need the cluster skip with the reason; with
`DPE_REQUIRE_CLUSTER=1` (CI, `.ci/run`) they fail instead, as do all of them when it cannot start.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import time
from typing import Callable

import pytest
from tests.cluster.build import GoMissing, build
from tests.cluster.control_plane import ControlPlane
from tests.cluster.eks import EksNodes, install_daemonsets

# Namespaces the cluster starts with; everything else a test made is deleted after it.
SYSTEM_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}


def _required() -> bool:
    return os.environ.get("DPE_REQUIRE_CLUSTER") == "1"


_SHARED: ControlPlane | None = None
# The objects of the kinds tests make (accounts, roles, bindings, policies, config) that the cluster
# had once started: reset deletes any other, so each test meets the cluster as it started.
_BASELINE: set[tuple[str, str, str]] = set()
# Made again at once by the cluster's controllers in every namespace: left alone.
_PER_NAMESPACE = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}


def _kinds(cluster: ControlPlane) -> dict[str, tuple[Callable, Callable | None, Callable | None]]:
    """kind -> (list everywhere, delete a namespaced one, delete a cluster-wide one)."""
    from kubernetes import client

    api = cluster.api_client()
    core, rbac, admission = cluster.core(), client.RbacAuthorizationV1Api(api), client.AdmissionregistrationV1Api(api)
    return {
        "ServiceAccount": (core.list_service_account_for_all_namespaces, core.delete_namespaced_service_account, None),
        "ConfigMap": (core.list_config_map_for_all_namespaces, core.delete_namespaced_config_map, None),
        "Secret": (core.list_secret_for_all_namespaces, core.delete_namespaced_secret, None),
        "Service": (core.list_service_for_all_namespaces, core.delete_namespaced_service, None),
        "Role": (rbac.list_role_for_all_namespaces, rbac.delete_namespaced_role, None),
        "RoleBinding": (rbac.list_role_binding_for_all_namespaces, rbac.delete_namespaced_role_binding, None),
        "ClusterRole": (rbac.list_cluster_role, None, rbac.delete_cluster_role),
        "ClusterRoleBinding": (rbac.list_cluster_role_binding, None, rbac.delete_cluster_role_binding),
        "ValidatingAdmissionPolicy": (admission.list_validating_admission_policy, None,
                                      admission.delete_validating_admission_policy),
        "ValidatingAdmissionPolicyBinding": (admission.list_validating_admission_policy_binding, None,
                                             admission.delete_validating_admission_policy_binding),
    }


def _objects(cluster: ControlPlane) -> set[tuple[str, str, str]]:
    return {(kind, item.metadata.namespace or "", item.metadata.name)
            for kind, (list_all, _, _) in _kinds(cluster).items() for item in list_all().items}


def shared_cluster(tmp_path_factory) -> ControlPlane:
    """The process's one cluster, started on first use. Test modules import the `cluster` fixture,
    which makes it a fixture of each module; they all share this one, stopped when the session
    ends (`stop_shared_cluster`, from tests/conftest.py) or, failing that, when the process exits."""
    global _SHARED
    if _SHARED is None:
        try:
            binaries = build(quiet=True)
        except GoMissing as error:
            if _required():
                pytest.fail(f"DPE_REQUIRE_CLUSTER=1 and {error}")
            pytest.skip(f"needs the Kubernetes control plane: {error}")
        plane = ControlPlane(binaries.folder, tmp_path_factory.mktemp("cluster"))
        plane.start()
        try:
            install_daemonsets(plane)
        except BaseException:
            plane.stop()
            raise
        _BASELINE.update(_objects(plane))
        _SHARED = plane
        atexit.register(stop_shared_cluster)
    return _SHARED


@contextlib.contextmanager
def kept(cluster: ControlPlane):
    """What the cluster holds now (a module's fixture applied it: a sandbox's accounts and roles)
    survives each test's reset until the block ends."""
    added = _objects(cluster) - _BASELINE
    _BASELINE.update(added)
    try:
        yield
    finally:
        _BASELINE.difference_update(added)


def stop_shared_cluster() -> None:
    global _SHARED
    if _SHARED is not None:
        plane, _SHARED = _SHARED, None
        plane.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """kube-apiserver, kube-controller-manager, kube-scheduler, etcd and kwok, with the EKS
    DaemonSets (kube-proxy, aws-node) installed: one per test session."""
    return shared_cluster(tmp_path_factory)


def reset(cluster: ControlPlane) -> None:
    """Back to the cluster as it started: no nodes, no Jobs or pods, no namespace, account, role,
    binding, policy or configuration a test made."""
    from kubernetes import client

    core, batch = cluster.core(), client.BatchV1Api(cluster.api_client())
    apps, policy = client.AppsV1Api(cluster.api_client()), client.PolicyV1Api(cluster.api_client())
    for namespace in core.list_namespace().items:
        name = namespace.metadata.name
        collections = [batch.delete_collection_namespaced_job, apps.delete_collection_namespaced_deployment,
                       apps.delete_collection_namespaced_stateful_set, apps.delete_collection_namespaced_replica_set,
                       policy.delete_collection_namespaced_pod_disruption_budget]
        if name != "kube-system":  # its DaemonSets are the cluster's (install_daemonsets)
            collections.append(apps.delete_collection_namespaced_daemon_set)
        for delete in collections:
            with contextlib.suppress(client.ApiException):
                delete(name, propagation_policy="Background")
        with contextlib.suppress(client.ApiException):
            core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
        if name not in SYSTEM_NAMESPACES and name != "dagster":
            with contextlib.suppress(client.ApiException):
                core.delete_namespace(name)
    with contextlib.suppress(client.ApiException):
        core.delete_collection_node()
    kinds = _kinds(cluster)
    for kind, namespace, name in _objects(cluster) - _BASELINE:
        if (kind, name) in _PER_NAMESPACE or namespace == "kube-system":
            continue
        _, delete_namespaced, delete_cluster_wide = kinds[kind]
        with contextlib.suppress(client.ApiException):
            if namespace:
                delete_namespaced(name, namespace)
            else:
                delete_cluster_wide(name)


@pytest.fixture
def kube(cluster, monkeypatch):
    """The cluster for one test, as cluster-admin through KUBECONFIG; emptied afterwards."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield cluster
    reset(cluster)


@pytest.fixture
def eks(kube, aws):
    """The AWS emulator's instances joining the cluster as EKS nodes (kwok plays their kubelets)."""
    nodes = EksNodes(kube, aws.url, boot_s=0.5)
    with nodes:
        yield nodes


def wait_for(what: str, check: Callable[[], object], timeout_s: float = 30, interval_s: float = 0.1):
    """Poll until `check()` is truthy and return it; fail naming `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - the API may answer 404 until the object exists
            last_error = error
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not within {timeout_s:g}s" + (f" (last error: {last_error})" if last_error else ""))


def node_ready(core, name: str) -> bool:
    node = core.read_node(name)
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


def pods_on(core, node_name: str) -> list:
    return core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node_name}").items


def run_on(kube, name: str, node: str, run_id: str | None = None) -> None:
    """A Job whose pod is bound to `node` (a run's, labelled as dagster-k8s labels it, with
    `run_id`), running."""
    labels = {"dagster/run-id": run_id} if run_id else {}
    kube.apply([{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "default"},
                 "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": labels}, "spec": {
                     "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": node},
                     "tolerations": [{"key": "dpe.io/pool", "operator": "Exists"}],
                     "containers": [{"name": "main", "image": "busybox",
                                     "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]}}}}])
    wait_for(f"{name}'s pod running on {node}", lambda: any(
        p.metadata.name.startswith(name) and p.status.phase == "Running" for p in pods_on(kube.core(), node)))
