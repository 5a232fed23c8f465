"""A Kubernetes-format API on loopback, for the tests: no Kubernetes API server can run on this machine.

`LoopbackKubeApi` serves Kubernetes-format JSON (Node, Pod and Job objects as an EKS cluster returns
them) over HTTP on 127.0.0.1 and applies the few writes dpe makes (merge-patching a node, creating a
Job) the way the API server does.

`LoopbackPodApi` is `LoopbackKubeApi` plus the pod calls dagster-k8s's `PipesK8sClient` makes,
and a stand-in kubelet: `bind(pod)` puts a pod on a node and runs its container's command as a
local process with the container's environment (so Dagster Pipes really talks through the pod's
log), then reports the container terminated with the process's exit code. A pod never bound stays
Pending and Unschedulable, as on a cluster whose pool does not grow.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

# The Kubernetes version this API speaks, and that manifests are validated against (kubernetes-validate).
K8S_VERSION = "1.30.0"

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


def _stamp(i: int) -> str:
    start = datetime(2026, 11, 24, 2, 0, 0, tzinfo=timezone.utc)
    return (start + timedelta(microseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LoopbackPodApi(LoopbackKubeApi):
    def __init__(self):
        super().__init__()
        self.created: list[dict] = []  # pod bodies as the client sent them
        self.live_pods: dict[str, dict] = {}
        self.logs: dict[str, str] = {}
        self.deleted: list[str] = []
        self.on_create = None  # callable(pod body), called before the API answers
        api = self
        base = self.server.RequestHandlerClass

        class PodHandler(base):
            def _pod_path(self):
                url = urllib.parse.urlparse(self.path)
                parts = url.path.strip("/").split("/")
                # api/v1/namespaces/<ns>/pods[/<name>[/log]]
                if parts[:3] == ["api", "v1", "namespaces"] and len(parts) >= 5 and parts[4] == "pods":
                    query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                    return parts[3], (parts[5] if len(parts) > 5 else None), parts[6:], query
                return None

            def do_GET(self):
                found = self._pod_path()
                if found is None:
                    return super().do_GET()
                namespace, name, rest, query = found
                api.requests.append(("GET", self.path))
                if name is None:
                    wanted = query.get("fieldSelector", "").removeprefix("metadata.name=")
                    items = [p for n, p in api.live_pods.items() if not wanted or n == wanted]
                    return self._send(200, {"kind": "PodList", "apiVersion": "v1",
                                            "metadata": {"resourceVersion": "9"}, "items": items})
                if name not in api.live_pods:
                    return self._not_found(f'pods "{name}"')
                if rest == ["log"]:
                    data = api.logs.get(name, "").encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self._send(200, api.live_pods[name])

            def do_POST(self):
                found = self._pod_path()
                if found is None:
                    return super().do_POST()
                namespace, _, _, _ = found
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                api.requests.append(("POST", self.path))
                api.created.append(copy.deepcopy(body))
                if api.on_create:
                    api.on_create(body)
                pod = copy.deepcopy(body)
                pod["metadata"].update(namespace=namespace, uid=f"uid-{pod['metadata']['name']}",
                                       resourceVersion="8", creationTimestamp=TS)
                pod["status"] = {"phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
                    "lastTransitionTime": TS}]}
                api.live_pods[pod["metadata"]["name"]] = pod
                self._send(201, pod)

            def do_DELETE(self):
                found = self._pod_path()
                if found is None:
                    return self._not_found(self.path)
                _, name, _, _ = found
                api.requests.append(("DELETE", self.path))
                pod = api.live_pods.pop(name, None)
                if pod is None:
                    return self._not_found(f'pods "{name}"')
                api.deleted.append(name)
                self._send(200, pod)

        self.server.RequestHandlerClass = PodHandler

    def bind(self, name: str, node: str = "ip-10-0-1-17.ec2.internal") -> int:
        """Schedule the pod on `node` and run its first container to the end; returns its exit code."""
        pod = self.live_pods[name]
        container = pod["spec"]["containers"][0]
        pod["spec"]["nodeName"] = node
        pod["status"] = {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True",
                                                              "lastTransitionTime": TS}]}
        env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
               **{e["name"]: e["value"] for e in container.get("env", [])}}
        done = subprocess.run([*container.get("command", []), *container.get("args", [])], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        lines = [line for line in done.stdout.splitlines() if line]
        self.logs[name] = "".join(f"{_stamp(i)} {line}\n" for i, line in enumerate(lines))
        state = {"terminated": {"exitCode": done.returncode, "reason": "Completed" if done.returncode == 0 else "Error",
                                "startedAt": TS, "finishedAt": TS}}
        pod["status"] = {"phase": "Succeeded" if done.returncode == 0 else "Failed", "containerStatuses": [{
            "name": container["name"], "image": container["image"], "imageID": "", "ready": False,
            "restartCount": 0, "state": state}]}
        return done.returncode

    def bind_later(self, name: str, delay_s: float) -> threading.Thread:
        thread = threading.Thread(target=lambda: (time.sleep(delay_s), self.bind(name)), daemon=True)
        thread.start()
        return thread
