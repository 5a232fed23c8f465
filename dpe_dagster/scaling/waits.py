"""How long runs waited for room: from queued (the run's creation) to running (its start event),
read from Dagster's run records, per pool. The simulator measures the same span of a replayed run.

`RunWaits` reads incrementally (a cursor over the run-start events), for the exporter's histogram
and for the achieved p95 per pool and UTC day that `dpe pools` and the platform report show next to
the pool's wait target.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable, Mapping

from dagster import DagsterEventType, DagsterInstance, RunsFilter
from dagster._core.event_api import RunStatusChangeRecordsFilter

from dpe_dagster.tags import POOL_TAG
from dpe_dagster.usage.eventlog import pages

@dataclass(frozen=True)
class RunWait:
    run_id: str
    pool: str
    queued_at: float  # unix s
    started_at: float

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
                    found.append(RunWait(run.run_id, pool, record.create_timestamp.timestamp(), started[run.run_id]))
        return sorted(found, key=lambda wait: (wait.started_at, wait.run_id))


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
    target_s: float | None = None

    @property
    def held(self) -> bool | None:
        """Whether the p95 wait was within the target (None: no target)."""
        return None if self.target_s is None else self.p95_s <= self.target_s


def waits_by_pool_day(waits: Iterable[RunWait], targets: Mapping[str, float] | None = None) -> list[DayWaits]:
    """The achieved p95 wait of each pool on each UTC day, next to the pool's target."""
    targets = targets or {}
    grouped: dict[tuple[str, str], list[float]] = {}
    for wait in waits:
        grouped.setdefault((wait.pool, wait.day), []).append(wait.seconds)
    return [DayWaits(pool, day, len(seconds), p95(seconds), targets.get(pool))
            for (pool, day), seconds in sorted(grouped.items())]
