"""Run pods run as their own ServiceAccount, with only what a run worker needs. Checked on the real
control plane as eks-sim deploys it (tests/support/k8s_runs.py: deploy/k8s/ and the Dagster chart's
ServiceAccount, Role and RoleBinding, applied to the API server): the API server itself says what
each account may do (SubjectAccessReview) and refuses their tokens what they may not (HTTP 403);
the shipped manifests pass its strict validation; the Helm values use the accounts; the launcher
pins every run's pod to its account whatever else asks, and the token that pod gets can make the
run's executors and read no node. (What a run pod may do to other runs' pods, the admission
policy of deploy/k8s/run-pods-policy.yaml: tests/deploy/test_run_pod_rights.py.)"""

from __future__ import annotations

import json

import pytest
import yaml
from kubernetes import client

from dpe_dagster.launch.k8s import RUN_SERVICE_ACCOUNT
from dpe_dagster.tags import POOL_TAG
from tests.support.cluster import wait_for
from tests.support.deploy import DEPLOY
from tests.support.k8s_runs import cluster, eks_sim, instance, jobs, kube, launch, make_run  # noqa: F401 (fixtures)

CONTROL_PLANE = "dagster"
NAMESPACE = "dagster"


def manifests() -> list[dict]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
            if doc]


def dry_run_apply(kube, document: dict) -> None:
    """`kubectl apply --server-side --dry-run=server --validate=strict`: the API server validates
    the object (schema, unknown fields, admission) and stores nothing."""
    from kubernetes.dynamic import DynamicClient

    api = DynamicClient(kube.api_client())
    meta = document["metadata"]
    path = api.resources.get(api_version=document["apiVersion"], kind=document["kind"]).path(
        name=meta["name"], namespace=meta.get("namespace"))
    api.client.call_api(path, "PATCH", body=document, auth_settings=["BearerToken"], _preload_content=False,
                        query_params=[("dryRun", "All"), ("fieldManager", "dpe-tests"), ("force", "true"),
                                      ("fieldValidation", "Strict")],
                        header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"})


def may(kube, account: str, verb: str, resource: str, namespace: str | None = None, group: str = "",
        subresource: str | None = None) -> bool:
    """What the API server's authorizer answers for this ServiceAccount of `dagster` (the user and
    groups its tokens authenticate as). `namespace` None: cluster-wide."""
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=f"system:serviceaccount:{NAMESPACE}:{account}",
        groups=["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}", "system:authenticated"],
        resource_attributes=client.V1ResourceAttributes(verb=verb, resource=resource, group=group,
                                                        namespace=namespace, subresource=subresource)))
    return client.AuthorizationV1Api(kube.api_client()).create_subject_access_review(review).status.allowed


def refused(call) -> bool:
    """True when the API server answers the call 403 Forbidden."""
    try:
        call()
    except client.ApiException as error:
        if error.status == 403:
            return True
        raise
    return False


def test_the_shipped_manifests_validate_and_the_run_account_has_no_cloud_role(eks_sim, kube):
    for document in manifests():
        dry_run_apply(kube, document)
    # The validation is strict: a misspelt field is refused.
    [run_role] = [d for d in manifests() if d["kind"] == "Role" and d["metadata"]["name"] == RUN_SERVICE_ACCOUNT]
    with pytest.raises(client.ApiException) as refusal:
        dry_run_apply(kube, {**run_role, "rule": run_role["rules"]})
    assert ".rule: field not declared in schema" in refusal.value.body, refusal.value.body

    core = kube.core()
    account = core.read_namespaced_service_account(RUN_SERVICE_ACCOUNT, NAMESPACE)
    assert not any("eks.amazonaws.com" in key for key in (account.metadata.annotations or {}))
    # The cloud role (IRSA) is the control plane's only, as the chart makes its account from the values.
    control_plane = core.read_namespaced_service_account(CONTROL_PLANE, NAMESPACE)
    assert "eks.amazonaws.com/role-arn" in control_plane.metadata.annotations
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert values["serviceAccount"]["name"] == CONTROL_PLANE
    launcher = values["runLauncher"]["config"]["customRunLauncher"]["config"]
    assert launcher["service_account_name"] == RUN_SERVICE_ACCOUNT


