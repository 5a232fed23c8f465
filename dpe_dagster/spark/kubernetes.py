"""Spark on Kubernetes for staging/prod: the driver on an on-demand pool, executors on the pool each
run is placed on.

Pure: (pools, image, namespace...) -> the Spark configuration and the executor pod templates.

- The driver is the Dagster run's own pod (client mode: the SparkSession lives in the run), which
  the k8s run launcher puts on the on-demand driver pool; the `spark.kubernetes.driver.*`
  selector is set too, for cluster-mode submissions.
- Executors go where the run was placed: its `dpe/node_pool` tag after placement (spot, or the
  on-demand fallback when spot did not come or a retry moved it). Each pool has its settings
  (`executor_conf`: node selector, label, executor size, its pod template for the tolerations
  Spark has no setting for), which the run's session adds (spark/resource.py). They carry no
  do-not-evict annotation: losing one is what graceful decommissioning is for.
- Graceful decommissioning (`spark.decommission.enabled` with shuffle and RDD block migration)
  moves an executor's blocks away when its spot node gets the two-minute interruption notice:
  `dpe interruptions` drains the node through the Eviction API, the executor's preStop hook
  (which Spark adds) decommissions it, and blocks no other executor takes go to the fallback
  storage (`spark.storage.decommission.fallbackStorage.path`, S3), written by executors under
  their own ServiceAccount.
- Dynamic allocation with shuffle tracking (no external shuffle service on Kubernetes): executors
  come and go with the work; one that holds shuffle data is kept until the shuffle-tracking
  timeout, so idle executors, and then idle nodes, do not linger forever.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from dpe_dagster.config import ConfigError, PoolConfig
from dpe_dagster.kube.pod_spec import merge_pod_template, pod_placement
from dpe_dagster.tags import RUN_ID_LABEL

# Spark's own sizes: a bare number is MiB for executor memory and its overhead.
_SPARK_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*$", re.IGNORECASE)
_MIB_PER = {"k": 1 / 1024, "m": 1.0, "": 1.0, "g": 1024.0, "t": 1024.0 * 1024}
# Spark's defaults for an executor pod's memory beyond its heap (Spark on Kubernetes).
MIN_OVERHEAD_MIB = 384
DEFAULT_OVERHEAD_FACTOR = 0.10
# Where run pods find the executor pod templates (deploy/k8s/spark-executor-template.yaml, mounted
# by the Helm values), one file per pool.
EXECUTOR_TEMPLATE_DIR = "/opt/dpe/spark"
EXECUTOR_SERVICE_ACCOUNT = "dpe-spark-executor"
IN_CLUSTER_MASTER = "k8s://https://kubernetes.default.svc:443"


@dataclass(frozen=True)
class SparkOnK8s:
    conf: dict[str, str]  # every run's session
    executor_conf: dict[str, dict[str, str]]  # pool -> what a run placed on it adds (`executor_conf`)
    executor_pod_templates: dict[str, dict[str, Any]]  # pool -> its executors' pod template


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


def executor_template_file(pool: str, template_dir: str = EXECUTOR_TEMPLATE_DIR) -> str:
    return f"{template_dir}/executor-pod-template-{pool}.yaml"


def executor_pod_template(pool: PoolConfig) -> dict[str, Any]:
    """The pod template of executors on `pool`: its selector and tolerations (Spark has no
    toleration setting), no do-not-evict annotation (decommissioning moves their blocks), and a
    grace period the decommissioning fits in."""
    return merge_pod_template({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"labels": {"app.kubernetes.io/name": "dpe-spark-executor"}},
        "spec": {"containers": [{"name": "spark-executor"}], "terminationGracePeriodSeconds": 120},
    }, pod_placement(pool, evictable=True))


def executor_conf(pool: PoolConfig, template_dir: str = EXECUTOR_TEMPLATE_DIR) -> dict[str, str]:
    """What a run's session adds for executors on `pool` (the pool the run is placed on, after any
    fallback): the pool's node selector and label, its pod template, executors of its shape, and
    at most its max_size of them (per run: `max_executors`)."""
    placement = pod_placement(pool, evictable=True)
    cores, memory_mib = executor_shape(pool)
    conf = {
        "spark.kubernetes.executor.podTemplateFile": executor_template_file(pool.name, template_dir),
        "spark.kubernetes.executor.podTemplateContainerName": "spark-executor",
        "spark.executor.cores": str(cores),
        "spark.executor.memory": f"{memory_mib}m",
        "spark.kubernetes.executor.request.cores": str(cores),
        "spark.dynamicAllocation.maxExecutors": str(pool.max_size),
    }
    for key, value in placement.node_selector.items():
        conf[f"spark.kubernetes.executor.node.selector.{key}"] = value
    for key, value in placement.labels.items():
        conf[f"spark.kubernetes.executor.label.{key}"] = value
    return conf


def spark_on_k8s(executor_pools: Sequence[PoolConfig], driver_pool: PoolConfig, *, image: str, namespace: str,
                 service_account: str, executor_service_account: str = EXECUTOR_SERVICE_ACCOUNT,
                 fallback_storage: str | None = None, shuffle_tracking_timeout_s: int = 600,
                 executor_idle_timeout_s: int = 60, template_dir: str = EXECUTOR_TEMPLATE_DIR,
                 master: str = IN_CLUSTER_MASTER) -> SparkOnK8s:
    """Spark settings for an environment whose runs are drivers on `driver_pool` and whose
    executors go to the pool each run is placed on (`executor_pools`, by name)."""
    if driver_pool.lifecycle != "on-demand":
        raise ConfigError(f"pools.{driver_pool.name}.lifecycle: the Spark driver's pool must be on-demand "
                          f"(a spot interruption of the driver fails the whole run); got {driver_pool.lifecycle!r}")
    driver = pod_placement(driver_pool)
    conf = {
        "spark.master": master,
        "spark.submit.deployMode": "client",
        "spark.kubernetes.namespace": namespace,
        "spark.kubernetes.container.image": image,
        "spark.kubernetes.authenticate.driver.serviceAccountName": service_account,
        # Executors write decommissioned blocks to the fallback storage: their own account (its
        # cloud role reaches that storage only), not the run pod's, which holds no cloud role.
        "spark.kubernetes.authenticate.executor.serviceAccountName": executor_service_account,
        # Executors come and go with the work
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.timeout": f"{shuffle_tracking_timeout_s}s",
        "spark.dynamicAllocation.executorIdleTimeout": f"{executor_idle_timeout_s}s",
        "spark.dynamicAllocation.minExecutors": "0",
        # Graceful decommissioning on a spot warning (the drain evicts the executor, its preStop
        # hook decommissions it)
        "spark.decommission.enabled": "true",
        "spark.storage.decommission.enabled": "true",
        "spark.storage.decommission.shuffleBlocks.enabled": "true",
        "spark.storage.decommission.rddBlocks.enabled": "true",
        "spark.executor.decommission.forceKillTimeout": "100s",  # inside the 2-minute spot notice
    }
    if fallback_storage:
        # Blocks no other executor can take go where they outlive the node (the last executor of
        # a run, a whole pool reclaimed at once).
        conf["spark.storage.decommission.fallbackStorage.path"] = fallback_storage.rstrip("/") + "/"
        conf["spark.storage.decommission.fallbackStorage.cleanUp"] = "true"
    for key, value in driver.node_selector.items():
        conf[f"spark.kubernetes.driver.node.selector.{key}"] = value
    pools = [pool for pool in executor_pools if pool.name != driver_pool.name]
    return SparkOnK8s(conf, {pool.name: executor_conf(pool, template_dir) for pool in pools},
                      {pool.name: executor_pod_template(pool) for pool in pools})
