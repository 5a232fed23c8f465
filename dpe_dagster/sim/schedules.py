"""Scheduled runs on top of a trace: a small cron file, expanded to fire times.

One schedule per line: `NAME MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK CPUS DURATION_S`, cron
fields as in crontab (`*`, numbers, `a-b`, `a,b`, `*/n`, `a-b/n`; day of week 0-6, Sunday 0),
evaluated in UTC. `#` starts a comment.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass

CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 6))
LINE_FORM = "NAME MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK CPUS DURATION_S"


class ScheduleError(ValueError):
    """A schedule file line is not allowed; the message names the line and the field."""


@dataclass(frozen=True)
class Schedule:
    name: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    dom_any: bool
    dow_any: bool
    cpus: float
    duration_s: float


def _field(text: str, name: str, lo: int, hi: int, where: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if body == "*":
                start, stop = lo, hi
            elif "-" in body:
                a, b = body.split("-", 1)
                start, stop = int(a), int(b)
            else:
                start = stop = int(body)
                if step_text:
                    stop = hi
        except ValueError:
            raise ScheduleError(f"{where}: {name} {text!r} is not a cron field ({lo}-{hi}, '*', 'a-b', 'a,b', '*/n')") from None
        if step < 1 or not (lo <= start <= stop <= hi):
            raise ScheduleError(f"{where}: {name} {text!r} is out of range; allowed {lo}-{hi}")
        values.update(range(start, stop + 1, step))
    return frozenset(values)


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
        sets = [_field(t, n, lo, hi, where) for t, (n, lo, hi) in zip(cron, CRON_FIELDS)]
        try:
            cpus, duration = float(cpus_text), float(duration_text)
        except ValueError:
            raise ScheduleError(f"{where}: CPUS and DURATION_S must be numbers; got {cpus_text!r}, {duration_text!r}") from None
        if not (math.isfinite(cpus) and cpus > 0 and math.isfinite(duration) and duration > 0):
            raise ScheduleError(f"{where}: CPUS and DURATION_S must be > 0; got {cpus_text}, {duration_text}")
        out.append(Schedule(name, *sets, dom_any=cron[2] == "*", dow_any=cron[4] == "*", cpus=cpus, duration_s=duration))
    return out


def fire_times(schedule: Schedule, start_unix: float, end_unix: float) -> list[float]:
    """Unix times in [start_unix, end_unix) at which the schedule fires."""
    out = []
    day = dt.datetime.fromtimestamp(start_unix, dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    minutes, hours = sorted(schedule.minutes), sorted(schedule.hours)
    while day.timestamp() < end_unix:
        dom_ok = day.day in schedule.days
        dow_ok = (day.isoweekday() % 7) in schedule.weekdays
        if schedule.dom_any or schedule.dow_any:
            day_ok = dom_ok and dow_ok
        else:
            day_ok = dom_ok or dow_ok  # cron: both restricted means either
        if day_ok and day.month in schedule.months:
            base = day.timestamp()
            for hour in hours:
                for minute in minutes:
                    t = base + hour * 3600 + minute * 60
                    if start_unix <= t < end_unix:
                        out.append(t)
        day += dt.timedelta(days=1)
    return out


def scheduled_runs(schedules: list[Schedule], start_unix: float, first: float, last: float) -> list[tuple[float, float, float, float]]:
    """(time in trace seconds, duration, cpus, memory) of every run the schedules start while the
    trace runs (trace time t is unix time start_unix + t)."""
    runs = []
    for schedule in schedules:
        for t in fire_times(schedule, start_unix + first, start_unix + last):
            runs.append((t - start_unix, schedule.duration_s, schedule.cpus, 0.0))
    return sorted(runs)
