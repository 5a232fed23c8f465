"""Pre-warming for schedules: the pure window over fire times, Dagster's own cron evaluation in a
schedule's timezone, and which schedules count (a real instance's instigator states)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from dagster import DefaultScheduleStatus, Definitions, ScheduleDefinition, job, op
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteInstigatorOrigin, RemoteRepositoryOrigin
from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus, ScheduleInstigatorData
from dagster._core.storage.tags import SCHEDULE_NAME_TAG, SCHEDULED_EXECUTION_TIME_TAG
from dagster._core.test_utils import create_run_for_test

from dpe_dagster.scaling.activity import TYPICAL_BOOT_S
from dpe_dagster.scaling.policy import RunDemand
from dpe_dagster.scaling.schedules import (
    SCHEDULER_GRACE_S,
    ScheduledRuns,
    fire_times,
    look_ahead_s,
    scheduled_run_id,
    scheduled_runs,
    upcoming_runs,
)
from dpe_dagster.tags import PoolRequest, pool_tags
from tests.support.local import local_environment


def utc(*fields) -> float:
    return datetime(*fields, tzinfo=timezone.utc).timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


ETL = PoolRequest("spot-etl", 2, 4)


# -- the pure window ------------------------------------------------------------------------------

def test_only_fires_after_now_and_within_the_window_are_demand():
    hourly = ScheduledRuns("hourly", ETL, [3600.0 * h for h in range(1, 25)])
    assert upcoming_runs([hourly], now=3600 - 61, within=60) == {}  # fires 61 s from now: not yet
    assert upcoming_runs([hourly], now=3600 - 60, within=60) == {
        "spot-etl": [RunDemand("schedule:hourly:3600", 2, 4, upcoming=True)]}  # the window's end is in it
    # At its fire time the scheduled run is Dagster's to queue: it is no longer counted here.
    assert upcoming_runs([hourly], now=3600, within=60) == {}
    assert [r.run_id for r in upcoming_runs([hourly], now=3599, within=7201)["spot-etl"]] == [
        "schedule:hourly:3600", "schedule:hourly:7200", "schedule:hourly:10800"]


def test_run_ids_are_stable_per_schedule_and_fire_and_runs_go_to_their_pools():
    a = ScheduledRuns("a", ETL, [100.0])
    b = ScheduledRuns("b", PoolRequest("gpu", 8, 32), [100.0, 150.0])
    first = upcoming_runs([a, b], now=50, within=100)
    assert first == upcoming_runs([a, b], now=60, within=100), "the same runs on the next tick"
    assert first == {"spot-etl": [RunDemand("schedule:a:100", 2, 4, upcoming=True)],
                     "gpu": [RunDemand("schedule:b:100", 8, 32, upcoming=True), RunDemand("schedule:b:150", 8, 32, upcoming=True)]}
    assert scheduled_run_id("a", 100.0) != scheduled_run_id("b", 100.0)


def test_a_year_of_fire_times_is_windowed_without_copying_it():
    minutely = ScheduledRuns("m", ETL, range(0, 365 * 86400, 60))  # a range: indexable, never materialised
    runs = upcoming_runs([minutely], now=200 * 86400 + 30, within=120)["spot-etl"]
    assert [r.run_id for r in runs] == [f"schedule:m:{200 * 86400 + 60}", f"schedule:m:{200 * 86400 + 120}"]


def test_look_ahead_is_one_typical_boot_plus_one_sensor_interval(tmp_path):
    quick = local_environment(tmp_path, boot_timeout_s=20).pools["spot-etl"]
    slow = local_environment(tmp_path, boot_timeout_s=900).pools["spot-etl"]
    assert look_ahead_s(quick, 30) == 20 + 30
    assert look_ahead_s(slow, 30) == TYPICAL_BOOT_S + 30


# -- Dagster's cron evaluation ------------------------------------------------------------------------

@op
def work():
    pass


@job(tags=pool_tags("spot-etl", cpus=1, memory="1g"))
def etl():
    work()


NEW_YORK = "America/New_York"


def test_a_new_york_schedule_keeps_its_local_time_across_the_autumn_dst_change():
    # 9:00 in New York is 13:00 UTC in summer time (EDT) and 14:00 UTC from 1 November 2026 (EST).
    fires = fire_times("0 9 * * *", NEW_YORK, utc(2026, 10, 30), utc(2026, 11, 3))
    assert [iso(t) for t in fires] == ["2026-10-30 13:00", "2026-10-31 13:00", "2026-11-01 14:00", "2026-11-02 14:00"]
    # 1:30 happens twice on the night of the change: Dagster's scheduler fires once, not twice.
    fires = fire_times("30 1 * * *", NEW_YORK, utc(2026, 10, 31, 12), utc(2026, 11, 1, 12))
    assert [iso(t) for t in fires] == ["2026-11-01 06:30"]


def test_a_new_york_schedule_at_a_time_the_spring_change_skips_fires_at_the_next_time():
    fires = fire_times("30 2 * * *", NEW_YORK, utc(2026, 3, 7), utc(2026, 3, 10))
    # 2:30 does not exist on 8 March 2026 in New York: Dagster fires at 3:00 EDT (07:00 UTC).
    assert [iso(t) for t in fires] == ["2026-03-07 07:30", "2026-03-08 07:00", "2026-03-09 06:30"]


def test_fire_times_exclude_the_start_and_include_the_end():
    assert fire_times("0 * * * *", None, utc(2026, 1, 1, 10), utc(2026, 1, 1, 12)) == [utc(2026, 1, 1, 11), utc(2026, 1, 1, 12)]


# -- which schedules count, and what their runs ask for ------------------------------------------------

LOCATION = RegisteredCodeLocationOrigin("dpe")


@pytest.fixture
def location(instance):
    """A code location of this test alone (the PostgreSQL database is shared, and its schedule
    states are not wiped between tests); its states are deleted after."""
    origin = RegisteredCodeLocationOrigin(f"dpe-test-{uuid.uuid4().hex[:10]}")
    yield origin
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE):
        if state.origin.repository_origin.code_location_origin.location_name == origin.location_name:
            instance.delete_instigator_state(state.instigator_origin_id, state.selector_id)


def stored(instance, location, repository: str, name: str, status: InstigatorStatus) -> None:
    origin = RemoteInstigatorOrigin(RemoteRepositoryOrigin(location, repository), name)
    instance.add_instigator_state(
        InstigatorState(origin, InstigatorType.SCHEDULE, status, ScheduleInstigatorData("* * * * *", 0.0)))


def schedule(name: str, status: DefaultScheduleStatus, **kwargs) -> ScheduleDefinition:
    return ScheduleDefinition(name=name, job=etl, cron_schedule="*/10 * * * *", default_status=status, **kwargs)


def test_only_running_schedules_count_with_their_default_status_when_none_is_stored(instance, location, tmp_path):
    env = local_environment(tmp_path)
    defs = Definitions(jobs=[etl], schedules=[
        schedule("default_running", DefaultScheduleStatus.RUNNING),
        schedule("default_stopped", DefaultScheduleStatus.STOPPED),
        schedule("started_in_ui", DefaultScheduleStatus.STOPPED),
        schedule("stopped_in_ui", DefaultScheduleStatus.RUNNING),
        # Its default was RUNNING once (the row that left), and is STOPPED now: Dagster ignores the row.
        schedule("default_changed", DefaultScheduleStatus.STOPPED),
    ])
    repository = defs.get_repository_def()
    stored(instance, location, repository.name, "started_in_ui", InstigatorStatus.RUNNING)
    stored(instance, location, repository.name, "stopped_in_ui", InstigatorStatus.STOPPED)
    stored(instance, location, repository.name, "default_changed", InstigatorStatus.DECLARED_IN_CODE)
    stored(instance, location, "another_repository", "default_stopped", InstigatorStatus.RUNNING)

    runs = scheduled_runs(instance, repository, location, env, utc(2026, 1, 1, 10, 1), utc(2026, 1, 1, 10, 25))
    assert sorted(s.schedule for s in runs) == ["default_running", "started_in_ui"]
    assert runs[0].request == PoolRequest("spot-etl", 1, 1)
    assert list(runs[0].fire_times) == [utc(2026, 1, 1, 10, 10), utc(2026, 1, 1, 10, 20)]


def test_the_schedules_tags_override_its_jobs_and_a_bad_tag_is_named(sqlite_instance, tmp_path):
    env = local_environment(tmp_path)
    bigger = schedule("bigger", DefaultScheduleStatus.RUNNING, tags={"dpe/cpu": "2", "dpe/memory": "1536m"})
    broken = schedule("broken", DefaultScheduleStatus.RUNNING, tags={"dpe/cpu": "lots"})
    elsewhere = schedule("elsewhere", DefaultScheduleStatus.RUNNING, tags={"dpe/node_pool": "other-env-pool"})
    repository = Definitions(jobs=[etl], schedules=[bigger, broken, elsewhere]).get_repository_def()
    warnings: list[str] = []
    runs = scheduled_runs(sqlite_instance, repository, LOCATION, env, 0, 3600, warn=warnings.append)
    assert [(s.schedule, s.request) for s in runs] == [("bigger", PoolRequest("spot-etl", 2, 1.5))]
    assert len(warnings) == 1 and "schedule broken" in warnings[0] and "tag dpe/cpu" in warnings[0]


@pytest.mark.parametrize("cron", ["0 9 * * *", ["0 9 * * *", "30 17 * * 1-5"]])
def test_a_schedule_with_several_cron_strings_fires_at_each(cron):
    fires = fire_times(cron, "UTC", utc(2026, 1, 5), utc(2026, 1, 6))  # a Monday
    expected = ["2026-01-05 09:00"] + (["2026-01-05 17:30"] if isinstance(cron, list) else [])
    assert [iso(t) for t in fires] == expected


def test_a_fire_that_passed_counts_until_dagster_has_created_its_run(instance, location, tmp_path):
    """Between a fire and the scheduler creating its run, the node booted for it must stay wanted;
    once the run exists it is the run that is demand."""
    env = local_environment(tmp_path)
    every_ten = schedule("every_ten", DefaultScheduleStatus.RUNNING)
    repository = Definitions(jobs=[etl], schedules=[every_ten]).get_repository_def()
    now = utc(2026, 1, 1, 10, 10, 30)

    def upcoming():
        runs = scheduled_runs(instance, repository, location, env, now, now + 60)
        return upcoming_runs(runs, now - SCHEDULER_GRACE_S, 60 + SCHEDULER_GRACE_S).get("spot-etl", [])

    assert [r.run_id for r in upcoming()] == [scheduled_run_id("every_ten", utc(2026, 1, 1, 10, 10))]
    # The scheduler's run for that fire, tagged as Dagster tags it.
    create_run_for_test(instance, job_name="etl", tags={
        **pool_tags("spot-etl", cpus=1), SCHEDULE_NAME_TAG: "every_ten",
        SCHEDULED_EXECUTION_TIME_TAG: datetime(2026, 1, 1, 10, 10, tzinfo=timezone.utc).isoformat()})
    assert upcoming() == []
    # Started (in the UI) after its last fire: that fire never had a run to wait for.
    started_late = schedule("started_late", DefaultScheduleStatus.STOPPED)
    repository = Definitions(jobs=[etl], schedules=[started_late]).get_repository_def()
    origin = RemoteInstigatorOrigin(RemoteRepositoryOrigin(location, repository.name), "started_late")
    instance.add_instigator_state(InstigatorState(origin, InstigatorType.SCHEDULE, InstigatorStatus.RUNNING,
                                                  ScheduleInstigatorData("*/10 * * * *", now - 10)))
    assert upcoming() == []
    # A fire whose run never came is let go after the grace.
    later = ScheduledRuns("every_ten", PoolRequest("spot-etl", 1, 1), [utc(2026, 1, 1, 10, 20)])
    assert upcoming_runs([later], utc(2026, 1, 1, 10, 20) + 1 - SCHEDULER_GRACE_S, 60 + SCHEDULER_GRACE_S)
    assert not upcoming_runs([later], utc(2026, 1, 1, 10, 20) + 1, 60)
