"""What the simulator replays: a trace's jobs, plus scheduled runs, plus what is known ahead.

`expected` is each job's duration as production guesses it at arrival, never its true duration:
the median of the last few finished runs of the same job (same user and executable, the trace's
job), by the same rule as `scaling.history` applies to Dagster's run storage; a job with no
finished run yet has no estimate (None). A trace's requested times are not used: a Dagster run
carries none.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict, deque
from dataclasses import dataclass, field

from dpe_dagster.scaling.history import RECENT, typical_duration
from dpe_dagster.sim.trace import Trace


@dataclass
class Workload:
    name: str
    arrival: list[float]
    duration: list[float]
    cpus: list[float]
    memory_gb: list[float]
    expected: list[float | None]
    scheduled: list[bool]
    start_unix: float = 0.0
    notes: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.arrival)


def expected_durations(trace: Trace) -> list[float | None]:
    """Guess every job's duration from what was known when it arrived (the trace is in arrival order)."""
    history: dict[str, deque] = defaultdict(lambda: deque(maxlen=RECENT))
    finishing: list[tuple[float, int]] = []  # (end, job) of runs not yet finished
    out: list[float | None] = []
    for job, arrival in enumerate(trace.arrival):
        while finishing and finishing[0][0] <= arrival:
            _, done = heapq.heappop(finishing)
            if trace.key[done] is not None:
                history[trace.key[done]].appendleft(trace.duration[done])  # newest first, as run storage
        key = trace.key[job]
        out.append(typical_duration(history[key]) if key is not None and key in history else None)
        heapq.heappush(finishing, (arrival + trace.duration[job], job))
    return out


def build_workload(trace: Trace, scheduled: list[tuple[float, float, float, float]] = (),
                   *, memory: bool = False) -> Workload:
    """Merge a trace with scheduled runs (fire time, duration, cpus, memory); scheduled runs know
    their duration (a schedule's past runs) and are marked so their waits can be reported apart."""
    expected = expected_durations(trace)
    rows = [
        (trace.arrival[i], trace.duration[i], trace.cpus[i], trace.memory_gb[i] if memory else 0.0, expected[i], False)
        for i in range(len(trace))
    ]
    rows += [(t, d, c, m if memory else 0.0, d, True) for t, d, c, m in scheduled]
    rows.sort(key=lambda r: r[0])
    origin = rows[0][0] if rows else 0.0
    return Workload(
        name=trace.name,
        arrival=[r[0] - origin for r in rows],
        duration=[r[1] for r in rows],
        cpus=[r[2] for r in rows],
        memory_gb=[r[3] for r in rows],
        expected=[r[4] for r in rows],
        scheduled=[r[5] for r in rows],
        start_unix=trace.start_unix + origin,
    )


def cpu_seconds(work: Workload) -> float:
    return math.fsum(c * d for c, d in zip(work.cpus, work.duration))
