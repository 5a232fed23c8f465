"""How long runs waited for room: from queued (the run's creation) to running (its start event),
read from Dagster's run records, per pool. The simulator measures the same span of a replayed run.

`RunWaits` reads incrementally (a cursor over the run-start events), for the exporter's histogram
and for the achieved p95 per pool and UTC day that `dpe pools` and the platform report show next to
the pool's wait target.

A pool's target held on a day when at least 95% of its runs waited within their target: the run's
own `dpe/wait_target_s` tag, else the pool's `wait_target_s`. With no run tagged, that is the p95
wait (nearest rank) at most the pool's target; a backfill tagged to wait longer does not count
against the pool's target for waiting as long as it was allowed to.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable, Mapping

from dagster import DagsterEventType, DagsterInstance, RunsFilter
from dagster._core.event_api import RunStatusChangeRecordsFilter

from dpe_dagster.config import Environment
from dpe_dagster.tags import POOL_TAG, WAIT_TARGET_TAG, TagError, parse_wait_target_s
from dpe_dagster.usage.eventlog import pages

@dataclass(frozen=True)
class RunWait:
    run_id: str
    pool: str
    queued_at: float  # unix s
    started_at: float
    target_s: float | None = None  # the run's own dpe/wait_target_s (None: its pool's)

    @property
    def seconds(self) -> float:
        return max(0.0, self.started_at - self.queued_at)

    @property
    def day(self) -> str:
        """The UTC day the run started on (YYYY-MM-DD)."""
        return time.strftime("%Y-%m-%d", time.gmtime(self.started_at))


@dataclass
class RunWaits:
    """The waits of the runs started since the cursor, for the pools named (None: every pool)."""

    pools: frozenset[str] | None = None
    cursor: str | None = None
    since: float | None = None  # the first read starts at the runs started at this time (unix s)

    def read(self, instance: DagsterInstance) -> list[RunWait]:
        """The waits of the runs that started since the last read (oldest first)."""
        found = []
        starts = RunStatusChangeRecordsFilter(DagsterEventType.RUN_START, after_timestamp=self.since) \
            if self.cursor is None and self.since is not None else DagsterEventType.RUN_START
        for result in pages(instance.fetch_run_status_changes, starts, self.cursor):
            self.cursor = result.cursor or self.cursor
            started = {r.run_id: r.timestamp for r in result.records}
            if not started:
                continue
            for record in instance.get_run_records(RunsFilter(run_ids=list(started))):
                run = record.dagster_run
                pool = run.tags.get(POOL_TAG)
                if pool and (self.pools is None or pool in self.pools):
                    found.append(RunWait(run.run_id, pool, record.create_timestamp.timestamp(), started[run.run_id],
                                         _own_target(run.tags)))
        return sorted(found, key=lambda wait: (wait.started_at, wait.run_id))


def _own_target(tags: Mapping[str, str]) -> float | None:
    """The run's own wait target; a tag dpe cannot read (the launcher fails such a run, naming it)
    leaves the run to its pool's."""
    try:
        return parse_wait_target_s(tags[WAIT_TARGET_TAG]) if WAIT_TARGET_TAG in tags else None
    except TagError:
        return None


def read_waits_since(instance: DagsterInstance, since: float, pools: Iterable[str] | None = None) -> list[RunWait]:
    """The waits of the runs of these pools that started after `since` (unix s)."""
    return RunWaits(frozenset(pools) if pools is not None else None, since=since).read(instance)


def p95(values: Iterable[float]) -> float | None:
    """The 95th percentile (nearest rank), or None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass(frozen=True)
class DayWaits:
    pool: str
    day: str
    runs: int
    p95_s: float
    target_s: float | None = None  # the pool's wait target (None: not a pool of the environment)
    past_target: int | None = None  # runs that waited longer than their target (None: no target)

    @property
    def held(self) -> bool | None:
        """Whether at least 95% of the runs waited within their target (None: no target)."""
        if self.target_s is None or self.past_target is None:
            return None
        return self.runs - self.past_target >= math.ceil(0.95 * self.runs)

    def as_json(self) -> dict:
        return {"day": self.day, "pool": self.pool, "runs": self.runs, "p95_s": self.p95_s,
                "wait_target_s": self.target_s, "past_target": self.past_target, "held": self.held}


def wait_targets(env: Environment) -> dict[str, float]:
    """Each pool's `wait_target_s`, by pool name."""
    return {name: config.wait_target_s for name, config in env.pools.items()}


def waits_by_pool_day(waits: Iterable[RunWait], targets: Mapping[str, float] | None = None) -> list[DayWaits]:
    """The achieved p95 wait of each pool on each UTC day, next to the pool's target (`targets`:
    each pool's `wait_target_s`), and how many runs waited past theirs."""
    targets = targets or {}
    grouped: dict[tuple[str, str], list[RunWait]] = {}
    for wait in waits:
        grouped.setdefault((wait.pool, wait.day), []).append(wait)
    days = []
    for (pool, day), runs in sorted(grouped.items()):
        target = targets.get(pool)
        past = None if target is None else sum(
            wait.seconds > (target if wait.target_s is None else wait.target_s) for wait in runs)
        days.append(DayWaits(pool, day, len(runs), p95(wait.seconds for wait in runs), target, past))
    return days
