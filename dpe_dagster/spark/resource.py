"""The Spark resource: one SparkSession per run, shared by all of the run's steps.

Runs use Dagster's in-process executor, so every asset of a run talks to the same driver JVM:
starting a JVM per step would cost seconds per asset. The session's executors land on the run's
node pool; the session holds no more than the run asked for (`dpe/cpu`, or its pool's
`default_run_cpus`): locally `spark.cores.max`, on Kubernetes dynamic allocation's `maxExecutors`
(see `run_spark_conf`), so one run cannot take a whole pool while charged for its share.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from typing import Any

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from dpe_dagster.config import SparkConfig
from dpe_dagster.spark.java import check_java, spark_process_env
from dpe_dagster.tags import POOL_TAG, requested_cpus

# Dagster run ids are UUIDs (make_new_run_id); the app name ends with the full one.
_RUN_ID_AT_END = re.compile(r"-(?P<run_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def run_app_name(prefix: str, run_id: str) -> str:
    """The Spark application name of a run's session: readable, and naming the full run id, so
    that a pool can tell from Spark itself which node a run holds (see `run_id_of_app`)."""
    return f"{prefix}-{run_id}"


def run_id_of_app(app_name: str) -> str | None:
    """The Dagster run id in an application name made by `run_app_name`; None for other apps."""
    found = _RUN_ID_AT_END.search(app_name or "")
    return found.group("run_id") if found else None


def _wait_for_port(url: str, timeout_s: float) -> None:
    host, port = url.removeprefix("spark://").split(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Spark master {url} is not reachable after {timeout_s:g}s: the node pool did not come up "
                    "(is the dpe_autoscaler sensor running, and the daemon?)"
                ) from None
            time.sleep(0.5)


def _driver_address(master: str) -> tuple[str, str]:
    """Where executors reach the driver. Locally: loopback. On Kubernetes the driver runs in the
    run's pod: executors reach it at the pod's IP (POD_IP, set by the Helm values from the
    downward API), and it listens on every interface of the pod."""
    if master.startswith("k8s://"):
        return os.environ.get("POD_IP") or socket.gethostbyname(socket.gethostname()), "0.0.0.0"
    return "127.0.0.1", "127.0.0.1"


def run_spark_conf(master: str, conf: dict[str, str], tags: dict[str, str],
                   default_run_cpus: dict[str, float]) -> dict[str, str]:
    """The settings that bound a run's session by what the run asked for: its `dpe/cpu` tag, or
    the default of the pool it names. A run that names no pool is counted as no demand, so it
    gets the least: one core. Standalone (spark://): `spark.cores.max`; Kubernetes: at most as
    many executors as the request fills, never more than the environment's `maxExecutors`."""
    cpus = requested_cpus(tags, default_run_cpus.get(tags.get(POOL_TAG, ""), 1.0))
    if master.startswith("spark://"):
        return {"spark.cores.max": str(max(1, math.floor(cpus)))}
    if master.startswith("k8s://"):
        from dpe_dagster.spark.kubernetes import max_executors

        return {"spark.dynamicAllocation.maxExecutors": str(max_executors(cpus, conf))}
    return {}


class SparkResource(ConfigurableResource):
    master: str = Field(description="Spark master URL: spark://host:port, local[N], or k8s://...")
    app_name: str = "dpe"
    conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark configuration")
    wait_for_master_s: float = Field(default=120.0, description="How long to wait for a spark:// master")
    default_run_cpus: dict[str, float] = Field(
        default_factory=dict, description="Each pool's default_run_cpus: what a run that names no dpe/cpu asks for")
    executor_conf: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Spark settings by the pool a run is placed on (the environment's "
        "spark.executor_conf): on Kubernetes, where its executors go")

    _session: Any = PrivateAttr(default=None)
    _tags: dict[str, str] = PrivateAttr(default_factory=dict)
    _run_id: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        run = context.dagster_run
        if run is not None:
            self._run_id = run.run_id
            self._tags = dict(run.tags)

    def session(self):
        """The run's SparkSession, created on first use."""
        if self._session is None:
            check_java()
            for key, value in spark_process_env().items():
                if key in ("JAVA_HOME", "SPARK_HOME", "SPARK_LOCAL_IP"):
                    os.environ.setdefault(key, value)
            if self.master.startswith("spark://"):
                _wait_for_port(self.master, self.wait_for_master_s)
            from pyspark.sql import SparkSession

            host, bind = _driver_address(self.master)
            builder = (
                SparkSession.builder.master(self.master)
                .appName(run_app_name(self.app_name, self._run_id) if self._run_id else self.app_name)
                .config("spark.driver.host", host)
                .config("spark.driver.bindAddress", bind)
                .config("spark.ui.enabled", "false")
                .config("spark.sql.session.timeZone", "UTC")
            )
            if self._run_id and self.master.startswith("k8s://"):
                from dpe_dagster.spark.kubernetes import executor_run_labels

                for key, value in executor_run_labels(self._run_id).items():
                    builder = builder.config(key, value)
            # The pool the run was placed on (its tag after placement: the fallback, when it fell back).
            conf = SparkConfig(conf=self.conf, executor_conf=self.executor_conf).conf_for(self._tags.get(POOL_TAG))
            for key, value in conf.items():
                builder = builder.config(key, value)
            for key, value in run_spark_conf(self.master, conf, self._tags, self.default_run_cpus).items():
                builder = builder.config(key, value)
            self._session = builder.getOrCreate()
        return self._session

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._session is not None:
            self._session.stop()
            self._session = None
