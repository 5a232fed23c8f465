"""The code location of the reliability suite's daemons: dpe's two sensors for the environment
`DPE_ENV` picks, a short job in place of TPC-H (Spark is not what is under test), and a sensor
that submits `DPE_TEST_RUNS` runs of it once each (run keys make a restarted daemon not submit
them again).

The job stands for work on a node. In aws-sim no work lands on a simulated instance, so a run
tagged `test/watch_node` fails when an instance that served its pool when it started is
terminated while it runs: what a Spark driver on a reclaimed spot instance would do."""

from __future__ import annotations

import json
import os
import time

from dagster import DefaultSensorStatus, Definitions, Failure, RunRequest, in_process_executor, job, op, sensor

from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from dpe_dagster.scaling.tags import POOL_TAG
from dpe_dagster.usage.sensor import build_ledger_sensor
from resources import load_environment

ENV = load_environment()


def _serving(pool: str) -> set[str]:
    import boto3

    group = ENV.pool(pool).settings["group_name"]
    client = boto3.client("autoscaling", endpoint_url=os.environ.get("DPE_TEST_MOTO_URL"))
    found = client.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]
    return {i["InstanceId"] for i in found["Instances"] if i["LifecycleState"] == "InService"}


@op
def work(context) -> None:
    seconds = float(os.environ.get("DPE_TEST_RUN_S", "3"))
    watch = context.run.tags.get("test/watch_node") == "true"
    pool = context.run.tags.get(POOL_TAG, "")
    under = _serving(pool) if watch else set()
    context.log.info(f"working {seconds:g}s on pool {pool}" + (f", on {sorted(under)}" if watch else ""))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if watch and not under <= _serving(pool):
            raise Failure(f"node lost: {sorted(under - _serving(pool))} of pool {pool} was terminated under this run")


@job(tags={"dagster/max_retries": "1"}, executor_def=in_process_executor)
def short_job():
    work()


@sensor(job=short_job, minimum_interval_seconds=1, default_status=DefaultSensorStatus.RUNNING)
def submit_runs():
    tags = json.loads(os.environ.get("DPE_TEST_RUN_TAGS", '{"dpe/node_pool": "spot-etl"}'))
    for number in range(int(os.environ.get("DPE_TEST_RUNS", "0"))):
        yield RunRequest(run_key=f"run-{number}", tags=tags)


defs = Definitions(jobs=[short_job], sensors=[build_autoscaler_sensor(ENV), build_ledger_sensor(ENV), submit_runs])
