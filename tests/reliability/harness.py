"""Shared parts of the reliability suite: moto behind the fault injector, a real Dagster
instance, the aws-sim environment pointed at the injector, and runs queued and advanced as the
daemon would."""

from __future__ import annotations

import time
import urllib.request
import uuid
from typing import Callable

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._core.events import DagsterEvent
from dagster._core.instance.ref import InstanceRef
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRun

from dpe_dagster.config import Environment, parse_environment
from dpe_dagster.pools.aws.emulator import create_groups
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.cursor import dump_cursor, load_cursor
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.tags import CPU_TAG, POOL_TAG
from resources import aws_sim
from tests.support.aws import REGION, clients  # noqa: F401  (REGION: for the suite's modules)

# The dummy secret of the suite: no log, event or report may ever show it.
SECRET = "dpe-reliability-secret-7f3a9c2e1b"
KEY_ID = "AKIADPERELIABILITY01"


def environment(idle_timeout_s: float = 6, sensor_interval_s: int = 2) -> Environment:
    """aws-sim, with a short idle timeout; the endpoint comes from AWS_ENDPOINT_URL (the injector)."""
    raw = aws_sim.environment()
    raw["sensor_interval_s"] = sensor_interval_s
    raw["aws"]["max_attempts"] = 8
    for pool in raw["pools"].values():
        pool["idle_timeout_s"] = idle_timeout_s
    return parse_environment("aws-sim", raw)


def group(autoscaling, name: str) -> dict:
    return autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]


def alive_instances(autoscaling, ec2, name: str) -> list[str]:
    """Instances of the group that EC2 still runs (or is starting): what would be billed."""
    ids = [i["InstanceId"] for i in group(autoscaling, name)["Instances"]]
    if not ids:
        return []
    out = []
    for reservation in ec2.describe_instances(InstanceIds=ids)["Reservations"]:
        out += [i["InstanceId"] for i in reservation["Instances"] if i["State"]["Name"] in ("pending", "running")]
    return out


_ORIGIN = RemoteJobOrigin(
    RemoteRepositoryOrigin(GrpcServerCodeLocationOrigin(host="127.0.0.1", port=4266, location_name="dpe"),
                           "__repository__"), "tpch")


def new_run(instance: DagsterInstance, tags: dict[str, str], status: DagsterRunStatus) -> DagsterRun:
    """A run of a job in a code location, as a submitted run is (the queue requires the origin)."""
    return instance.add_run(DagsterRun(job_name="tpch", run_id=str(uuid.uuid4()), status=status,
                                       remote_job_origin=_ORIGIN, tags=tags))


def queue_run(instance: DagsterInstance, pool: str, cpus: int = 2) -> str:
    return new_run(instance, {POOL_TAG: pool, CPU_TAG: str(cpus)}, DagsterRunStatus.QUEUED).run_id


def advance(instance: DagsterInstance, run_id: str, event: DagsterEventType) -> None:
    """The run's status only (no event log entry): what the autoscaler reads."""
    instance.run_storage.handle_run_event(run_id, DagsterEvent(event_type_value=event.value, job_name="tpch"))


def report_run_event(instance: DagsterInstance, run_id: str, event: DagsterEventType) -> None:
    """A run event as Dagster's run worker reports it: in the run's event log, which also sets its
    status (the usage ledger reads run-finished events there)."""
    instance.report_dagster_event(DagsterEvent(event_type_value=event.value, job_name="tpch"), run_id=run_id)


def wait_for(what: str, check: Callable[[], object], timeout_s: float, every_s: float = 1.0,
             detail: Callable[[], str] = lambda: "") -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}. {detail()}")
        time.sleep(every_s)


@pytest.fixture
def aws_env(moto, monkeypatch, tmp_path):
    """aws-sim's groups in a clean emulator (`moto`: tests.support.aws), and a real instance."""
    urllib.request.urlopen(urllib.request.Request(f"{moto.url}/moto-api/reset", data=b"", method="POST")).close()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    env = environment()
    autoscaling, ec2 = clients(moto.url)
    create_groups(env, autoscaling, ec2)
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path)))
    yield env, instance, autoscaling, ec2
    instance.dispose()


def tick(instance, env, pool, memory, now):
    config = env.pool("spot-etl")
    result, memory = scale_pool(instance, config, pool, read_demand(instance, env).of("spot-etl"), memory, now)
    # Through the sensor's cursor, as a restarted daemon would read it.
    return result, load_cursor(dump_cursor({"spot-etl": memory}))["spot-etl"]
