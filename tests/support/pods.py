"""Containers as pods on the real control plane (tests/containers/, tests/usage/): eks-sim's pools in
the AWS emulator, their instances joining the session's cluster as EKS nodes whose pods the stand-in
kubelet runs as local processes (tests/cluster/sandbox.py), a Dagster instance, the kubeconfig of the
run pod's own ServiceAccount (the identity the `containers` resource has in production: it runs in
the run pod), and a record of every pod the API server admits in the namespace.

`PodAdmissions` is a validating admission webhook (the API server's own extension point, called
while it handles a request, before the pod is stored): it sees each pod as the API server admits it
(after defaulting, in the API's JSON), who deleted a pod and what the pod was then (its node, its
phase), and it can run a test's callback at the moment a pod is created (the state of the world the
pod's creation found). It allows everything.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from dagster import Definitions, define_asset_job, instance_for_test
from dagster._core.utils import make_new_run_id

from dpe_dagster.pools import open_pool
from dpe_dagster.pools.aws.emulator import emulated_aws
from resources import repository_environment
from tests.cluster.control_plane import ISSUER, write_kubeconfig
from tests.cluster.kubelet import _self_signed
from tests.cluster.sandbox import eks_sandbox
from tests.support.aws import empty_pools
from tests.support.cluster import cluster, kept, kube, wait_for  # noqa: F401  (fixtures)

__all__ = ["eks_sim", "instance", "pools", "run_pod", "RunPod", "admissions", "cluster", "kube", "PodAdmissions",
           "RUN_ACCOUNT", "RUN_USER", "pool_of_node", "scheduling_events"]

NAMESPACE = "dagster"
RUN_ACCOUNT = "dpe-run"  # deploy/k8s/rbac.yaml: the run pods' own ServiceAccount
RUN_USER = f"system:serviceaccount:{NAMESPACE}:{RUN_ACCOUNT}"
WEBHOOK = "dpe-test-pod-admissions"


@pytest.fixture(scope="module")
def eks_sim(cluster, tmp_path_factory):
    """eks-sim's environment, its groups in an emulator of their own, on the session's cluster; nodes
    join as instances launch and the stand-in kubelet runs their pods: (env, the sandbox)."""
    env = repository_environment("eks-sim")
    with emulated_aws(env), eks_sandbox(env, cluster=cluster, workdir=tmp_path_factory.mktemp("eks-sim-pods"),
                                        boot_s=0.5, run_pods=True) as sandbox, kept(cluster):
        yield env, sandbox


@pytest.fixture
def instance(eks_sim, kube, tmp_path, monkeypatch):
    """A Dagster instance; every pool of eks-sim empty and its nodes gone; this process talks to
    the cluster as the control plane's ServiceAccount (the autoscaler's identity, as deployed)."""
    env, sandbox = eks_sim
    (tmp_path / "dagster").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("KUBECONFIG", str(sandbox.kubeconfig))
    empty_pools(env)
    core = kube.core()
    wait_for("no node of eks-sim's pools left",
             lambda: not core.list_node(label_selector="dpe.io/pool").items, timeout_s=30)
    with instance_for_test(temp_dir=str(tmp_path / "dagster")) as inst:
        yield inst


@pytest.fixture
def pools(eks_sim, instance):
    env, _ = eks_sim
    return {name: open_pool(config, env) for name, config in env.pools.items()}


@dataclass
class RunPod:
    """A run's pod as dagster-k8s makes it (named for the run, running as `dpe-run`) and a token
    bound to it, as the kubelet projects one: who a run's code is to the API server (the admission
    policy of deploy/k8s reads the pod's name). `materialize` runs assets as that run."""

    run_id: str
    kubeconfig: Path

    @property
    def pod_name(self) -> str:
        return f"dagster-run-{self.run_id}-x7k2p"

    def materialize(self, assets, resources: dict | None = None, **kwargs):
        """`dagster.materialize`, as the run this pod is for."""
        defs = Definitions(jobs=[define_asset_job("__ephemeral_asset_job__")], assets=assets, resources=resources or {})
        return defs.resolve_job_def("__ephemeral_asset_job__").execute_in_process(run_id=self.run_id, **kwargs)


@pytest.fixture
def run_pod(eks_sim, kube, tmp_path) -> RunPod:
    """The `containers` resource talks to the API server as the run pod it runs in."""
    from kubernetes import client

    run_id = make_new_run_id()
    core = kube.core()
    pod = core.create_namespaced_pod(NAMESPACE, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": RunPod(run_id, Path()).pod_name, "labels": {"dagster/run-id": run_id}},
        "spec": {"serviceAccountName": RUN_ACCOUNT, "containers": [{"name": "dagster", "image": "dpe:1"}]}})
    token = core.create_namespaced_service_account_token(RUN_ACCOUNT, NAMESPACE, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[ISSUER], expiration_seconds=3600,
                                       bound_object_ref=client.V1BoundObjectReference(
                                           kind="Pod", api_version="v1", name=pod.metadata.name,
                                           uid=pod.metadata.uid)))).status.token
    return RunPod(run_id, write_kubeconfig(tmp_path / "run-pod.kubeconfig", kube.url, kube.ca_file, token,
                                           user=f"{NAMESPACE}:{RUN_ACCOUNT}"))


