"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, and kwok for nodes, each a local process of the binaries tests/cluster/build.py built.

    with ControlPlane(build().folder, workdir) as cluster:
        core = cluster.core()          # kubernetes.client.CoreV1Api as cluster-admin
        cluster.kubeconfig             # an admin kubeconfig file for any client

What is on, as on a production cluster (EKS enables the same):
- TLS everywhere on the API server (a CA made here, its serving certificate for 127.0.0.1);
- authorization `Node,RBAC`, the default admission plugins plus `NodeRestriction`;
- service-account tokens signed by a key made here (TokenRequest, projected into pods by the
  ServiceAccount admission plugin), so a test can act as any ServiceAccount with its own token;
- every controller of kube-controller-manager with its own service-account credentials (Jobs,
  DaemonSets, garbage collection, the node lifecycle controller that marks a silent node NotReady
  and its pods not ready, taint-based eviction...), and the default scheduler.

What is not real: there is no kubelet. kwok plays it for the nodes it manages (those annotated
`kwok.x-k8s.io/node: fake`): it reports them Ready, renews their leases, starts the pods bound to
them (status only: nothing runs) and removes deleted pods (stages.yaml). Where a pod must really
run, tests/cluster/kubelet.py is a stand-in kubelet that runs its command as a local process.
Admin credentials are a static token (the API server's token file); the components use the same
kubeconfig.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

import yaml

from dpe_dagster.daemon import stop_process_group
from dpe_dagster.pools.aws.emulator import free_port

HERE = Path(__file__).resolve().parent
KWOK_ANNOTATION = "kwok.x-k8s.io/node"  # kwok manages the nodes annotated with this = "fake"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"
# kwok renews each node's lease of this length (a quarter of it apart, as a kubelet does: at 1,000
# nodes that is 100 writes a second, as on EKS); the node lifecycle controller marks a node whose
# lease is older than the grace period NotReady (EKS: 50 s; shorter here, for the tests).
LEASE_SECONDS = 40
NODE_MONITOR_GRACE = "20s"
ADMIN_TOKEN = "dpe-test-admin-token"


class ClusterError(RuntimeError):
    pass


def _write_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate (127.0.0.1, localhost, the in-cluster names) and
    the service-account signing key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption())

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dpe-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_key = key()
    names = [x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                        "kubernetes.default.svc.cluster.local")]
    ips = [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "10.96.0.1")]
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                   "kube-apiserver")]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
              .add_extension(x509.SubjectAlternativeName([*names, *ips]), critical=False)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    sa_key = key()
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(pem_key(ca_key))
    (pki / "apiserver.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (pki / "apiserver.key").write_bytes(pem_key(server_key))
    (pki / "sa.key").write_bytes(pem_key(sa_key))
    (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str = "admin") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dpe-test",
        "clusters": [{"name": "dpe-test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "contexts": [{"name": "dpe-test", "context": {"cluster": "dpe-test", "user": user}}],
        "users": [{"name": user, "user": {"token": token}}],
    }))
    return path


