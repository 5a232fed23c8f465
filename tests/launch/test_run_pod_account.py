"""Run pods run as their own ServiceAccount, with only what a run worker needs: the shipped RBAC
(validated as the API would) grants it no node or secret rights and no cloud role, the Helm values
use it, and the launcher pins every run's pod to it whatever else asks."""

from __future__ import annotations

import json

import kubernetes_validate
import yaml

from dpe_dagster.launch.k8s import RUN_SERVICE_ACCOUNT
from dpe_dagster.tags import POOL_TAG
from tests.fakes.kube_api import K8S_VERSION
from tests.support.deploy import DEPLOY
from tests.support.k8s_runs import instance, kube_api, launch, make_run, sim  # noqa: F401 (fixtures)

CONTROL_PLANE = "dagster"


def manifests() -> list[dict]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
            if doc]


def rules_bound_to(account: str) -> list[dict]:
    """Every RBAC rule any binding in deploy/k8s gives `account`."""
    docs = manifests()
    roles = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs if doc["kind"] in ("Role", "ClusterRole")}
    rules = []
    for doc in docs:
        if doc["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in doc["subjects"]):
            rules += roles[(doc["roleRef"]["kind"], doc["roleRef"]["name"])]["rules"]
    return rules


def grants(rules: list[dict], resource: str, verb: str) -> bool:
    return any(resource in rule["resources"] and (verb in rule["verbs"] or "*" in rule["verbs"]) for rule in rules)


def test_the_run_account_exists_validates_and_has_no_cloud_role():
    for doc in manifests():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    [account] = [d for d in manifests() if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == RUN_SERVICE_ACCOUNT]
    assert account["metadata"]["namespace"] == "dagster"
    assert not any("eks.amazonaws.com" in key for key in account["metadata"].get("annotations", {}))
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert values["serviceAccount"]["name"] == CONTROL_PLANE  # the IRSA role is the control plane's only
    launcher = values["runLauncher"]["config"]["customRunLauncher"]["config"]
    assert launcher["service_account_name"] == RUN_SERVICE_ACCOUNT


def test_run_pods_may_not_touch_nodes_or_secrets_but_can_run_spark_and_container_pods():
    run = rules_bound_to(RUN_SERVICE_ACCOUNT)
    for verb in ("get", "list", "watch", "patch", "update", "delete"):
        assert not grants(run, "nodes", verb), f"run pods must not {verb} nodes"
        assert not grants(run, "secrets", verb), f"run pods must not {verb} secrets"
    assert not any(doc["kind"] == "ClusterRoleBinding" and any(s["name"] == RUN_SERVICE_ACCOUNT for s in doc["subjects"])
                   for doc in manifests()), "no cluster-wide rights for run pods"
    # What the run worker does: Spark's driver manages its executors, a container asset its pod.
    for verb in ("create", "get", "watch", "delete"):
        assert grants(run, "pods", verb)
    assert grants(run, "pods/log", "get")
    # The control plane keeps what only it needs: cordoning nodes.
    assert grants(rules_bound_to(CONTROL_PLANE), "nodes", "patch")


def test_the_launcher_pins_the_run_pod_to_its_account_over_a_runs_own_k8s_config(sim, instance, kube_api):
    asks_for_control_plane = {"dagster-k8s/config": json.dumps({"pod_spec_config": {"service_account_name": CONTROL_PLANE}})}
    for tags in ({POOL_TAG: "spot-etl"}, {POOL_TAG: "spot-etl", **asks_for_control_plane}, asks_for_control_plane):
        launch(instance, make_run(instance, tags))
        job = kube_api.jobs[-1]
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        assert job["spec"]["template"]["spec"]["serviceAccountName"] == RUN_SERVICE_ACCOUNT, tags
