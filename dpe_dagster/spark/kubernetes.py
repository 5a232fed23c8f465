"""Spark on Kubernetes for staging/prod: executors on the spot pool, the driver on an on-demand pool.

Pure: (pools, image, namespace...) -> the Spark configuration and the executor pod template.

- The driver is the Dagster run's own pod (client mode: the SparkSession lives in the run), which
  the k8s run launcher puts on the on-demand driver pool; the `spark.kubernetes.driver.*`
  selector is set too, for cluster-mode submissions.
- Executors get the spot pool's node selector from Spark's own settings and its tolerations from
  the executor pod template (Spark has no toleration setting). They carry no do-not-evict
  annotation: losing one is what graceful decommissioning is for.
- Graceful decommissioning (`spark.decommission.enabled` with shuffle and RDD block migration)
  moves an executor's blocks away when its spot node gets the two-minute interruption notice
  (the node's termination handler drains it, SIGPWR reaches the executor).
- Dynamic allocation with shuffle tracking (no external shuffle service on Kubernetes): executors
  come and go with the work; one that holds shuffle data is kept until the shuffle-tracking
  timeout, so idle executors, and then idle nodes, do not linger forever.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from dpe_dagster.config import ConfigError, PoolConfig
from dpe_dagster.kube.pod_spec import merge_pod_template, pod_placement

# Spark's own sizes: a bare number is MiB for executor memory and its overhead.
_SPARK_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*$", re.IGNORECASE)
_MIB_PER = {"k": 1 / 1024, "m": 1.0, "": 1.0, "g": 1024.0, "t": 1024.0 * 1024}
# Spark's defaults for an executor pod's memory beyond its heap (Spark on Kubernetes).
MIN_OVERHEAD_MIB = 384
DEFAULT_OVERHEAD_FACTOR = 0.10
# The label dagster-k8s puts on a run's pod; executors carry it too (set per session, see
# `executor_run_labels`), so one label query finds every pod of a run and the nodes it holds.
RUN_ID_LABEL = "dagster/run-id"
EXECUTOR_TEMPLATE_PATH = "/opt/dpe/spark/executor-pod-template.yaml"
IN_CLUSTER_MASTER = "k8s://https://kubernetes.default.svc:443"


@dataclass(frozen=True)
class SparkOnK8s:
    conf: dict[str, str]
    executor_pod_template: dict[str, Any]


def executor_run_labels(run_id: str) -> dict[str, str]:
    """Spark settings that label a run's executor pods with its Dagster run id. Per run, so set
    when the run's session is built, not in the environment-wide `spark_on_k8s` settings."""
    return {f"spark.kubernetes.executor.label.{RUN_ID_LABEL}": run_id}


def executor_shape(pool: PoolConfig) -> tuple[int, int]:
    """(cores, memory MiB) of one executor filling what runs can have of one node of the pool
    (`room_cpus`, `room_memory_gb`: the node less the kubelet's reservation and the DaemonSets),
    its pod's memory being the heap plus Spark's overhead (10%, at least 384 MiB)."""
    cores = max(1, math.floor(pool.room_cpus))
    room_mib = pool.room_memory_gb * 1024
    memory = int(min(room_mib / (1 + DEFAULT_OVERHEAD_FACTOR), room_mib - MIN_OVERHEAD_MIB)) - 1
    if memory < 512:
        raise ConfigError(f"pools.{pool.name}.node_memory_gb: {pool.node_memory_gb:g} GB nodes leave no room for a "
                          "Spark executor; use nodes of at least 2 GB")
    return cores, memory


def _spark_mib(key: str, value: str) -> float:
    match = _SPARK_SIZE.match(str(value))
    if not match:
        raise ConfigError(f"spark.conf.{key}: must be a Spark size like '4g' or '11449m'; got {value!r}")
    return float(match.group(1)) * _MIB_PER[match.group(2).lower()]


