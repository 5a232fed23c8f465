"""The code location of the daemon tests of pre-warming and of the run queue: dpe's autoscaler
sensor for the environment in `DPE_TEST_ENVIRONMENT` (JSON), a job that records the pool's nodes
as it starts and then waits until the file `DPE_TEST_RELEASE` exists, a schedule of it every
minute (stopped until a test starts it), and a sensor that submits `DPE_TEST_RUNS` runs of it once each."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    ScheduleDefinition,
    in_process_executor,
    job,
    op,
    sensor,
)

from dpe_dagster.config import parse_environment
from dpe_dagster.pools import open_pool
from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from dpe_dagster.tags import pool_tags

ENV = parse_environment("local", json.loads(os.environ["DPE_TEST_ENVIRONMENT"]))
POOL = ENV.pools["spot-etl"]


@op
def work(context) -> None:
    # What the run found when it started: the nodes of its pool (a user reads this in the run's log).
    nodes = [{"id": n.id, "state": n.state, "launched_at": n.launched_at} for n in open_pool(POOL, ENV).nodes()]
    context.log.info(f"pool {POOL.name} at start: {nodes}")
    seen = Path(os.environ["DPE_TEST_SEEN"])
    seen.mkdir(parents=True, exist_ok=True)
    (seen / f"{context.run_id}.json").write_text(json.dumps({"at": time.time(), "nodes": nodes}))
    release = os.environ.get("DPE_TEST_RELEASE")
    deadline = time.monotonic() + 300
    while release and not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.5)


@job(tags=pool_tags(POOL.name, cpus=POOL.node_cpus), executor_def=in_process_executor)
def pool_job():
    work()


every_minute = ScheduleDefinition(name="every_minute", job=pool_job, cron_schedule="* * * * *",
                                  execution_timezone="UTC", default_status=DefaultScheduleStatus.STOPPED)


@sensor(job=pool_job, minimum_interval_seconds=1, default_status=DefaultSensorStatus.RUNNING)
def submit_runs():
    for number in range(int(os.environ.get("DPE_TEST_RUNS", "0"))):
        yield RunRequest(run_key=f"run-{number}")


defs = Definitions(jobs=[pool_job], sensors=[build_autoscaler_sensor(ENV), submit_runs], schedules=[every_minute])
