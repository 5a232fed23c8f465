"""Local pools and Spark applications for the tests: a `local` environment on free ports, waiting
for a condition, a Spark application that holds cores on a pool's master until told to stop."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import closing

from dpe_dagster.config import parse_environment
from dpe_dagster.spark.java import spark_process_env
from dpe_dagster.spark.resource import run_app_name


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_environment(tmp_path, **pool_overrides):
    """A `local` environment whose pool uses free ports and a temporary state folder."""
    base = free_port()
    pool = {
        "provider": "local",
        "min_size": 0,
        "max_size": 2,
        "node_cpus": 1,
        "node_memory_gb": 1,
        "lifecycle": "spot",
        "price_per_node_hour": 0.036,
        "idle_timeout_s": 3,
        # An idle node goes after idle_timeout_s, as the tests that use this pool count on; the auto
        # rule is the policy's, tested against it (tests/sim, tests/scaling/test_activity.py).
        "idle_timeout_mode": "fixed",
        "boot_timeout_s": 60,
        "default_run_cpus": 1,
        "default_run_memory_gb": 1,
        "settings": {
            "state_dir": str(tmp_path / "pool"),
            "master_port": free_port(),
            "master_webui_port": free_port(),
            "worker_port_base": 20000 + base % 20000,
            "worker_webui_port_base": 40000 + base % 20000,
        },
    }
    pool.update(pool_overrides)
    return parse_environment("local", {"pools": {"spot-etl": pool}, "sensor_interval_s": 1})


def wait_for(predicate, timeout_s=60, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


# A run's Spark work: a session on the pool's master, named as dpe's SparkResource names it, that
# holds its executor until told to stop (its stdin closes).
RUN_SCRIPT = """
import sys
from pyspark.sql import SparkSession

master, name, cores = sys.argv[1:4]
spark = (SparkSession.builder.master(master).appName(name)
         .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.ui.enabled", "false").config("spark.cores.max", cores)
         .config("spark.executor.memory", "512m").getOrCreate())
print("session up", flush=True)
sys.stdin.read()
spark.stop()
"""


def start_spark_run(master_url: str, run_id: str, cores: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, master_url, run_app_name("dpe", run_id), str(cores)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=spark_process_env())


def stop_spark_run(process: subprocess.Popen) -> None:
    try:
        process.stdin.close()
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