def executor_pod_size(conf: Mapping[str, str]) -> tuple[float, float] | None:
    """(CPUs, memory GB) one executor pod asks for under these Spark settings: its cores, heap and
    memory overhead (Spark's defaults when not set); None without an executor size."""
    if "spark.executor.cores" not in conf or "spark.executor.memory" not in conf:
        return None
    cpus = float(conf.get("spark.kubernetes.executor.request.cores", conf["spark.executor.cores"]))
    heap = _spark_mib("spark.executor.memory", conf["spark.executor.memory"])
    if "spark.executor.memoryOverhead" in conf:
        overhead = _spark_mib("spark.executor.memoryOverhead", conf["spark.executor.memoryOverhead"])
    else:
        factor = float(conf.get("spark.executor.memoryOverheadFactor", DEFAULT_OVERHEAD_FACTOR))
        overhead = max(MIN_OVERHEAD_MIB, math.ceil(heap * factor))
    return cpus, (heap + overhead) / 1024


def max_executors(cpus: float, conf: dict[str, str]) -> int:
    """How many executors a run asking for `cpus` may hold: the executors its request fills (at
    least one), never more than the environment's `maxExecutors` (the pool's `max_size`)."""
    per_executor = int(conf.get("spark.executor.cores", "1"))
    wanted = max(1, math.floor(cpus / per_executor))
    ceiling = conf.get("spark.dynamicAllocation.maxExecutors")
    return min(wanted, int(ceiling)) if ceiling else wanted


def spark_on_k8s(executor_pool: PoolConfig, driver_pool: PoolConfig, *, image: str, namespace: str,
                 service_account: str, shuffle_tracking_timeout_s: int = 600, executor_idle_timeout_s: int = 60,
                 template_path: str = EXECUTOR_TEMPLATE_PATH, master: str = IN_CLUSTER_MASTER) -> SparkOnK8s:
    if driver_pool.lifecycle != "on-demand":
        raise ConfigError(f"pools.{driver_pool.name}.lifecycle: the Spark driver's pool must be on-demand "
                          f"(a spot interruption of the driver fails the whole run); got {driver_pool.lifecycle!r}")
    executors = pod_placement(executor_pool, evictable=True)
    driver = pod_placement(driver_pool)
    cores, memory_mib = executor_shape(executor_pool)
    conf = {
        "spark.master": master,
        "spark.submit.deployMode": "client",
        "spark.kubernetes.namespace": namespace,
        "spark.kubernetes.container.image": image,
        "spark.kubernetes.authenticate.driver.serviceAccountName": service_account,
        "spark.kubernetes.executor.podTemplateFile": template_path,
        "spark.kubernetes.executor.podTemplateContainerName": "spark-executor",
        "spark.executor.cores": str(cores),
        "spark.executor.memory": f"{memory_mib}m",
        "spark.kubernetes.executor.request.cores": str(cores),
        # Executors
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.timeout": f"{shuffle_tracking_timeout_s}s",
        "spark.dynamicAllocation.executorIdleTimeout": f"{executor_idle_timeout_s}s",
        "spark.dynamicAllocation.minExecutors": "0",
        "spark.dynamicAllocation.maxExecutors": str(executor_pool.max_size),  # per run: see max_executors
        # Graceful decommissioning on spot interruption
        "spark.decommission.enabled": "true",
        "spark.storage.decommission.enabled": "true",
        "spark.storage.decommission.shuffleBlocks.enabled": "true",
        "spark.storage.decommission.rddBlocks.enabled": "true",
        "spark.executor.decommission.forceKillTimeout": "100s",  # inside the 2-minute spot notice
    }
    for key, value in executors.node_selector.items():
        conf[f"spark.kubernetes.executor.node.selector.{key}"] = value
    for key, value in driver.node_selector.items():
        conf[f"spark.kubernetes.driver.node.selector.{key}"] = value
    for key, value in executors.labels.items():
        conf[f"spark.kubernetes.executor.label.{key}"] = value
    template = merge_pod_template({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"labels": {"app.kubernetes.io/name": "dpe-spark-executor"}},
        "spec": {"containers": [{"name": "spark-executor"}], "terminationGracePeriodSeconds": 120},
    }, executors)
    return SparkOnK8s(conf, template)
