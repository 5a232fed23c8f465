"""`staging`: AWS Auto Scaling groups on EKS, the k8s run launcher, Spark executors on spot.

Pools (nodes of 4 vCPU / 16 GiB, m6i.xlarge and its peers; us-east-1 prices, 2026):
- `spot-etl`: where the pipelines' executors run; spot, mixed instance types; falls back to
- `ondemand-etl`: the same shape on-demand, used only while spot capacity does not come;
- `ondemand-driver`: small on-demand nodes (2 vCPU / 8 GiB) for run pods, i.e. Spark drivers,
  kept at one node so a run starts without waiting for a boot (the environment's `driver_pool`:
  each run asks it for one driver, and the tagged pool for its executors).

Everything account-specific comes from the environment (set by the Helm values in deploy/):
DPE_AWS_REGION, DPE_CLUSTER_NAME (group names are `<cluster>-<pool>`, as the CloudFormation
template in deploy/ names them), DPE_IMAGE (the image runs and executors use), DPE_NAMESPACE,
DPE_SPARK_FALLBACK_STORAGE (where decommissioned Spark blocks go; default
`s3a://<cluster>-spark-decommission/blocks/`).
Credentials come from the standard AWS chain (the pods' IAM role), never from here."""


from __future__ import annotations

import os

from dpe_dagster.config import ConfigError, parse_pool
from dpe_dagster.spark.kubernetes import spark_on_k8s

SPOT_TYPES = ["m6i.xlarge", "m5.xlarge", "m5a.xlarge", "m6a.xlarge", "m7i.xlarge", "m5n.xlarge"]


def _required(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise ConfigError(f"{name}: must be set for this environment (see deploy/README.md)")
    return value


def cluster_environment(name: str, *, spot_max: int, ondemand_max: int, idle_timeout_s: int) -> dict:
    cluster = _required("DPE_CLUSTER_NAME", f"dpe-{name}")
    region = _required("DPE_AWS_REGION", "us-east-1")
    image = _required("DPE_IMAGE", "dpe:latest")
    namespace = os.environ.get("DPE_NAMESPACE", "dagster")

    def pool(pool_name: str, **fields) -> dict:
        settings = fields.pop("settings", {})
        return {
            "provider": "aws_asg", "idle_timeout_s": idle_timeout_s, "boot_timeout_s": 300,
            "labels": {"dpe.io/pool": pool_name},
            "settings": {"group_name": f"{cluster}-{pool_name}", "busy_source": "kubernetes", **settings},
            **fields,
        }

    pools = {
        "spot-etl": pool("spot-etl", min_size=0, max_size=spot_max, node_cpus=4, node_memory_gb=16,
                         lifecycle="spot", price_per_node_hour=0.07, default_run_cpus=4, default_run_memory_gb=14,
                         fallback="ondemand-etl", backoff_s=900,
                         taints=[{"key": "dpe.io/pool", "value": "spot-etl", "effect": "NoSchedule"}],
                         settings={"instance_types": SPOT_TYPES}),
        "ondemand-etl": pool("ondemand-etl", min_size=0, max_size=ondemand_max, node_cpus=4, node_memory_gb=16,
                             lifecycle="on-demand", price_per_node_hour=0.192, default_run_cpus=4,
                             default_run_memory_gb=14,
                             taints=[{"key": "dpe.io/pool", "value": "ondemand-etl", "effect": "NoSchedule"}],
                             settings={"instance_types": ["m6i.xlarge", "m5.xlarge"]}),
        # Tainted like the others: only run pods (which tolerate it) land there, never the control
        # plane or add-ons, which would keep a node paid; those run on the system node group.
        "ondemand-driver": pool("ondemand-driver", min_size=1, max_size=4, node_cpus=2, node_memory_gb=8,
                                lifecycle="on-demand", price_per_node_hour=0.096, default_run_cpus=1,
                                default_run_memory_gb=3,
                                taints=[{"key": "dpe.io/pool", "value": "ondemand-driver", "effect": "NoSchedule"}],
                                settings={"instance_types": ["m6i.large", "m5.large"]}),
    }
    parsed = {pool_name: parse_pool(pool_name, fields) for pool_name, fields in pools.items()}
    spark = spark_on_k8s(list(parsed.values()), parsed["ondemand-driver"], image=image, namespace=namespace,
                         service_account="dpe-run",
                         # Where decommissioned Spark blocks outlive their node (deploy/README.md).
                         fallback_storage=os.environ.get("DPE_SPARK_FALLBACK_STORAGE",
                                                         f"s3a://{cluster}-spark-decommission/blocks/"))
    return {
        "sensor_interval_s": 15,
        "kubernetes": {"namespace": namespace},
        "max_concurrent_runs": 10,
        "aws": {"region": region, "retry_mode": "adaptive", "max_attempts": 8,
                # The spot interruption queue `dpe interruptions` reads (deploy/cloudformation/interruption-queue.yaml).
                **({"interruption_queue_url": os.environ["DPE_INTERRUPTION_QUEUE_URL"]}
                   if os.environ.get("DPE_INTERRUPTION_QUEUE_URL") else {})},
        "pools": pools,
        "driver_pool": "ondemand-driver",
        "spark": {"master": spark.conf.pop("spark.master"), "conf": {**spark.conf, "spark.sql.shuffle.partitions": "64"},
                  "executor_conf": spark.executor_conf},
    }


def environment() -> dict:
    return cluster_environment("staging", spot_max=6, ondemand_max=3, idle_timeout_s=300)
