"""What a run pod can and cannot do, asked of the real API server with a token of a real run pod
(the ServiceAccount `dpe-run`, bound to the pod, as the kubelet projects it): deploy/k8s's RBAC and
its admission policy (run-pods-policy.yaml), applied as deploy/README.md says."""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client

from tests.cluster.control_plane import ISSUER
from tests.cluster.sandbox import deploy_documents
from tests.support.cluster import cluster, kube, wait_for  # noqa: F401  (fixtures)

NAMESPACE = "dagster"


def pod(name: str, run_id: str | None = None, account: str | None = None, annotation: bool = False) -> dict:
    meta: dict = {"name": name}
    if run_id and annotation:
        meta["annotations"] = {"dpe.io/run-id": run_id}
    elif run_id:
        meta["labels"] = {"dagster/run-id": run_id}
    spec: dict = {"containers": [{"name": "main", "image": "dpe:1"}]}
    if account:
        spec["serviceAccountName"] = account
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


@pytest.fixture
def run_pod_api(kube):
    """The API as run A's pod sees it, and run B's id (another run's pods exist)."""
    kube.apply(deploy_documents("namespace.yaml", "rbac.yaml", "run-pods-policy.yaml"))
    core = kube.core()
    run_a, run_b = str(uuid.uuid4()), str(uuid.uuid4())
    for run_id in (run_a, run_b):
        core.create_namespaced_pod(NAMESPACE, pod(f"dagster-run-{run_id}-x7k2p", run_id, account="dpe-run"))
    a = core.read_namespaced_pod(f"dagster-run-{run_a}-x7k2p", NAMESPACE)
    token = core.create_namespaced_service_account_token("dpe-run", NAMESPACE, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[ISSUER], expiration_seconds=600, bound_object_ref=client.V1BoundObjectReference(
            kind="Pod", api_version="v1", name=a.metadata.name, uid=a.metadata.uid)))).status.token
    # The policy takes a moment to reach the API server's admission chain: until another run's pod
    # is refused (a probe that went through is deleted again).
    as_run = kube.core(token)
    tries = iter(range(1000))

    def in_force() -> bool:
        name = f"probe-{next(tries)}"
        status = _refused(lambda: as_run.create_namespaced_pod(NAMESPACE, pod(name, run_b, account="default")))
        if status is None:
            core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
        return status == 403

    wait_for("the admission policy in force", in_force, timeout_s=30, interval_s=0.5)
    return as_run, run_a, run_b


def _refused(call) -> int | None:
    """The HTTP status of a refused call; None when it went through."""
    try:
        call()
    except client.ApiException as error:
        return error.status
    return None


def test_a_run_pod_manages_its_own_runs_executors_and_containers(run_pod_api, kube):
    as_run, run_a, _ = run_pod_api
    as_run.create_namespaced_pod(NAMESPACE, pod("exec-1", run_a, account="dpe-spark-executor"))
    as_run.create_namespaced_pod(NAMESPACE, pod("container-1", run_a, annotation=True))
    as_run.patch_namespaced_pod("exec-1", NAMESPACE, {"metadata": {"labels": {"spark-exec-inactive": "true"}}})
    assert {p.metadata.name for p in as_run.list_namespaced_pod(NAMESPACE).items} >= {"exec-1", "container-1"}
    as_run.delete_namespaced_pod("exec-1", NAMESPACE)
    as_run.delete_namespaced_pod("container-1", NAMESPACE)
    # A container asset follows its pod's log: granted.
    review = client.AuthorizationV1Api(as_run.api_client).create_self_subject_access_review(
        client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=client.V1ResourceAttributes(
            namespace=NAMESPACE, verb="get", resource="pods", subresource="log"))))
    assert review.status.allowed


def test_a_run_pod_may_not_touch_other_runs_pods_nodes_secrets_or_borrow_an_account(run_pod_api, kube):
    as_run, run_a, run_b = run_pod_api
    other = f"dagster-run-{run_b}-x7k2p"
    assert _refused(lambda: as_run.delete_namespaced_pod(other, NAMESPACE)) == 403
    assert _refused(lambda: as_run.patch_namespaced_pod(other, NAMESPACE, {"metadata": {"labels": {"x": "y"}}})) == 403
    assert _refused(lambda: as_run.create_namespaced_pod(NAMESPACE, pod("exec-b", run_b))) == 403
    assert _refused(lambda: as_run.create_namespaced_pod(NAMESPACE, pod("unlabelled"))) == 403
    # An account with rights (the control plane's, or dpe-run itself) is not lent to a pod it makes.
    for account in ("dagster", "dpe-run"):
        assert _refused(lambda: as_run.create_namespaced_pod(NAMESPACE, pod(f"as-{account}", run_a, account))) == 403
    # RBAC: no node, secret or cluster-wide rights.
    assert _refused(lambda: as_run.list_node()) == 403
    assert _refused(lambda: as_run.patch_node("any", {"spec": {"unschedulable": True}})) == 403
    assert _refused(lambda: as_run.list_namespaced_secret(NAMESPACE)) == 403
    assert _refused(lambda: as_run.list_pod_for_all_namespaces()) == 403
    assert _refused(lambda: as_run.create_namespaced_pod("default", pod("elsewhere", run_a))) == 403
    # Nothing it tried happened.
    core = kube.core()
    assert core.read_namespaced_pod(other, NAMESPACE).metadata.labels == {"dagster/run-id": run_b}
    assert {p.metadata.name for p in core.list_namespaced_pod(NAMESPACE).items} == {
        f"dagster-run-{run_a}-x7k2p", other}
