"""How long runs take, from real run storage (SQLite and PostgreSQL): the median of the last
successes of the same job (and partition set), and the expected ends `read_demand` gives runs."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from dagster import DagsterEvent, DagsterEventType, DagsterRun, DagsterRunStatus

from dpe_dagster.config import parse_environment
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.scaling.history import RunDurations, median_duration
from dpe_dagster.tags import PARTITION_SET_TAG, pool_tags
from tests.reliability.harness import _ORIGIN

T0 = 1_800_000_000.0  # run times are set through the run storage's own event handling


def add_run(instance, job: str, status: DagsterRunStatus = DagsterRunStatus.NOT_STARTED, tags: dict | None = None,
            ) -> str:
    run = DagsterRun(job_name=job, run_id=str(uuid.uuid4()), status=status, tags=tags or {},
                     remote_job_origin=_ORIGIN)
    return instance.add_run(run).run_id


def event(instance, run_id: str, kind: DagsterEventType, at: float) -> None:
    instance.run_storage.handle_run_event(run_id, DagsterEvent(event_type_value=kind.value, job_name="any"),
                                          update_timestamp=datetime.fromtimestamp(at, tz=timezone.utc))


def finished_run(instance, job: str, seconds: float, start: float, ok: bool = True, tags: dict | None = None) -> str:
    run_id = add_run(instance, job, tags=tags)
    event(instance, run_id, DagsterEventType.RUN_START, start)
    event(instance, run_id, DagsterEventType.RUN_SUCCESS if ok else DagsterEventType.RUN_FAILURE, start + seconds)
    return run_id


def test_median_of_spans_ignores_unfinished_ones():
    assert median_duration([(0, 10), (5, 35), (1, 21), (3, None), (None, 9)]) == 20
    assert median_duration([]) is None


def test_expected_duration_is_the_median_of_the_jobs_last_successes(instance):
    # oldest first: two slow successes that the last five push out of the window
    for k, seconds in enumerate([1000, 1000, 10, 20, 30, 40, 50]):
        finished_run(instance, "etl", seconds, T0 + 10_000 * k)
    finished_run(instance, "etl", 5000, T0 + 100_000, ok=False)  # newest, but a failure
    finished_run(instance, "report", 7, T0 + 200_000)  # another job
    durations = RunDurations(instance, recent=5, scan=20)
    assert durations.expected("etl") == 30
    assert durations.expected("report") == 7
    assert durations.expected("never-ran") is None
    assert RunDurations(instance).expected("etl") == 40  # the default window: the last 7
    # Only the job's newest `scan` runs are read (a bounded query): the failure takes a slot.
    assert RunDurations(instance, recent=5, scan=5).expected("etl") == 35  # 20, 30, 40, 50


def test_expected_duration_of_a_partition_set_comes_from_its_own_runs(instance):
    daily = {PARTITION_SET_TAG: "etl_partition_set_daily"}
    for k, seconds in enumerate([300, 500, 400]):
        finished_run(instance, "etl", seconds, T0 + 10_000 * k, tags=daily)
    for k, seconds in enumerate([10, 20, 30]):
        finished_run(instance, "etl", seconds, T0 + 100_000 + 10_000 * k)
    durations = RunDurations(instance, recent=5, scan=20)
    assert durations.expected("etl", "etl_partition_set_daily") == 400
    assert durations.expected("etl") == 30  # the job's last five, whatever their partition set
    assert durations.expected("etl", "etl_partition_set_hourly") == 30  # no run of it yet: the job's


def test_a_bad_window_is_refused_naming_the_field(sqlite_instance):
    with pytest.raises(ValueError, match="recent: must be >= 1"):
        RunDurations(sqlite_instance, recent=0)


def local_env():
    pool = {"provider": "local", "max_size": 3, "node_cpus": 2, "node_memory_gb": 2, "price_per_node_hour": 0.04}
    return parse_environment("local", {"pools": {"spot-etl": pool}})


def test_demand_gives_started_runs_their_start_plus_and_waiting_runs_now_plus_the_expected_duration(
        instance, monkeypatch):
    for k, seconds in enumerate([100, 200, 300]):
        finished_run(instance, "etl", seconds, T0 + 10_000 * k)
    tags = pool_tags("spot-etl", cpus=1)
    started = add_run(instance, "etl", tags=tags)
    event(instance, started, DagsterEventType.RUN_START, T0 + 50_000)
    waiting = add_run(instance, "etl", DagsterRunStatus.QUEUED, tags=tags)
    new_job = add_run(instance, "never-ran", DagsterRunStatus.QUEUED, tags=tags)

    asked = []
    real = instance.get_run_records
    monkeypatch.setattr(instance, "get_run_records", lambda *a, **kw: asked.append(kw["filters"].job_name) or real(*a, **kw))
    now = T0 + 50_060
    demand = {run.run_id: run for run in read_demand(instance, local_env(), {}, now).of("spot-etl")}
    assert demand[started].expected_end == T0 + 50_000 + 200
    assert demand[waiting].expected_end == now + 200
    assert demand[new_job].expected_end is None
    # How long each takes, which the policy drains waiting runs by: the median of the job's successes.
    assert (demand[started].expected_s, demand[waiting].expected_s, demand[new_job].expected_s) == (200, 200, None)
    # One history read per distinct job among the active runs, one for the start times.
    assert sorted(job for job in asked if job) == ["etl", "never-ran"] and len(asked) == 3

    # Without pools, the demand has no expected ends, and no history is read.
    asked.clear()
    assert all(run.expected_end is None for run in read_demand(instance, local_env()).of("spot-etl"))
    assert asked == []
