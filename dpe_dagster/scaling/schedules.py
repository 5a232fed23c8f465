"""Pre-warming: the runs that schedules will start within one boot are demand before they exist,
so their nodes are up when they fire.

`upcoming_runs` is the pure piece, shared by the production sensor and the simulator: fire times in,
`RunDemand`s out. `scheduled_runs` is the production edge: it reads the code location's schedules,
which of them run (Dagster's instigator states), their next fire times (Dagster's own cron
evaluation, in each schedule's timezone) and what their runs ask of which pool (the target job's
run tags, overridden by the schedule's).

A scheduled run is counted here until its real run exists: from then on that run (queued by
Dagster's scheduler) is demand, and counting both would buy a node twice. The pure window drops a
fire at its fire time; production also keeps a fire that has passed, for at most
SCHEDULER_GRACE_S, while Dagster has no run for it yet: the scheduler creates the run a few
seconds after the fire, and in those seconds the node booted for it, idle since it booted, must
not be taken away as idle.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Sequence

from dagster import DagsterInstance, DefaultScheduleStatus, RepositoryDefinition, RunsFilter, ScheduleDefinition
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.remote_origin import CodeLocationOrigin
from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus
from dagster._core.storage.tags import SCHEDULE_NAME_TAG, SCHEDULED_EXECUTION_TIME_TAG
from dagster._utils.schedules import schedule_execution_time_iterator

from dpe_dagster.config import Environment, PoolConfig
from dpe_dagster.scaling.activity import typical_boot_s
from dpe_dagster.scaling.policy import RunDemand
from dpe_dagster.tags import POOL_TAG, PoolRequest, TagError, pool_request


@dataclass(frozen=True)
class ScheduledRuns:
    """The runs one schedule starts: what each asks of which pool, and when they fire (unix
    seconds, ascending; a trace may hold years of them, only a bisect touches them)."""

    schedule: str
    request: PoolRequest
    fire_times: Sequence[float]


def scheduled_run_id(schedule: str, fire_time: float) -> str:
    """The same id on every tick for the same fire, so a pool's demand is stable between ticks."""
    return f"schedule:{schedule}:{round(fire_time)}"


def upcoming_runs(schedules: Iterable[ScheduledRuns], now: float, within: float) -> dict[str, list[RunDemand]]:
    """The runs the schedules will start in (now, now + within], by pool name. A fire at or before
    `now` is not returned: its real run is demand from then on."""
    by_pool: dict[str, list[RunDemand]] = defaultdict(list)
    for scheduled in schedules:
        first = bisect.bisect_right(scheduled.fire_times, now)
        last = bisect.bisect_right(scheduled.fire_times, now + within)
        request = scheduled.request
        for fire in scheduled.fire_times[first:last]:
            by_pool[request.pool].append(RunDemand(scheduled_run_id(scheduled.schedule, fire), request.cpus,
                                                   request.memory_gb, upcoming=True))
    return dict(by_pool)


def look_ahead_s(pool: PoolConfig, sensor_interval_s: float) -> float:
    """How far ahead a pool is sized for scheduled runs: a node asked for at the tick before a fire
    must have booted by then, so one typical boot plus one sensor interval."""
    return typical_boot_s(pool.boot_timeout_s) + sensor_interval_s


# -- production: what Dagster knows of the code location's schedules ------------------------------

# Dagster's scheduler evaluates schedules once a minute, at the minute: a fire's run normally
# exists seconds after it. A fire whose run never comes (the schedule skipped it, or the scheduler
# is down) keeps its node at most this much longer.
SCHEDULER_GRACE_S = 60.0

def fire_times(cron_schedule: str | Sequence[str], timezone: str | None, after: float, until: float) -> list[float]:
    """A cron schedule's fire times in (after, until], as Dagster's scheduler evaluates it in the
    timezone (None: UTC), daylight saving changes included. The simulator's schedules fire by it
    too (`sim/schedules.py`)."""
    times = (moment.timestamp() for moment in schedule_execution_time_iterator(after, cron_schedule, timezone))
    return [t for t in itertools.takewhile(lambda t: t <= until, times) if t > after]


