"""Which queued runs can start: those Dagster's run queue would hand to the launcher now; and how
many runs not submitted yet (a backfill's runs to come) it would start next to them.

A run the queue holds back (the instance's `max_concurrent_runs`, or a `tag_concurrency_limits`
entry, e.g. a pool over its daily budget) would only idle the node bought for it, so it is not
demand until the queue lets it go. The limits are the instance's own, read the way Dagster's
queue daemon reads them, and the tag limits are counted by Dagster's own counter.

Not modelled: op-level concurrency pools (a run they block may still be dequeued and then wait
inside its worker) and code locations whose dequeues Dagster has paused after an error. Both
err toward more demand, never less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.dagster_run import ACTIVE_RUN_STATUSES, DagsterRun
from dagster._core.storage.tags import PRIORITY_TAG
from dagster._utils.tags import TagConcurrencyLimitsCounter

NO_LIMIT = -1  # Dagster's value of max_concurrent_runs for "unlimited"


@dataclass(frozen=True)
class RunQueueLimits:
    max_concurrent_runs: int  # NO_LIMIT: unlimited
    # As in dagster.yaml: {"key", "value" (a string, or {"applyLimitPerUniqueValue": bool}), "limit"}
    tag_concurrency_limits: tuple[Mapping[str, Any], ...] = ()


def queue_limits(instance: DagsterInstance) -> RunQueueLimits | None:
    """The instance's run queue limits; None when its coordinator does not queue (every submitted
    run is launched at once, so every run can start)."""
    if not isinstance(instance.run_coordinator, QueuedRunCoordinator):
        return None
    # The queue daemon's own source: the coordinator's config merged with the instance's
    # `concurrency` section.
    config = instance.get_concurrency_config().run_queue_config
    if config is None:
        return None
    return RunQueueLimits(config.max_concurrent_runs, tuple(config.tag_concurrency_limits or ()))


def priority(run: DagsterRun) -> int:
    """The queue's priority of a run: its `dagster/priority` tag (`tags_priority`)."""
    return tags_priority(run.tags)


def tags_priority(tags: Mapping[str, str]) -> int:
    """The queue's priority of a run with these tags: `dagster/priority`, 0 when missing or not a number."""
    try:
        return int(tags.get(PRIORITY_TAG, "0"))
    except ValueError:
        return 0


def dequeued_now(runs: Sequence[DagsterRun], limits: RunQueueLimits) -> list[DagsterRun]:
    """The QUEUED runs among `runs` that the queue would dequeue now, in its order: highest
    priority first, then oldest first. `runs`: the active runs, oldest first; those in progress
    (STARTING, STARTED, CANCELING) count against the limits."""
    in_progress = [run for run in runs if run.status in ACTIVE_RUN_STATUSES]
    queued = [run for run in runs if run.status == DagsterRunStatus.QUEUED]
    room = len(queued) if limits.max_concurrent_runs == NO_LIMIT else limits.max_concurrent_runs - len(in_progress)
    counter = TagConcurrencyLimitsCounter(list(limits.tag_concurrency_limits), in_progress)
    out: list[DagsterRun] = []
    for run in sorted(queued, key=priority, reverse=True):  # a stable sort: oldest first within a priority
        if len(out) >= room:
            break
        if counter.is_blocked(run):
            continue
        counter.update_counters_with_launched_item(run)
        out.append(run)
    return out


def room_for_more(instance: DagsterInstance) -> int | None:
    """How many runs not yet submitted the instance's run queue would start next to the runs it
    holds: `max_concurrent_runs` minus the runs in progress and the queued runs it would dequeue now,
    never negative; None when nothing limits it (no queue, or no `max_concurrent_runs`). The active
    runs are read only when there is a limit. Tag limits are not applied to the runs to come (more
    demand, never less)."""
    limits = queue_limits(instance)
    if limits is None or limits.max_concurrent_runs == NO_LIMIT:
        return None
    runs = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.QUEUED, *ACTIVE_RUN_STATUSES]))
    in_progress = sum(run.status in ACTIVE_RUN_STATUSES for run in runs)
    dequeued = len(dequeued_now(list(reversed(runs)), limits))  # oldest first, as the queue takes them
    return max(0, limits.max_concurrent_runs - in_progress - dequeued)


def startable(instance: DagsterInstance, runs: Sequence[DagsterRun]) -> list[DagsterRun]:
    """`runs` (the active runs, newest first, as `instance.get_runs` returns them) without the
    queued runs the instance's run queue holds back now."""
    limits = queue_limits(instance)
    if limits is None:
        return list(runs)
    dequeued = {run.run_id for run in dequeued_now(list(reversed(runs)), limits)}
    return [run for run in runs if run.status != DagsterRunStatus.QUEUED or run.run_id in dequeued]