@pytest.fixture
def admissions(eks_sim, kube, run_pod, tmp_path):
    with PodAdmissions(kube, NAMESPACE, tmp_path / "admissions") as recorder:
        yield recorder
    assert recorder.errors == [], recorder.errors


# -- what the API server admits ----------------------------------------------------------------------
@dataclass
class Deletion:
    name: str
    user: str  # who asked (the request's authenticated user)
    pod: dict  # the pod as it was when the deletion was asked


@dataclass
class PodAdmissions:
    """Pods created and deleted in `namespace`, as a validating admission webhook sees them."""

    cluster: Any
    namespace: str
    workdir: Path
    created: list[dict] = field(default_factory=list)
    deletions: list[Deletion] = field(default_factory=list)
    on_create: Callable[[dict], None] | None = None  # called while the API server holds the create
    errors: list[str] = field(default_factory=list)
    _probes: set[str] = field(default_factory=set)

    def deleted_by(self, user: str) -> list[str]:
        """The pods `user` asked to delete, in order (once each)."""
        names: list[str] = []
        for deletion in self.deletions:
            if deletion.user == user and deletion.name not in names:
                names.append(deletion.name)
        return names

    def last_seen(self, name: str) -> dict:
        """The pod as it was when its deletion was first asked for."""
        return next(d.pod for d in self.deletions if d.name == name)

    # -- the webhook ---------------------------------------------------------------------------------
    def _review(self, review: dict) -> dict:
        request = review["request"]
        operation, name = request["operation"], request.get("name") or ""
        pod = request.get("object") if operation == "CREATE" else request.get("oldObject")
        name = name or ((pod or {}).get("metadata") or {}).get("name", "")
        if request.get("dryRun"):
            self._probes.add(name)
        elif operation == "CREATE":
            self.created.append(pod)
            if self.on_create is not None:
                try:
                    self.on_create(pod)
                except Exception as error:  # noqa: BLE001 - the test sees it (errors), the pod is admitted
                    self.errors.append(f"on_create({name}): {type(error).__name__}: {error}")
        elif operation == "DELETE":
            self.deletions.append(Deletion(name, request["userInfo"]["username"], pod or {}))
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": request["uid"], "allowed": True}}

    def _server(self) -> http.server.ThreadingHTTPServer:
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    answer = json.dumps(recorder._review(json.loads(body))).encode()
                except Exception as error:  # noqa: BLE001
                    recorder.errors.append(f"webhook: {type(error).__name__}: {error}")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        cert, key = _self_signed(self.workdir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._ca = cert.read_bytes()
        return server

    def _probe_reaches_me(self) -> bool:
        """A dry-run pod creation (nothing is stored): True when the API server asked this webhook."""
        name = f"dpe-admission-probe-{time.monotonic_ns()}"
        with contextlib.suppress(Exception):
            self.cluster.core().create_namespaced_pod(self.namespace, {
                "metadata": {"name": name}, "spec": {"containers": [{"name": "probe", "image": "probe"}]}},
                dry_run="All")
        return name in self._probes

    def __enter__(self) -> "PodAdmissions":
        from kubernetes import client

        self._http = self._server()
        threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.2}, name="pod-admissions",
                         daemon=True).start()
        self._api = client.AdmissionregistrationV1Api(self.cluster.api_client())
        with contextlib.suppress(client.ApiException):
            self._api.delete_validating_webhook_configuration(WEBHOOK)
        self._api.create_validating_webhook_configuration({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK},
            "webhooks": [{
                "name": "pods.admissions.dpe.test",
                "clientConfig": {"url": f"https://127.0.0.1:{self._http.server_address[1]}/pods",
                                 "caBundle": base64.b64encode(self._ca).decode()},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "DELETE"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}},
                "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 30,
            }],
        })
        try:
            wait_for("the API server calling the admission webhook", self._probe_reaches_me, timeout_s=30,
                     interval_s=0.2)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        from kubernetes import client

        with contextlib.suppress(client.ApiException):
            self._api.delete_validating_webhook_configuration(WEBHOOK)
        # The API server lets go of the webhook before it stops answering (failurePolicy: Fail).
        with contextlib.suppress(AssertionError):
            wait_for("the API server no longer calling the admission webhook", lambda: not self._probe_reaches_me(),
                     timeout_s=30, interval_s=0.2)
        self._http.shutdown()


# -- what a user looks at -------------------------------------------------------------------------------
def pool_of_node(core, node_name: str) -> tuple[str, str]:
    """(the node's pool label, the EC2 instance id of its providerID)."""
    node = core.read_node(node_name)
    return node.metadata.labels.get("dpe.io/pool"), node.spec.provider_id.rsplit("/", 1)[-1]


def scheduling_events(core, pod_name: str, namespace: str = NAMESPACE) -> list[tuple[str, str]]:
    """(reason, message) of the scheduler's events about this pod (they outlive the pod)."""
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod_name}").items
    return [(e.reason, e.message or "") for e in events
            if (e.source and e.source.component == "default-scheduler") or e.reporting_component == "default-scheduler"]
