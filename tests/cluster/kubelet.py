"""A stand-in kubelet: where a pod must really run, its command runs as a local process.

It plays the kubelet of the nodes annotated `dpe.test/kubelet: process` (tests/cluster/eks.py
makes them with `kubelet="process"`), against the real API server:

- the node: Ready, its lease renewed every few seconds (the node lifecycle controller sees it
  alive), its InternalIP 127.0.0.1 and its kubelet port, where the API server fetches logs;
- a pod bound to it: a DaemonSet's pod is reported running (nothing runs); any other pod's first
  container runs as a local process (`command` + `args`) with the container's environment, as
  the kubelet resolves it (values, field references, ConfigMap and Secret keys, `envFrom`), over
  the image's environment given to the stand-in. Its ServiceAccount's token (TokenRequest, as
  the kubelet projects it) reaches the process as a KUBECONFIG, not as an in-cluster mount. ConfigMap and
  Secret volumes are written under a folder of the pod's (`<workdir>/<pod uid>/root`): each
  mount path is mapped there, and an environment value that is a mounted path or a folder above
  one is rewritten to the mapped place (DAGSTER_HOME above a mounted dagster.yaml, for one). The
  phase and the container's state and exit code go back through the API, its output is the
  container's log (`/containerLogs/...`, with `follow`, `timestamps` and `sinceSeconds`);
- a pod being deleted: its process gets SIGTERM, SIGKILL after the grace period, and the pod
  object is deleted, as the kubelet finishes a deletion.

What it does not do: images (the command runs with this machine's programs), resource limits,
probes, restarts, init containers, other volume kinds, networking (every pod is 127.0.0.1), exec.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import logging
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpe_dagster.daemon import stop_process_group
from tests.cluster.background import Background
from tests.cluster.control_plane import ISSUER, ControlPlane, write_kubeconfig

log = logging.getLogger("tests.cluster.kubelet")
PROCESS_KUBELET = "process"
ANNOTATION = "dpe.test/kubelet"
HEARTBEAT_S = 2.0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Running:
    uid: str
    namespace: str
    name: str
    container: str
    process: subprocess.Popen | None
    # (when, in ns since the epoch, line): strictly increasing per container, as a container
    # runtime stamps its log (RFC 3339 with nanoseconds), so no two lines share a timestamp
    lines: list[tuple[int, str]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    deleting_since: float | None = None


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A serving certificate for 127.0.0.1 (the API server does not verify kubelets here: no
    --kubelet-certificate-authority, as on many clusters)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    import ipaddress

    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in-kubelet")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "kubelet.crt", folder / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class ProcessKubelet(Background):
    name = "stand-in kubelet"

    def __init__(self, cluster: ControlPlane, workdir: Path, image_env: dict[str, str] | None = None,
                 interval_s: float = 0.25, image_workdir: Path | None = None):
        # image_env and image_workdir: the image's ENV and WORKDIR (deploy/Dockerfile), as this machine has them.
        from kubernetes import client

        self.cluster = cluster
        self.core = cluster.core()
        self.coordination = client.CoordinationV1Api(cluster.api_client())
        self.workdir = Path(workdir)
        super().__init__(interval_s)
        self.image_env = dict(image_env or {})
        self.image_workdir = Path(image_workdir) if image_workdir else self.workdir
        self.pods: dict[str, _Running] = {}  # pod uid ->
        self._beats: dict[str, float] = {}
        self.silent: set[str] = set()
        self._server = self._log_server()

    # -- the log endpoint the API server proxies to ------------------------------------------------
    def _log_server(self) -> http.server.ThreadingHTTPServer:
        kubelet = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # chunked: a followed log streams while the process runs

            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                parts = url.path.strip("/").split("/")
                query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404)
                    return
                running = next((r for r in kubelet.pods.values() if (r.namespace, r.name) == (parts[1], parts[2])),
                               None)
                if running is None:
                    self.send_error(404, f"pod {parts[1]}/{parts[2]} is not on this kubelet")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                since = time.time() - float(query["sinceSeconds"]) if "sinceSeconds" in query else 0.0
                timestamps = query.get("timestamps") == "true"
                follow = query.get("follow") == "true"
                sent = 0
                try:
                    while True:
                        lines = running.lines[sent:]
                        sent += len(lines)
                        for at, line in lines:
                            if at / 1e9 >= since:
                                seconds, nanos = divmod(at, 10**9)
                                stamp = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
                                text = (f"{stamp:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z " if timestamps else "") + line + "\n"
                                data = text.encode()
                                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                        if not follow or (running.done.is_set() and sent >= len(running.lines)):
                            break
                        time.sleep(0.05)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        cert, key = _self_signed(self.workdir / "pki")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        return server

    @property
    def port(self) -> int:
        return self.server_port

    @property
    def server_port(self) -> int:
        return self._server.server_address[1]

    # -- the loop -----------------------------------------------------------------------------------
    def start(self) -> "ProcessKubelet":
        self._run(lambda: self._server.serve_forever(poll_interval=0.2), "kubelet-logs")
        return super().start()

    def stop(self) -> None:
        self._stop.set()
        for running in list(self.pods.values()):
            self._kill(running, grace_s=2)
        self._server.shutdown()
        super().stop()

    def silence(self, node_name: str) -> None:
        """This node's kubelet stops answering: no more heartbeats (its lease and status go stale,
        and the node lifecycle controller takes it from there); its processes go on, as a
        partitioned node's do."""
        self.silent.add(node_name)

    def sync(self) -> None:
        mine = [n for n in self.core.list_node().items
                if (n.metadata.annotations or {}).get(ANNOTATION) == PROCESS_KUBELET]
        for node in mine:
            if node.metadata.name not in self.silent:
                self._heartbeat(node)
        names = {n.metadata.name for n in mine}
        pods = self.core.list_pod_for_all_namespaces().items
        # A pod removed at once (deleted with no grace period, or its node deleted): its process goes too.
        alive = {pod.metadata.uid for pod in pods}
        for uid, running in list(self.pods.items()):
            if uid not in alive:
                self._kill(running, grace_s=2)
                self.pods.pop(uid, None)
        for pod in pods:
            if pod.spec.node_name not in names:
                continue
            uid = pod.metadata.uid
            running = self.pods.get(uid)
            if pod.metadata.deletion_timestamp is not None:
                self._delete(pod, running)
            elif running is None and pod.status.phase == "Pending":
                self._start_pod(pod)
            elif running is not None and running.done.is_set() and pod.status.phase == "Running":
                self._report_exit(pod, running)

    # -- nodes --------------------------------------------------------------------------------------
    def _heartbeat(self, node: Any) -> None:
        name = node.metadata.name
        if time.monotonic() - self._beats.get(name, 0.0) < HEARTBEAT_S:
            return
        self._beats[name] = time.monotonic()
        now = _now()
        conditions = [{"type": kind, "status": "False", "reason": f"KubeletHasNo{kind}", "message": "",
                       "lastHeartbeatTime": now, "lastTransitionTime": now}
                      for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                           "message": "stand-in kubelet is posting ready status", "lastHeartbeatTime": now,
                           "lastTransitionTime": now})
        self.core.patch_node_status(name, {"status": {
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.server_port}},
            "nodeInfo": {"kubeletVersion": "stand-in", "kubeProxyVersion": "stand-in", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "process://", "kernelVersion": "",
                         "osImage": "", "machineID": "", "systemUUID": "", "bootID": ""}}})
        lease = {"metadata": {"name": name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                          "renewTime": datetime.datetime.now(datetime.timezone.utc).strftime(
                              "%Y-%m-%dT%H:%M:%S.%fZ")}}
        try:
            self.coordination.patch_namespaced_lease(name, "kube-node-lease", {"spec": lease["spec"]})
        except Exception:  # noqa: BLE001 - not there yet
            with contextlib.suppress(Exception):
                self.coordination.create_namespaced_lease("kube-node-lease", lease)

    # -- pods ---------------------------------------------------------------------------------------
    def _status(self, pod: Any, phase: str, state: dict[str, Any], ready: bool) -> None:
        container = pod.spec.containers[0]
        now = _now()
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": {
            "phase": phase, "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}], "hostIP": "127.0.0.1",
            "startTime": now,
            "conditions": [{"type": kind, "status": "True" if ready or kind == "Initialized" else "False",
                            "lastTransitionTime": now} for kind in ("Initialized", "Ready", "ContainersReady")],
            "containerStatuses": [{"name": container.name, "image": container.image, "imageID": "",
                                   "ready": ready, "restartCount": 0, "started": phase == "Running",
                                   "state": state}]}})

    def _start_pod(self, pod: Any) -> None:
        uid = pod.metadata.uid
        container = pod.spec.containers[0]
        if any(o.kind == "DaemonSet" for o in pod.metadata.owner_references or []):
            self.pods[uid] = _Running(uid, pod.metadata.namespace, pod.metadata.name, container.name, None)
            self._status(pod, "Running", {"running": {"startedAt": _now()}}, True)
            return
        root = self.workdir / uid / "root"
        mounts = self._volumes(pod, root)
        env = {**self.image_env, **self._environment(pod, container)}
        env = {key: _mapped(value, mounts, root) for key, value in env.items()}
        token = self._token_kubeconfig(pod)
        if token is not None:
            env["KUBECONFIG"] = str(token)
        argv = [*(container.command or []), *(container.args or [])]
        if not argv:
            self.pods[uid] = _Running(uid, pod.metadata.namespace, pod.metadata.name, container.name, None)
            self._status(pod, "Failed", {"terminated": {"exitCode": 128, "reason": "StartError",
                                                         "message": "the stand-in kubelet runs commands only"}}, False)
            return
        running = _Running(uid, pod.metadata.namespace, pod.metadata.name, container.name, None)
        self.pods[uid] = running
        try:
            running.process = subprocess.Popen(argv, env=env, cwd=self.image_workdir, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                               start_new_session=True)
        except OSError as error:
            running.lines.append((time.time_ns(), str(error)))
            running.done.set()
            self._status(pod, "Failed", {"terminated": {"exitCode": 128, "reason": "StartError",
                                                         "message": str(error)}}, False)
            return
        self._status(pod, "Running", {"running": {"startedAt": _now()}}, True)

        def read():
            assert running.process is not None and running.process.stdout is not None
            for line in running.process.stdout:
                stamp = time.time_ns()
                if running.lines and stamp <= running.lines[-1][0]:
                    stamp = running.lines[-1][0] + 1  # two lines read within the clock's resolution
                running.lines.append((stamp, line.rstrip("\n")))
            running.process.wait()
            running.done.set()

        threading.Thread(target=read, name=f"pod-{pod.metadata.name}", daemon=True).start()

    def _report_exit(self, pod: Any, running: _Running) -> None:
        if running.process is None:
            return
        code = running.process.returncode
        self._status(pod, "Succeeded" if code == 0 else "Failed", {"terminated": {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error",
            "startedAt": _now(), "finishedAt": _now()}}, False)

    def _kill(self, running: _Running, grace_s: float) -> None:
        if running.process is not None:
            stop_process_group(running.process, grace_s)

    def _delete(self, pod: Any, running: _Running | None) -> None:
        if running is not None:
            grace = pod.metadata.deletion_grace_period_seconds
            self._kill(running, 30 if grace is None else float(grace))
            self.pods.pop(pod.metadata.uid, None)
        with contextlib.suppress(Exception):
            self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)

    # -- what the kubelet resolves for a container ---------------------------------------------------
    def _key(self, kind: str, namespace: str, name: str, key: str) -> str:
        if kind == "secret":
            return base64.b64decode(self.core.read_namespaced_secret(name, namespace).data[key]).decode()
        return self.core.read_namespaced_config_map(name, namespace).data[key]

    def _environment(self, pod: Any, container: Any) -> dict[str, str]:
        namespace = pod.metadata.namespace
        env: dict[str, str] = {}
        for source in container.env_from or []:
            if source.config_map_ref is not None:
                data = self.core.read_namespaced_config_map(source.config_map_ref.name, namespace).data or {}
            else:
                secret = self.core.read_namespaced_secret(source.secret_ref.name, namespace).data or {}
                data = {k: base64.b64decode(v).decode() for k, v in secret.items()}
            env.update({f"{source.prefix or ''}{k}": v for k, v in data.items()})
        fields = {"metadata.name": pod.metadata.name, "metadata.namespace": namespace, "metadata.uid": pod.metadata.uid,
                  "spec.nodeName": pod.spec.node_name, "spec.serviceAccountName": pod.spec.service_account_name or "",
                  "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = var.value or ""
            elif var.value_from.field_ref is not None:
                env[var.name] = fields.get(var.value_from.field_ref.field_path, "")
            elif var.value_from.secret_key_ref is not None:
                ref = var.value_from.secret_key_ref
                env[var.name] = self._key("secret", namespace, ref.name, ref.key)
            elif var.value_from.config_map_key_ref is not None:
                ref = var.value_from.config_map_key_ref
                env[var.name] = self._key("configmap", namespace, ref.name, ref.key)
        return env

    def _volumes(self, pod: Any, root: Path) -> list[str]:
        """Write the pod's ConfigMap and Secret volumes where its container mounts them (under
        `root`); returns the mount paths."""
        namespace = pod.metadata.namespace
        sources = {}
        for volume in pod.spec.volumes or []:
            if volume.config_map is not None:
                sources[volume.name] = self.core.read_namespaced_config_map(volume.config_map.name, namespace).data or {}
            elif volume.secret is not None:
                secret = self.core.read_namespaced_secret(volume.secret.secret_name, namespace).data or {}
                sources[volume.name] = {k: base64.b64decode(v).decode() for k, v in secret.items()}
        mounts = []
        for mount in pod.spec.containers[0].volume_mounts or []:
            data = sources.get(mount.name)
            if data is None:
                continue
            target = root / mount.mount_path.lstrip("/")
            if mount.sub_path:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[mount.sub_path])
            else:
                target.mkdir(parents=True, exist_ok=True)
                for key, value in data.items():
                    (target / key).write_text(value)
            mounts.append(mount.mount_path)
        return mounts

    def _token_kubeconfig(self, pod: Any) -> Path | None:
        if pod.spec.automount_service_account_token is False:
            return None
        from kubernetes import client

        account = pod.spec.service_account_name or "default"
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[ISSUER], expiration_seconds=3600,
            bound_object_ref=client.V1BoundObjectReference(kind="Pod", api_version="v1", name=pod.metadata.name,
                                                           uid=pod.metadata.uid)))
        token = self.core.create_namespaced_service_account_token(account, pod.metadata.namespace, request).status.token
        path = self.workdir / pod.metadata.uid / "kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_kubeconfig(path, self.cluster.url, self.cluster.ca_file, token,
                                user=f"{pod.metadata.namespace}:{account}")

    def logs(self, namespace: str, name: str) -> str:
        running = next((r for r in self.pods.values() if (r.namespace, r.name) == (namespace, name)), None)
        return "\n".join(line for _, line in running.lines) if running else ""


def _mapped(value: str, mounts: list[str], root: Path) -> str:
    """An absolute path that is mounted, inside a mount, or a folder above one, as the pod's
    process sees it under `root`."""
    if not value.startswith("/"):
        return value
    for mount in mounts:
        if value == mount or value.startswith(mount.rstrip("/") + "/") or mount.startswith(value.rstrip("/") + "/"):
            return str(root / value.lstrip("/"))
    return value
