"""Scheduled runs on top of a trace: a small cron file, expanded to fire times.

One schedule per line: `NAME MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK CPUS DURATION_S`, the
five fields a cron string of a Dagster schedule (`*`, numbers, `a-b`, `a,b`, `*/n`, `a-b/n`; day
of week 0-6, Sunday 0), read and evaluated in UTC by Dagster's cron evaluation, as production
reads a code location's schedules (`scaling.schedules.fire_times`). `#` starts a comment.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from dagster._utils.schedules import is_valid_cron_string

from dpe_dagster.scaling.schedules import fire_times

CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 6))
LINE_FORM = "NAME MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK CPUS DURATION_S"


class ScheduleError(ValueError):
    """A schedule file line is not allowed; the message names the line and the field."""


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    cpus: float
    duration_s: float


def _cron(fields: list[str], where: str) -> str:
    """The line's five cron fields as one cron string, as Dagster's cron parser accepts it; an
    error names the first field it refuses."""
    cron = " ".join(fields)
    if is_valid_cron_string(cron):
        return cron
    for position, (text, (name, lo, hi)) in enumerate(zip(fields, CRON_FIELDS)):
        alone = ["*"] * len(CRON_FIELDS)
        alone[position] = text
        if not is_valid_cron_string(" ".join(alone)):
            raise ScheduleError(f"{where}: {name} {text!r} is not allowed; allowed: {lo}-{hi}, '*', 'a-b', 'a,b', "
                                "'*/n'")
    raise ScheduleError(f"{where}: {cron!r} is not a cron schedule Dagster runs (no such day)")


def parse_schedules(path: str | os.PathLike) -> list[Schedule]:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except OSError as error:
        raise ScheduleError(f"{path}: cannot read schedules ({error.strerror})") from None
    out = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        where = f"{path}: line {number}"
        parts = text.split()
        if len(parts) != 8:
            raise ScheduleError(f"{where}: expected 8 fields ({LINE_FORM}), got {len(parts)}")
        name, *cron, cpus_text, duration_text = parts
        cron_string = _cron(cron, where)
        try:
            cpus, duration = float(cpus_text), float(duration_text)
        except ValueError:
            raise ScheduleError(f"{where}: CPUS and DURATION_S must be numbers; got {cpus_text!r}, {duration_text!r}") from None
        if not (math.isfinite(cpus) and cpus > 0 and math.isfinite(duration) and duration > 0):
            raise ScheduleError(f"{where}: CPUS and DURATION_S must be > 0; got {cpus_text}, {duration_text}")
        out.append(Schedule(name, cron_string, cpus, duration))
    return out


def runs_during_trace(schedules: list[Schedule], start_unix: float, first: float,
                      last: float) -> list[tuple[float, float, float, float]]:
    """(time in trace seconds, duration, cpus, memory) of every run the schedules start while the
    trace runs, after its first arrival and up to its last (trace time t is unix time
    start_unix + t)."""
    runs = []
    for schedule in schedules:
        for t in fire_times(schedule.cron, "UTC", start_unix + first, start_unix + last):
            runs.append((t - start_unix, schedule.duration_s, schedule.cpus, 0.0))
    return sorted(runs)
