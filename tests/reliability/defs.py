"""The code location of the reliability suite's daemons: dpe's two sensors for the environment
`DPE_ENV` picks, a short job in place of TPC-H (Spark is not what is under test), and a sensor
that submits `DPE_TEST_RUNS` runs of it once each (run keys make a restarted daemon not submit
them again). The job carries no retry tag: the instance's run retries (as deployed) decide."""

from __future__ import annotations

import json
import os
import time

from dagster import DefaultSensorStatus, Definitions, RunRequest, in_process_executor, job, op, sensor

from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from dpe_dagster.tags import POOL_TAG
from dpe_dagster.usage.sensor import build_ledger_sensor
from resources import repository_environment

ENV = repository_environment()


@op
def work(context) -> None:
    seconds = float(os.environ.get("DPE_TEST_RUN_S", "3"))
    context.log.info(f"working {seconds:g}s on pool {context.run.tags.get(POOL_TAG, '')}")
    time.sleep(seconds)


@job(executor_def=in_process_executor)
def short_job():
    work()


@sensor(job=short_job, minimum_interval_seconds=1, default_status=DefaultSensorStatus.RUNNING)
def submit_runs():
    tags = json.loads(os.environ.get("DPE_TEST_RUN_TAGS", '{"dpe/node_pool": "spot-etl"}'))
    for number in range(int(os.environ.get("DPE_TEST_RUNS", "0"))):
        yield RunRequest(run_key=f"run-{number}", tags=tags)


defs = Definitions(jobs=[short_job], sensors=[build_autoscaler_sensor(ENV), build_ledger_sensor(ENV), submit_runs])