def is_running(stored: InstigatorState | None, default_status: DefaultScheduleStatus) -> bool:
    """Whether Dagster's scheduler evaluates a schedule: its stored state, or its default status
    when none is stored. A DECLARED_IN_CODE state is what a RUNNING default left; Dagster ignores it
    once the default is no longer RUNNING (RemoteSchedule.get_current_instigator_state)."""
    if stored is None or stored.status == InstigatorStatus.DECLARED_IN_CODE:
        return default_status == DefaultScheduleStatus.RUNNING
    return stored.status == InstigatorStatus.RUNNING


def schedule_states(instance: DagsterInstance, repository_name: str,
                    location: CodeLocationOrigin | None) -> dict[str, InstigatorState]:
    """The stored states of this repository's schedules, by schedule name (one read per tick)."""
    out = {}
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE):
        origin = state.origin.repository_origin
        if origin.repository_name != repository_name:
            continue
        if location is not None and origin.code_location_origin.location_name != location.location_name:
            continue
        out[state.origin.instigator_name] = state
    return out


def schedule_request(schedule: ScheduleDefinition, repository: RepositoryDefinition,
                     env: Environment) -> PoolRequest | None:
    """What each run of the schedule asks of which pool: Dagster tags a scheduled run with its job's
    run tags, then the schedule's (which win). None: its runs name no pool."""
    job = repository.get_job(schedule.job_name)
    tags = {**job.run_tags, **schedule.tags}
    if tags.get(POOL_TAG) not in env.pools:
        return None  # no pool, or another environment's: not ours to size (as in read_demand)
    return pool_request(tags, env)


def running_since(state: InstigatorState | None) -> float:
    """When the schedule was started (the UI's toggle records it); unknown: the distant past."""
    started = getattr(state.instigator_data, "start_timestamp", None) if state is not None else None
    return started if started is not None else float("-inf")


def has_run(instance: DagsterInstance, schedule: str, fire_time: float) -> bool:
    """Whether Dagster's scheduler has created the run of this fire (it tags the run with the
    schedule's name and the fire time; the tag index makes this one lookup)."""
    fired = datetime.fromtimestamp(fire_time, timezone.utc).isoformat()
    tags = {SCHEDULE_NAME_TAG: schedule, SCHEDULED_EXECUTION_TIME_TAG: fired}
    return bool(instance.get_run_ids(RunsFilter(tags=tags), limit=1))


def scheduled_runs(instance: DagsterInstance, repository: RepositoryDefinition, location: CodeLocationOrigin | None,
                   env: Environment, now: float, until: float,
                   warn: Callable[[str], None] = lambda _: None) -> list[ScheduledRuns]:
    """The running schedules of the code location that start runs on a pool of `env`, with their
    fire times in (now, until], and the fires of the last SCHEDULER_GRACE_S whose run Dagster has
    not created yet (pass `now - SCHEDULER_GRACE_S` to `upcoming_runs` to count them)."""
    states = schedule_states(instance, repository.name, location)
    out = []
    for schedule in repository.schedule_defs:
        state = states.get(schedule.name)
        if not is_running(state, schedule.default_status):
            continue
        try:
            request = schedule_request(schedule, repository, env)
        except TagError as error:
            warn(f"schedule {schedule.name} is not pre-warmed: {error}")
            continue
        if request is None:
            continue
        # A fire from before the schedule was started has no run, and never will.
        since = max(now - SCHEDULER_GRACE_S, running_since(state))
        cron, timezone = schedule.cron_schedule, schedule.execution_timezone
        passed = [t for t in fire_times(cron, timezone, since, now) if not has_run(instance, schedule.name, t)]
        out.append(ScheduledRuns(schedule.name, request, passed + fire_times(cron, timezone, now, until)))
    return out
