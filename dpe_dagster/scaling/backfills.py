"""A backfill's runs to come: the runs that job backfills in progress will still submit are demand
before they exist, as far as the run queue would start them.

Dagster's backfill daemon submits a job backfill's runs in chunks, in the order of the backfill's
partitions, and records after each chunk the last partition it submitted
(`last_submitted_partition_name`). The runs still to come are those of the partitions after that
checkpoint, less the partitions whose run the daemon has created since (the chunk it is submitting),
counted as the daemon counts them: one run per partition, or, under the job's backfill policy, one
run per range of partitions (at most `max_partitions_per_run` each; a single-run policy: one per
contiguous range), split by Dagster's own function. A backfill re-executing from failure submits a
run only for a partition whose last run failed: only those count. A run to come carries the tags
Dagster gives a backfill's run (its job's tags, the partition set's, then the backfill's, which
win), read with `pool_request` as a real run's are; how long it takes is the median of its job's
recent successes in the same partition set (scaling/history.py).

Once the daemon has created a run, it is in run storage and `read_demand` counts it (when the queue
would start it): the chunk past the checkpoint is matched against the backfill's newest runs, so no
run is counted twice.

The runs to come count only as far as the run queue would start them next to the runs it holds
(`admission.room_for_more`): a backfill of many partitions under `max_concurrent_runs` asks for the
nodes its runs will use at once, not one per partition. Across backfills, runs of a higher
`dagster/priority`, then of the older backfill, take the room first.

Not counted: asset backfills. Their runs carry the backfill's tags and partition tags only (no
job's tags: an asset's `pool_tags` reach a run through the job that runs it, which an asset backfill
does not name), and the daemon requests the target roots in its first iteration, then a downstream
partition only once its parents have materialized, grouping partitions of several assets into one
run by their partitioning and backfill policy. Which runs such a backfill will still submit is
decided iteration by iteration from what has materialized; the ones that wait on a parent could
not start now in any case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from dagster import DagsterInstance, DagsterRunStatus, JobDefinition, RepositoryDefinition, RunsFilter
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.definitions.partitions.partition_key_range import PartitionKeyRange
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus, PartitionBackfill
from dagster._core.execution.job_backfill import CHECKPOINT_COUNT, _subdivide_partition_key_range
from dagster._core.remote_origin import CodeLocationOrigin
from dagster._core.storage.tags import (ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG,
                                        BACKFILL_ID_TAG, PARTITION_NAME_TAG)
from dagster._time import datetime_from_timestamp

from dpe_dagster.config import Environment
from dpe_dagster.scaling.admission import room_for_more, tags_priority
from dpe_dagster.scaling.demand import Demand, run_pods
from dpe_dagster.scaling.history import RunDurations
from dpe_dagster.scaling.policy import RunDemand
from dpe_dagster.tags import PARTITION_SET_TAG, POOL_TAG, PoolRequest, TagError, pool_request

# The backfill's newest runs searched for the chunk past the checkpoint: one chunk, and as many
# again for retries of its earlier runs (a retry made while the backfill runs keeps its tag).
NEWEST_RUNS = 2 * CHECKPOINT_COUNT


@dataclass(frozen=True)
class JobBackfill:
    """A job backfill in progress whose runs land on a pool of the environment."""

    backfill: PartitionBackfill
    job: JobDefinition
    request: PoolRequest
    priority: int


def run_to_come_id(backfill_id: str, partitions: str) -> str:
    """The same id on every tick for the same run to come (a partition, or a range 'start...end')."""
    return f"backfill:{backfill_id}:{partitions}"


def in_location(backfill: PartitionBackfill, repository_name: str, location: CodeLocationOrigin | None) -> bool:
    """Whether a job backfill targets a job of this code location's repository (without a location:
    of a repository of that name)."""
    origin = backfill.partition_set_origin
    if origin is None:
        return False
    repository = origin.repository_origin
    if repository.repository_name != repository_name:
        return False
    return location is None or repository.code_location_origin.location_name == location.location_name


def backfill_run_tags(backfill: PartitionBackfill, job: JobDefinition) -> dict[str, str]:
    """The tags a job backfill's runs carry, as Dagster's backfill daemon sets them: the job's
    (definition) tags, the partition set's, then the backfill's, which win. Tags a partitioned
    config adds per partition are not read: a pool is named for the job or the backfill."""
    return {**job.tags, PARTITION_SET_TAG: backfill.partition_set_name or "", **backfill.tags}


def job_backfills(instance: DagsterInstance, repository: RepositoryDefinition, location: CodeLocationOrigin | None,
                  env: Environment, rejected: dict[str, str]) -> list[JobBackfill]:
    """The job backfills in progress (REQUESTED) of this code location whose runs name a pool of
    `env`, oldest first. A backfill whose tags dpe cannot use is left out, with why in `rejected`
    (by backfill id); one whose job is no longer in the repository is left out (the daemon fails it)."""
    backfills = instance.get_backfills(filters=BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED]))
    out = []
    for backfill in sorted(backfills, key=lambda b: b.backfill_timestamp):
        if backfill.is_asset_backfill or not in_location(backfill, repository.name, location):
            continue
        job_name = backfill.job_name
        if job_name is None or not repository.has_job(job_name):
            continue
        job = repository.get_job(job_name)
        tags = backfill_run_tags(backfill, job)
        if tags.get(POOL_TAG) not in env.pools:
            continue  # no pool, or another environment's: not ours to size (as in read_demand)
        try:
            request = pool_request(tags, env)
        except TagError as error:
            rejected[backfill.backfill_id] = str(error)
            continue
        if request is not None:
            out.append(JobBackfill(backfill, job, request, tags_priority(tags)))
    return out


def submitted_partitions(instance: DagsterInstance, backfill: PartitionBackfill, job: JobDefinition) -> set[str]:
    """The partitions of the backfill's newest runs, which hold those the daemon has submitted past
    its checkpoint."""
    runs = instance.get_runs(RunsFilter(tags={BACKFILL_ID_TAG: backfill.backfill_id}), limit=NEWEST_RUNS)
    out: set[str] = set()
    for run in runs:
        start, end = run.tags.get(ASSET_PARTITION_RANGE_START_TAG), run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
        if run.tags.get(PARTITION_NAME_TAG):
            out.add(run.tags[PARTITION_NAME_TAG])
        elif start and end and job.partitions_def is not None:
            out.update(job.partitions_def.get_partition_keys_in_range(PartitionKeyRange(start=start, end=end)))
    return out


def last_run_failed(instance: DagsterInstance, job: JobDefinition, partition_set: str) -> set[str]:
    """The partitions of the job's partition set whose newest run failed (one read of the run
    storage's partition column)."""
    data = instance.get_run_partition_data(RunsFilter(job_name=job.name, tags={PARTITION_SET_TAG: partition_set}))
    return {d.partition for d in data if d.status == DagsterRunStatus.FAILURE}


