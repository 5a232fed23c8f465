"""How long runs take, from Dagster's run storage: the median of a job's last few successes.

A run is expected to take as long as the median of the last `RECENT` SUCCESS runs of the same job
(start to end, from their run records) among the job's last `SCAN` runs, and of the same partition
set (tag `dagster/partition_set`) when the run has one and such successes are among them;
otherwise of the job's successes whatever their partition set. The median, not the mean: one run
that waited on a slow source must not move every estimate. A job with no success among its last
`SCAN` runs (new, or failing lately) has no estimate (None).

Cost: one run-storage query per distinct job, cached for the life of a `RunDurations` (one tick):
`RunsFilter(job_name=...)` with limit `SCAN`, newest first, served by the `idx_runs_by_job` index
(pipeline_name, id), so it reads at most `SCAN` rows whatever the history. The status is checked
here, not in SQL: with `statuses=[SUCCESS]` as well, SQLite's planner may serve the query from
`idx_run_status` (status, then row id) instead, walking every job's successes newest first until
it finds enough of this one, and a job that never succeeded then walks the whole history. The
partition set is matched here too,
not with a tag filter, which would join the run tags table and grow with history.
"""

from __future__ import annotations

import statistics
from typing import Iterable, Sequence

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunRecord, RunsFilter

from dpe_dagster.tags import PARTITION_SET_TAG

RECENT = 7  # successes the estimate is the median of
SCAN = 40  # a job's newest runs searched for successes (of the run's partition set, if any)


def typical_duration(durations: Iterable[float]) -> float | None:
    """What a run of a job is expected to take, from its recent durations: their median (one run
    that waited on a slow source must not move every estimate); None without any."""
    durations = list(durations)
    return statistics.median(durations) if durations else None


def median_duration(spans: Iterable[tuple[float | None, float | None]]) -> float | None:
    """Median of end - start over the spans that have both (seconds); None when none has."""
    return typical_duration(end - start for start, end in spans
                            if start is not None and end is not None and end >= start)


def expected_end(start_time: float | None, duration: float | None, now: float) -> float | None:
    """When a run should end: a started run at its start + the expected duration (possibly already
    past: then nothing counts on its room ending soon); a run not started yet (queued, starting)
    at now + the duration, as if it started now."""
    if duration is None:
        return None
    return (start_time if start_time is not None else now) + duration


class RunDurations:
    """Expected run durations for one tick: at most one run-storage query per job."""

    def __init__(self, instance: DagsterInstance, recent: int = RECENT, scan: int = SCAN):
        if recent < 1 or scan < recent:
            raise ValueError(f"recent: must be >= 1 and scan >= recent; got recent={recent}, scan={scan}")
        self.instance = instance
        self.recent = recent
        self.scan = scan
        self._successes: dict[str, list[RunRecord]] = {}

    def successes(self, job_name: str) -> list[RunRecord]:
        """The successes among the job's newest `scan` runs, newest first (cached)."""
        if job_name not in self._successes:
            newest = self.instance.get_run_records(filters=RunsFilter(job_name=job_name), limit=self.scan)
            self._successes[job_name] = [r for r in newest if r.dagster_run.status == DagsterRunStatus.SUCCESS]
        return self._successes[job_name]

    def expected(self, job_name: str, partition_set: str | None = None) -> float | None:
        """Expected duration (seconds) of a run of this job (and partition set), or None."""
        records = self.successes(job_name)
        if partition_set is not None:
            same = [r for r in records if r.dagster_run.tags.get(PARTITION_SET_TAG) == partition_set]
            records = same or records
        return median_duration((r.start_time, r.end_time) for r in records[: self.recent])



def expected_ends(instance: DagsterInstance, runs: Sequence[DagsterRun], now: float) -> dict[str, tuple[float, float]]:
    """Run id -> (expected end (`expected_end`), expected duration), for the runs whose job has an
    estimate. Reads one history query per distinct job, plus one by run id (the unique index) for
    the start times of the STARTED ones; a run not in storage (a caller's own demand) counts as
    not started."""
    durations = RunDurations(instance)
    expected = {run.run_id: durations.expected(run.job_name, run.tags.get(PARTITION_SET_TAG)) for run in runs}
    started = [run.run_id for run in runs if run.status == DagsterRunStatus.STARTED and expected[run.run_id] is not None]
    starts = {record.dagster_run.run_id: record.start_time
              for record in (instance.get_run_records(filters=RunsFilter(run_ids=started)) if started else [])}
    return {run_id: (end, duration) for run_id, duration in expected.items()
            if (end := expected_end(starts.get(run_id), duration, now)) is not None}
