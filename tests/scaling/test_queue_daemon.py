"""A real dagster-daemon on a real instance and a real local pool (Spark standalone workers):
a schedule's node is up before the schedule fires, and a run the run queue holds back buys no node.

The instance is dpe's (its run coordinator, limits and monitoring), except for the launcher:
dpe's launcher loads its environment by name from the project's resources, and the test pool is
a temporary one on free ports. Dagster's default launcher starts the run; the sizing under test
is the autoscaler sensor's."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteInstigatorOrigin, RemoteRepositoryOrigin
from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus, ScheduleInstigatorData
from dagster._core.storage.tags import SCHEDULE_NAME_TAG, SCHEDULED_EXECUTION_TIME_TAG

from dpe_dagster.config import Environment
from dpe_dagster.daemon import dagster_bin, start_dagster_process, stop_process_group
from dpe_dagster.instance import write_instance
from dpe_dagster.pools import open_pool
from dpe_dagster.scaling.cursor import AUTOSCALER_SENSOR
from dpe_dagster.scaling.schedules import look_ahead_s
from tests.support.local import local_environment
from tests.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow


def raw_environment(env: Environment) -> dict:
    """The environment as the JSON the code location parses again."""
    return env.as_file()


def code_location_env(folder: Path, env: Environment) -> dict[str, str]:
    return {"DPE_TEST_ENVIRONMENT": json.dumps(raw_environment(env)), "DPE_TEST_SEEN": str(folder / "seen"),
            "DPE_HOME": str(folder / "dpe")}


@contextlib.contextmanager
def deployment(folder: Path, env: Environment, **test_env: str):
    """A daemon loading tests/queue_defs.py for `env`; yields (instance, pool, folder of what runs saw)."""
    home = folder / "dagster"
    write_instance(home, env, {"run_launcher": {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"}})
    workspace = folder / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "tests.queue_defs", "working_directory": str(PROJECT_ROOT), "location_name": "dpe"}}]}))
    seen = folder / "seen"
    daemon_env = {**code_location_env(folder, env), **test_env}
    pool = open_pool(env.pools["spot-etl"], env)
    daemon = start_dagster_process([dagster_bin("dagster-daemon"), "run", "-w", str(workspace)], home,
                                   folder / "daemon.log", daemon_env)
    instance = DagsterInstance.from_config(str(home))
    try:
        yield instance, pool, seen
    finally:
        stop_process_group(daemon)
        instance.dispose()
        pool.shutdown()


def wait_for(what: str, check, timeout_s: float, log: Path):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log.read_text(errors='replace')[-4000:]}"
        time.sleep(0.25)


def sensor_ticked(instance: DagsterInstance) -> float | None:
    """When the autoscaler sensor last ticked, if it has."""
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == AUTOSCALER_SENSOR:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
            if ticks:
                return ticks[0].timestamp
    return None


def fired_at(run) -> float:
    return datetime.fromisoformat(run.tags[SCHEDULED_EXECUTION_TIME_TAG]).timestamp()


def start_schedule(instance: DagsterInstance, name: str, cron: str) -> None:
    """Store the schedule's state RUNNING, as the UI's toggle and `dagster schedule start` do (at
    once: that command loads the code location first, tens of seconds on a busy machine).
    Dagster's scheduler finds it by the schedule's selector: code location, repository, name."""
    origin = RemoteInstigatorOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("dpe"), "__repository__"), name)
    instance.add_instigator_state(InstigatorState(origin, InstigatorType.SCHEDULE, InstigatorStatus.RUNNING,
                                                  ScheduleInstigatorData(cron, start_timestamp=time.time())))


def test_a_schedules_node_is_up_before_it_fires_and_its_run_starts_on_it(tmp_path):
    # A worker JVM on a busy two-core machine takes up to half a minute to register: the pool says so.
    env = local_environment(tmp_path, boot_timeout_s=40, idle_timeout_s=60)
    window = look_ahead_s(env.pools["spot-etl"], env.sensor_interval_s)
    log = tmp_path / "daemon.log"
    with deployment(tmp_path, env) as (instance, pool, seen):
        wait_for("the autoscaler sensor's first tick", lambda: sensor_ticked(instance), 240, log)
        # Started early enough in a minute, the schedule first fires at the next minute, and the
        # sensor has a whole window before that fire (no earlier fire has brought a node up).
        while time.time() % 60 > 60 - window - 5:
            time.sleep(0.2)
        start_schedule(instance, "every_minute", "* * * * *")
        fire = (int(time.time()) // 60 + 1) * 60
        running_at = node = None
        while time.time() < fire:
            nodes = pool.nodes()
            if running_at is None and any(n.state == "running" for n in nodes):
                running_at, node = time.time(), next(n for n in nodes if n.state == "running")
            time.sleep(0.25)
        assert node is not None, f"no node was running when the schedule fired at {fire}\n{log.read_text()[-4000:]}"
        # Started for the fire: within its look-ahead (plus the sensor daemon's cadence), not sooner.
        assert fire - window - 10 <= node.launched_at < fire

        def scheduled_run_done():
            runs = [r for r in instance.get_runs() if r.tags.get(SCHEDULE_NAME_TAG) == "every_minute"
                    and fired_at(r) == fire and r.status == DagsterRunStatus.SUCCESS]
            return runs[0] if runs else None

        run = wait_for("the scheduled run to succeed", scheduled_run_done, 240, log)
        started = json.loads((seen / f"{run.run_id}.json").read_text())
        # The run found the node that had been running before it fired, still up, and no other.
        assert started["nodes"] == [{"id": node.id, "state": "running", "launched_at": node.launched_at}], started


def test_a_run_the_queue_holds_back_buys_no_node(tmp_path):
    env = local_environment(tmp_path, idle_timeout_s=60).model_copy(update={"max_concurrent_runs": 1})
    release = tmp_path / "release"
    log = tmp_path / "daemon.log"
    with deployment(tmp_path, env, DPE_TEST_RUNS="2", DPE_TEST_RELEASE=str(release)) as (instance, pool, seen):
        def one_started_one_queued():
            statuses = sorted(r.status.value for r in instance.get_runs())
            return statuses == ["QUEUED", "STARTED"]

        wait_for("one run started and one held in the queue", one_started_one_queued, 240, log)
        wait_for("the started run's node", lambda: any(n.state == "running" for n in pool.nodes()), 120, log)
        # The autoscaler ticks every second: watch a good many ticks while the second run waits.
        ticks_before = sensor_ticked(instance)
        deadline = time.time() + 15
        while time.time() < deadline:
            assert pool.target() == 1 and len(pool.nodes()) == 1, (
                f"the pool grew for a run the queue holds back: target {pool.target()}, nodes {pool.nodes()}")
            assert one_started_one_queued()
            time.sleep(0.25)
        assert sensor_ticked(instance) > ticks_before + 5, "the autoscaler did not tick while watched"

        release.touch()  # the first run ends; the queue lets the second go, onto the same node
        wait_for("both runs to succeed", lambda: [r.status for r in instance.get_runs()] == [
            DagsterRunStatus.SUCCESS] * 2, 240, log)
        for record in seen.glob("*.json"):  # what each run found at its start: never a second node
            assert {n["id"] for n in json.loads(record.read_text())["nodes"]} <= {"spot-etl-worker-1"}