def runs_to_come(instance: DagsterInstance, backfill: PartitionBackfill, job: JobDefinition) -> list[str]:
    """The runs the daemon will still submit for a job backfill, in its order, each named by its
    partition or its range of partitions ('start...end')."""
    names: Sequence[str] = backfill.partition_names or []
    checkpoint = backfill.last_submitted_partition_name
    if checkpoint and checkpoint in names:
        names = names[names.index(checkpoint) + 1:]
    if not names:
        return []
    submitted = submitted_partitions(instance, backfill, job)
    names = [name for name in names if name not in submitted]
    if backfill.from_failure and names:
        failed = last_run_failed(instance, job, backfill.partition_set_name or "")
        names = [name for name in names if name in failed]
    policy = job.backfill_policy
    partitions_def = job.partitions_def
    if not names or policy is None or policy.max_partitions_per_run == 1 or partitions_def is None:
        return names
    with partition_loading_context(effective_dt=datetime_from_timestamp(backfill.backfill_timestamp),
                                   dynamic_partitions_store=instance):
        ranges = partitions_def.subset_with_partition_keys(names).get_partition_key_ranges(partitions_def)
        return [f"{part.start}...{part.end}" for whole in ranges
                for part in _subdivide_partition_key_range(partitions_def, whole, policy.max_partitions_per_run)]


def backfill_demand(instance: DagsterInstance, repository: RepositoryDefinition, location: CodeLocationOrigin | None,
                    env: Environment) -> Demand:
    """The runs this code location's job backfills in progress will still submit, on each pool of
    `env` (what lands where: `run_pods`, as for a real run), as far as the run queue would start
    them; waiting, so with no node. `rejected`: backfill id -> why its runs are not counted."""
    demand = Demand()
    if not env.pools:
        return demand
    backfills = job_backfills(instance, repository, location, env, demand.rejected)
    if not backfills:
        return demand
    room = room_for_more(instance)
    if room == 0:
        return demand
    durations = RunDurations(instance)
    to_come: list[tuple[int, str, PoolRequest, float | None]] = []
    for each in backfills:
        expected = durations.expected(each.job.name, each.backfill.partition_set_name)
        to_come += [(each.priority, run_to_come_id(each.backfill.backfill_id, partitions), each.request, expected)
                    for partitions in runs_to_come(instance, each.backfill, each.job)]
    to_come.sort(key=lambda run: run[0], reverse=True)  # a stable sort: the older backfill first within a priority
    for _, run_id, request, expected in to_come if room is None else to_come[:room]:
        for pod in run_pods(request, env).pods():
            demand.by_pool[pod.pool].append(RunDemand(run_id, pod.cpus, pod.memory_gb, wait_target_s=pod.wait_target_s,
                                                      expected_s=expected))
    return demand