def test_run_pods_may_run_spark_and_container_pods_but_not_touch_nodes_or_secrets_or_the_cluster(eks_sim, kube):
    run = RUN_SERVICE_ACCOUNT
    # What the run worker does: Spark's driver manages its executors, a container asset its pod.
    for verb in ("create", "get", "list", "watch", "delete"):
        assert may(kube, run, verb, "pods", NAMESPACE), f"run pods must be able to {verb} pods"
    assert may(kube, run, "get", "pods", NAMESPACE, subresource="log")
    # Nothing on nodes, no secrets, nothing cluster-wide or in another namespace.
    for verb in ("get", "list", "watch", "patch", "update", "delete"):
        assert not may(kube, run, verb, "nodes"), f"run pods must not {verb} nodes"
        assert not may(kube, run, verb, "secrets", NAMESPACE), f"run pods must not {verb} secrets"
    assert not may(kube, run, "list", "pods")  # across namespaces
    assert not may(kube, run, "create", "pods", "default")
    assert not may(kube, run, "create", "pods", "kube-system")
    assert not may(kube, run, "*", "*")
    assert not may(kube, run, "list", "namespaces")
    assert not may(kube, run, "create", "jobs", NAMESPACE, group="batch")

    # A token of the account: the API server refuses it what RBAC does not grant.
    as_run = kube.core(kube.token_for(NAMESPACE, run))
    assert refused(as_run.list_node)
    assert refused(lambda: as_run.patch_node("any-node", {"spec": {"unschedulable": True}}))
    assert refused(lambda: as_run.list_namespaced_secret(NAMESPACE))
    assert refused(lambda: as_run.read_namespaced_secret("dagster-postgresql-secret", NAMESPACE))
    assert refused(as_run.list_pod_for_all_namespaces)
    assert refused(lambda: as_run.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "elsewhere"},
        "spec": {"containers": [{"name": "main", "image": "dpe:eks-sim"}]}}))


def test_the_control_plane_account_reads_and_cordons_nodes_and_creates_run_jobs(eks_sim, kube):
    for verb in ("get", "list", "patch"):
        assert may(kube, CONTROL_PLANE, verb, "nodes"), f"the control plane must {verb} nodes"
    assert may(kube, CONTROL_PLANE, "list", "pods")  # across namespaces: busy nodes
    assert may(kube, CONTROL_PLANE, "create", "jobs", NAMESPACE, group="batch")
    assert not may(kube, CONTROL_PLANE, "create", "jobs", "default", group="batch")

    # With its own token: cordon a node, see the pods of the whole cluster.
    kube.core().create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ip-10-0-3-1.ec2.internal"}})
    as_control_plane = kube.core(kube.token_for(NAMESPACE, CONTROL_PLANE))
    as_control_plane.patch_node("ip-10-0-3-1.ec2.internal", {"spec": {"unschedulable": True}})
    assert kube.core().read_node("ip-10-0-3-1.ec2.internal").spec.unschedulable is True
    assert "ip-10-0-3-1.ec2.internal" in [n.metadata.name for n in as_control_plane.list_node().items]
    as_control_plane.list_pod_for_all_namespaces()


def pod_token(kube, pod) -> str:
    """The token the kubelet projects into this pod: its ServiceAccount's, bound to the pod."""
    from tests.cluster.control_plane import ISSUER

    return kube.core().create_namespaced_service_account_token(
        pod.spec.service_account_name, NAMESPACE, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[ISSUER], expiration_seconds=600, bound_object_ref=client.V1BoundObjectReference(
                kind="Pod", api_version="v1", name=pod.metadata.name, uid=pod.metadata.uid)))).status.token


def test_the_launcher_pins_the_run_pod_to_its_account_over_a_runs_own_k8s_config(eks_sim, instance, kube):
    asks_for_control_plane = {"dagster-k8s/config": json.dumps({"pod_spec_config": {"service_account_name": CONTROL_PLANE}})}
    core = kube.core()
    for tags in ({POOL_TAG: "spot-etl"}, {POOL_TAG: "spot-etl", **asks_for_control_plane}, asks_for_control_plane):
        run = make_run(instance, tags)
        launch(instance, run)
        [job] = [job for job in jobs(kube) if job["metadata"]["name"] == f"dagster-run-{run.run_id}"]
        assert job["spec"]["template"]["spec"]["serviceAccountName"] == RUN_SERVICE_ACCOUNT, tags
        # The pod the Job controller made runs as it.
        pod = wait_for("the run's pod", lambda: core.list_namespaced_pod(
            NAMESPACE, label_selector=f"dagster/run-id={run.run_id}").items)[0]
        assert pod.spec.service_account_name == RUN_SERVICE_ACCOUNT, tags

    # With the token its pod gets, the run makes its Spark executor, and reads no node.
    as_run_pod = kube.core(pod_token(kube, pod))
    as_run_pod.create_namespaced_pod(NAMESPACE, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{pod.metadata.name}-exec-1", "labels": {"dagster/run-id": run.run_id}},
        "spec": {"serviceAccountName": "dpe-spark-executor",
                 "containers": [{"name": "spark-executor", "image": "dpe:eks-sim"}]}})
    assert as_run_pod.read_namespaced_pod(f"{pod.metadata.name}-exec-1", NAMESPACE).metadata.labels[
        "dagster/run-id"] == run.run_id
    as_run_pod.delete_namespaced_pod(f"{pod.metadata.name}-exec-1", NAMESPACE, grace_period_seconds=0)
    assert refused(as_run_pod.list_node)
