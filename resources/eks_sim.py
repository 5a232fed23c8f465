"""`eks-sim`: the staging/prod path on one machine. Auto Scaling groups in the AWS emulator (as
`aws-sim`), and a real Kubernetes control plane (kube-apiserver, kube-scheduler,
kube-controller-manager and etcd, built from Kubernetes' own Go modules; tests/cluster/):

- runs are Kubernetes Jobs made by the k8s run launcher (dagster-k8s), with the pool's selector,
  tolerations and requests; the scheduler binds them;
- nodes join as the emulator launches instances (EKS's labels, taints, allocatable and
  DaemonSets) and go when their instances are terminated;
- busy nodes, cordons and drains are read and made through the Kubernetes API, as in staging/prod,
  with the ServiceAccounts and RBAC of deploy/k8s/;
- a stand-in kubelet (tests/cluster/kubelet.py) runs each run pod's command as a process on this
  machine: no images, no containers. Spark runs in local mode inside the run's process.

`dpe demo` starts all of it (the sandbox below); the binaries are built from Go modules the first
time (about 6 minutes on 2 cores; Go 1.26+ needed). Nodes are m6i.xlarge and peers (4 vCPU /
16 GiB; a TPC-H run asks for 2 CPUs), priced as in us-east-1 (2026)."""

from __future__ import annotations

from resources.aws_sim import _float_env

SPOT_TYPES = ["m6i.xlarge", "m5.xlarge", "m5a.xlarge", "m6a.xlarge", "m7i.xlarge"]


def _pool(name: str, lifecycle: str, price: float, max_size: int, types: list[str], **fields) -> dict:
    return {
        "provider": "aws_asg", "min_size": 0, "max_size": max_size, "node_cpus": 4, "node_memory_gb": 16,
        "lifecycle": lifecycle, "price_per_node_hour": price,
        "idle_timeout_s": _float_env("DPE_IDLE_TIMEOUT_S", 20), "boot_timeout_s": 120,
        "default_run_cpus": 2, "default_run_memory_gb": 6,
        "labels": {"dpe.io/pool": name},
        "taints": [{"key": "dpe.io/pool", "value": name, "effect": "NoSchedule"}],
        "settings": {"group_name": f"dpe-eks-sim-{name}", "busy_source": "kubernetes", "instance_types": types},
        **fields,
    }


def environment() -> dict:
    return {
        "sensor_interval_s": 5,
        "max_concurrent_runs": 2,
        "aws": {"region": "us-east-1", "emulator": True, "retry_mode": "standard", "max_attempts": 5},
        "kubernetes": {"namespace": "dagster"},
        "sandbox": "tests.cluster.sandbox:eks_sandbox",
        "pools": {
            "spot-etl": _pool("spot-etl", "spot", 0.07, 3, SPOT_TYPES, fallback="ondemand-etl"),
            "ondemand-etl": _pool("ondemand-etl", "on-demand", 0.192, 2, ["m6i.xlarge", "m5.xlarge"]),
        },
        # The run pod is a process on this machine: Spark in local mode inside it.
        "spark": {"master": "local[2]", "conf": {"spark.driver.memory": "1g", "spark.sql.shuffle.partitions": "4"}},
    }