class ControlPlane:
    def __init__(self, bin_dir: Path, workdir: Path):
        self.bin = Path(bin_dir)
        self.dir = Path(workdir)
        self.processes: dict[str, subprocess.Popen] = {}
        self.port = 0
        self.pki = self.dir / "pki"
        self.kubeconfig = self.dir / "admin.kubeconfig"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    # -- processes ------------------------------------------------------------------------------
    def _start(self, name: str, args: list[str]) -> None:
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        binary = self.bin / name
        with open(self.dir / "logs" / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen([str(binary), *args], stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.dir)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def _alive_or_fail(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            raise ClusterError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")

    def _wait(self, what: str, check, timeout_s: float, component: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._alive_or_fail(component)
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.2)
        raise ClusterError(f"{what} not within {timeout_s:.0f}s; {component}'s log:\n{self.log_tail(component)}")

    # -- start and stop -------------------------------------------------------------------------
    def start(self, timeout_s: float = 120) -> "ControlPlane":
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_pki(self.pki)
        (self.dir / "tokens.csv").write_text(f"{ADMIN_TOKEN},dpe-test-admin,dpe-test-admin,system:masters\n")
        write_kubeconfig(self.kubeconfig, "https://127.0.0.1:0", self.ca_file, ADMIN_TOKEN)
        try:
            self._start_etcd(timeout_s)
            self._start_apiserver(timeout_s)
            write_kubeconfig(self.kubeconfig, self.url, self.ca_file, ADMIN_TOKEN)
            self._start_controllers()
            self._wait("the default ServiceAccount (service-account controller)",
                       lambda: self.core().read_namespaced_service_account("default", "default"), timeout_s,
                       "kube-controller-manager")
            self._probe(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_etcd(self, timeout_s: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._start("etcd", [
            "--name", "dpe-test", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"dpe-test=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync", "--log-level", "warn", "--quota-backend-bytes", str(4 << 30),
        ])
        self._wait("etcd healthy", lambda: urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2).status == 200,
                   timeout_s, "etcd")

    def _start_apiserver(self, timeout_s: float) -> None:
        self.port = free_port()
        self._start("kube-apiserver", [
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}", "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={self.pki / 'apiserver.crt'}", f"--tls-private-key-file={self.pki / 'apiserver.key'}",
            f"--client-ca-file={self.ca_file}",
            f"--token-auth-file={self.dir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            # Logs are fetched from a node's InternalIP (the stand-in kubelet listens on 127.0.0.1).
            "--kubelet-preferred-address-types=InternalIP",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={self.pki / 'sa.pub'}",
            f"--service-account-signing-key-file={self.pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true", "--profiling=false", "--v=1",
        ])
        context = ssl.create_default_context(cafile=str(self.ca_file))

        def ready() -> bool:
            request = urllib.request.Request(f"{self.url}/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            return urllib.request.urlopen(request, context=context, timeout=2).status == 200

        self._wait("kube-apiserver ready", ready, timeout_s, "kube-apiserver")

    def _start_controllers(self) -> None:
        kubeconfig = str(self.kubeconfig)
        self._start("kube-controller-manager", [
            f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--secure-port=0",
            f"--service-account-private-key-file={self.pki / 'sa.key'}", f"--root-ca-file={self.ca_file}",
            "--use-service-account-credentials=true", "--controllers=*",
            "--node-monitor-period=2s", f"--node-monitor-grace-period={NODE_MONITOR_GRACE}",
            "--kube-api-qps=200", "--kube-api-burst=400", "--v=1",
        ])
        scheduler_config = self.dir / "scheduler.yaml"
        scheduler_config.write_text(yaml.safe_dump({
            "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": kubeconfig, "qps": 200, "burst": 400},
            "leaderElection": {"leaderElect": False},
        }))
        self._start("kube-scheduler", [f"--config={scheduler_config}", "--secure-port=0", "--v=1"])
        self._start("kwok", [
            f"--kubeconfig={kubeconfig}", f"--config={HERE / 'stages.yaml'}",
            "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            f"--cidr={POD_CIDR}", "--node-ip=10.0.0.1", f"--node-lease-duration-seconds={LEASE_SECONDS}",
        ])

    def _probe(self, timeout_s: float) -> None:
        """A kwok node becomes Ready and a pod is scheduled onto it and runs: the scheduler and kwok work."""
        from kubernetes import client

        core = self.core()
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(
            name="dpe-probe", annotations={KWOK_ANNOTATION: "fake"}, labels={"dpe-probe": "true"}),
            status=client.V1NodeStatus(capacity={"cpu": "1", "memory": "1Gi", "pods": "10"},
                                       allocatable={"cpu": "1", "memory": "1Gi", "pods": "10"})))
        try:
            core.create_namespaced_pod("default", client.V1Pod(
                metadata=client.V1ObjectMeta(name="dpe-probe"),
                spec=client.V1PodSpec(node_selector={"dpe-probe": "true"},
                                      containers=[client.V1Container(name="probe", image="probe")])))
            self._wait("a probe pod scheduled and running on a kwok node",
                       lambda: core.read_namespaced_pod("dpe-probe", "default").status.phase == "Running",
                       timeout_s, "kube-scheduler")
        finally:
            with contextlib.suppress(Exception):
                core.delete_namespaced_pod("dpe-probe", "default", grace_period_seconds=0)
            with contextlib.suppress(Exception):
                core.delete_node("dpe-probe")

    def stop(self, grace_s: float = 10) -> None:
        for name in reversed(list(self.processes)):
            stop_process_group(self.processes.pop(name), grace_s)

    def __enter__(self) -> "ControlPlane":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients --------------------------------------------------------------------------------
    def api_client(self, token: str = ADMIN_TOKEN):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(configuration)

    def core(self, token: str = ADMIN_TOKEN):
        from kubernetes import client

        return client.CoreV1Api(self.api_client(token))

    def token_for(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """A token of this ServiceAccount, as the kubelet projects into its pods (TokenRequest)."""
        from kubernetes import client

        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[ISSUER], expiration_seconds=seconds))
        return self.core().create_namespaced_service_account_token(service_account, namespace, request).status.token

    def kubeconfig_for(self, path: Path, namespace: str, service_account: str) -> Path:
        return write_kubeconfig(path, self.url, self.ca_file, self.token_for(namespace, service_account),
                                user=f"{namespace}:{service_account}")

    def apply(self, documents: Iterable[dict[str, Any]]) -> None:
        """Create these objects (as `kubectl create -f`), or leave them when they exist already."""
        from kubernetes import utils
        from kubernetes.utils import FailToCreateError

        for document in documents:
            if not document:
                continue
            try:
                utils.create_from_dict(self.api_client(), document)
            except FailToCreateError as error:
                if any(getattr(e, "status", None) != 409 for e in error.api_exceptions):
                    raise
