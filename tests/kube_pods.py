"""Pods on the loopback Kubernetes-format API of test_k8s_nodes: create, read, list, logs, delete.

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
from pathlib import Path

from test_k8s_nodes import TS, LoopbackKubeApi


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
