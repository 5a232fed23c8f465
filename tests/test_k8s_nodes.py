"""Busy nodes, instance-id mapping and cordoning, through the real kubernetes client.

No Kubernetes API server can run on this machine, so `LoopbackKubeApi` serves Kubernetes-format
JSON (Node, Pod and Job objects as an EKS cluster returns them) over HTTP on 127.0.0.1 and applies
the few writes dpe makes (merge-patching a node, creating a Job) the way the API server does.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from dpe_dagster.kube.nodes import KubeNodes, instance_id

TS = "2026-11-24T02:00:00Z"


class LoopbackKubeApi:
    """Nodes and pods to read, node patches and Job creations to record."""

    def __init__(self):
        self.nodes: dict[str, dict] = {}
        self.pods: list[dict] = []
        self.jobs: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.on_patch = None  # callable(node_name): lets a test land a pod during a cordon
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self, what: str):
                self._send(404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                 "message": f"{what} not found", "reason": "NotFound", "code": 404})

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                api.requests.append(("GET", self.path))
                if url.path == "/api/v1/nodes":
                    items = [n for n in api.nodes.values() if _labels_match(n, query.get("labelSelector"))]
                    self._send(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                                     "items": items})
                elif url.path == "/api/v1/pods":
                    items = [p for p in api.pods if _fields_match(p, query.get("fieldSelector"))]
                    self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                                     "items": items})
                else:
                    self._not_found(url.path)

            def do_PATCH(self):
                name = self.path.split("?")[0].removeprefix("/api/v1/nodes/")
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                api.requests.append(("PATCH", self.path))
                if name not in api.nodes:
                    return self._not_found(f'nodes "{name}"')
                _merge(api.nodes[name], body)
                if api.on_patch:
                    api.on_patch(name)
                self._send(200, api.nodes[name])

            def do_POST(self):
                path = self.path.split("?")[0]
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                api.requests.append(("POST", self.path))
                if path.startswith("/apis/batch/v1/namespaces/") and path.endswith("/jobs"):
                    created = copy.deepcopy(body)
                    created["metadata"].update(namespace=path.split("/")[5], uid="0b8e-test", resourceVersion="7",
                                               creationTimestamp=TS)
                    api.jobs.append(body)
                    self._send(201, created)
                else:
                    self._not_found(path)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_node(self, name: str, instance: str, zone: str = "us-east-1a", labels: dict | None = None,
                 ready: bool = True) -> None:
        self.nodes[name] = {
            "kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": TS,
                         "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone,
                                    "node.kubernetes.io/instance-type": "m6i.large", **(labels or {})}},
            "spec": {"providerID": f"aws:///{zone}/{instance}"},
            "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": TS, "lastTransitionTime": TS,
                 "reason": "KubeletHasSufficientMemory", "message": "ok"},
                {"type": "Ready", "status": "True" if ready else "False", "lastHeartbeatTime": TS,
                 "lastTransitionTime": TS, "reason": "KubeletReady" if ready else "KubeletNotReady", "message": ""},
            ]},
        }

    def add_pod(self, name: str, node: str, owner_kind: str | None = "Job", phase: str = "Running",
                namespace: str = "dagster", mirror: bool = False) -> None:
        metadata = {"name": name, "namespace": namespace, "uid": f"uid-{name}", "creationTimestamp": TS}
        if owner_kind:
            metadata["ownerReferences"] = [{"apiVersion": "apps/v1" if owner_kind == "DaemonSet" else "batch/v1",
                                            "kind": owner_kind, "name": f"{name}-owner", "uid": f"uid-o-{name}",
                                            "controller": True}]
        if mirror:
            metadata["annotations"] = {"kubernetes.io/config.mirror": "abc123"}
        self.pods.append({"kind": "Pod", "apiVersion": "v1", "metadata": metadata,
                          "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
                          "status": {"phase": phase}})

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "loopback",
            "clusters": [{"name": "loopback", "cluster": {"server": self.url}}],
            "contexts": [{"name": "loopback", "context": {"cluster": "loopback", "user": "dpe"}}],
            "users": [{"name": "dpe", "user": {"token": "not-a-secret"}}],
        }))
        return path

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _merge(target: dict, patch: dict) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif value is None:
            target.pop(key, None)
        else:
            target[key] = value


def _labels_match(obj: dict, selector: str | None) -> bool:
    labels = obj["metadata"].get("labels", {})
    return all(labels.get(k) == v for k, v in (t.split("=", 1) for t in (selector or "").split(",") if t))


def _fields_match(pod: dict, selector: str | None) -> bool:
    values = {"spec.nodeName": pod["spec"].get("nodeName"), "status.phase": pod["status"].get("phase")}
    for term in (selector or "").split(","):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if values.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if values.get(key) != value:
                return False
    return True


@pytest.fixture
def kube_api():
    api = LoopbackKubeApi()
    yield api
    api.close()


def core_api(url: str):
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = url
    return client.CoreV1Api(client.ApiClient(configuration))


def test_instance_ids_come_from_provider_ids():
    assert instance_id("aws:///us-east-1a/i-0123456789abcdef0") == "i-0123456789abcdef0"
    assert instance_id("gce://project/zone/name") is None
    assert instance_id(None) is None


def test_node_with_only_daemonset_mirror_or_finished_pods_is_idle_any_other_pod_makes_it_busy(kube_api):
    kube_api.add_node("ip-10-0-1-1", "i-000000000000000a1")
    kube_api.add_node("ip-10-0-1-2", "i-000000000000000a2")
    kube_api.add_node("ip-10-0-1-3", "i-000000000000000a3", ready=False)
    for node in ("ip-10-0-1-1", "ip-10-0-1-2"):
        kube_api.add_pod(f"aws-node-{node}", node, owner_kind="DaemonSet", namespace="kube-system")
        kube_api.add_pod(f"kube-proxy-{node}", node, owner_kind="DaemonSet", namespace="kube-system")
    kube_api.add_pod("static-etcd", "ip-10-0-1-1", owner_kind="Node", mirror=True, namespace="kube-system")
    kube_api.add_pod("dagster-run-done", "ip-10-0-1-1", phase="Succeeded")
    kube_api.add_pod("dagster-run-0f3a", "ip-10-0-1-2")
    kube = KubeNodes(core_api(kube_api.url))
    busy = kube.busy_by_instance(["i-000000000000000a1", "i-000000000000000a2", "i-000000000000000a3",
                                  "i-000000000000000ff"])
    assert busy == {
        "i-000000000000000a1": (True, False),   # daemons, a static pod and a finished run only
        "i-000000000000000a2": (True, True),    # a run's pod
        "i-000000000000000a3": (False, False),  # NotReady: cannot take work yet
        "i-000000000000000ff": (False, False),  # booted, not joined the cluster yet
    }
    # A bare pod with no owner (someone's kubectl run) holds work too.
    kube_api.add_pod("debug-shell", "ip-10-0-1-1", owner_kind=None)
    assert kube.busy_by_instance(["i-000000000000000a1"]) == {"i-000000000000000a1": (True, True)}


def test_cordon_makes_the_node_unschedulable_and_not_ready_for_work(kube_api):
    kube_api.add_node("ip-10-0-1-1", "i-000000000000000a1", labels={"dpe.io/pool": "spot-etl"})
    kube_api.add_node("ip-10-0-9-9", "i-000000000000000b1", labels={"dpe.io/pool": "other"})
    kube = KubeNodes(core_api(kube_api.url), label_selector="dpe.io/pool=spot-etl")
    assert set(kube.nodes_by_instance()) == {"i-000000000000000a1"}
    assert kube.cordon_instances(["i-000000000000000a1", "i-000000000000000b1"]) == ["ip-10-0-1-1"]
    assert kube_api.nodes["ip-10-0-1-1"]["spec"]["unschedulable"] is True
    assert "unschedulable" not in kube_api.nodes["ip-10-0-9-9"]["spec"]
    assert kube.busy_by_instance(["i-000000000000000a1"]) == {"i-000000000000000a1": (False, False)}
    kube.cordon_instances(["i-000000000000000a1"], False)
    assert kube_api.nodes["ip-10-0-1-1"]["spec"]["unschedulable"] is False


# -- the aws_asg pool with busy-ness from Kubernetes -------------------------------------------
@pytest.fixture
def kube_pool(aws, kube_api, tmp_path, monkeypatch):
    from test_aws_asg import clients, environment

    from dpe_dagster.pools import open_pool
    from dpe_dagster.pools.aws_emulator import create_groups

    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    env = environment(aws.url, labels={"dpe.io/pool": "spot-etl"},
                      settings={"group_name": "test-spot", "busy_source": "kubernetes"})
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    pool = open_pool(env.pool("spot-etl"), env)
    pool.set_target(2)
    ids = sorted(n.id for n in pool.nodes())
    for i, iid in enumerate(ids):
        kube_api.add_node(f"ip-10-0-2-{i}", iid, labels={"dpe.io/pool": "spot-etl"})
        kube_api.add_pod(f"aws-node-{i}", f"ip-10-0-2-{i}", owner_kind="DaemonSet", namespace="kube-system")
    return pool, ids, ec2


from test_aws_asg import aws, moto  # noqa: E402,F401  (fixtures)


def test_pool_cordons_an_idle_node_before_terminating_its_instance(kube_pool, kube_api):
    from test_aws_asg import ec2_states

    pool, (idle, busy), ec2 = kube_pool
    kube_api.add_pod("dagster-run-1", "ip-10-0-2-1")
    nodes = {n.id: n for n in pool.nodes()}
    assert (nodes[idle].busy, nodes[busy].busy) == (False, True)
    assert nodes[idle].state == nodes[busy].state == "running"

    pool.remove_nodes([idle])
    patches = [i for i, r in enumerate(kube_api.requests) if r == ("PATCH", "/api/v1/nodes/ip-10-0-2-0")]
    assert patches and kube_api.nodes["ip-10-0-2-0"]["spec"]["unschedulable"] is True
    assert ec2_states(ec2, [idle])[idle] in ("shutting-down", "terminated")
    assert pool.target() == 1

    from dpe_dagster.pools import PoolError

    with pytest.raises(PoolError, match="refusing to remove busy node"):
        pool.remove_nodes([busy])
    assert ec2_states(ec2, [busy])[busy] == "running"
    assert "unschedulable" not in kube_api.nodes["ip-10-0-2-1"]["spec"]


def test_node_that_takes_work_while_being_cordoned_is_uncordoned_and_kept(kube_pool, kube_api):
    from test_aws_asg import ec2_states

    from dpe_dagster.pools import PoolError

    pool, (first, _), ec2 = kube_pool
    # The scheduler binds a pod to the node in the instant between dpe's check and its cordon.
    def bind_a_pod_as_it_is_cordoned(name):
        if kube_api.nodes[name]["spec"].get("unschedulable") and not any(
                p["metadata"]["name"] == "late-run" for p in kube_api.pods):
            kube_api.add_pod("late-run", name)

    kube_api.on_patch = bind_a_pod_as_it_is_cordoned
    with pytest.raises(PoolError, match="took work while being cordoned"):
        pool.remove_nodes([first])
    assert kube_api.nodes["ip-10-0-2-0"]["spec"]["unschedulable"] is False
    assert ec2_states(ec2, [first])[first] == "running" and pool.target() == 2


def test_unreachable_kubernetes_api_means_every_node_counts_as_busy(kube_pool, kube_api):
    pool, ids, ec2 = kube_pool
    kube_api.close()
    time.sleep(0.1)
    assert all(n.busy for n in pool.nodes())
    from dpe_dagster.pools import PoolError

    with pytest.raises(PoolError, match="refusing to remove busy node"):
        pool.remove_nodes(ids[:1])
