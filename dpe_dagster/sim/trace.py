"""Job traces: the Standard Workload Format (`.swf`, gzipped or not) and a simple CSV.

A trace is a list of jobs (arrival, duration, CPUs, memory) in arrival order, plus what the
policies may know about a job before it ends: a key naming "the same job" across runs (user and
executable) and the time the job asked for. A malformed line is an error naming its line number,
unless the caller asks to skip such lines; then they are counted.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import zlib
from dataclasses import dataclass, field
from typing import Iterator

SWF_FIELDS = 18
# 1-based SWF field numbers (https://www.cs.huji.ac.il/labs/parallel/workload/swf.html).
SWF_SUBMIT, SWF_RUN, SWF_ALLOC, SWF_USED_MEM, SWF_REQ_PROCS, SWF_REQ_TIME, SWF_REQ_MEM = 2, 4, 5, 7, 8, 9, 10
SWF_USER, SWF_EXE = 12, 14
CSV_REQUIRED = ("arrival_s", "duration_s", "cpus")
CSV_OPTIONAL = ("memory_gb", "user", "executable", "requested_s")


class TraceError(ValueError):
    """The trace file cannot be read; the message names the file, the line and what is allowed."""


@dataclass
class Trace:
    name: str
    arrival: list[float] = field(default_factory=list)
    duration: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    memory_gb: list[float] = field(default_factory=list)
    key: list[str | None] = field(default_factory=list)  # "the same job": user and executable
    requested_s: list[float | None] = field(default_factory=list)
    start_unix: float = 0.0  # wall-clock time of arrival 0 (for cron schedules)
    bad_lines: int = 0  # malformed lines skipped on request
    excluded: int = 0  # well-formed jobs the replay rules leave out (no run time or no CPUs)

    def __len__(self) -> int:
        return len(self.arrival)

    def add(self, arrival: float, duration: float, cpus: float, memory_gb: float = 0.0,
            key: str | None = None, requested_s: float | None = None) -> None:
        self.arrival.append(float(arrival))
        self.duration.append(float(duration))
        self.cpus.append(float(cpus))
        self.memory_gb.append(float(memory_gb))
        self.key.append(key)
        self.requested_s.append(requested_s)

    def sorted(self) -> "Trace":
        order = sorted(range(len(self)), key=self.arrival.__getitem__)
        if all(i == j for i, j in enumerate(order)):
            return self
        out = Trace(self.name, start_unix=self.start_unix, bad_lines=self.bad_lines, excluded=self.excluded)
        for i in order:
            out.add(self.arrival[i], self.duration[i], self.cpus[i], self.memory_gb[i], self.key[i],
                    self.requested_s[i])
        return out


def _lines(path: str) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.endswith(".gz") else open
    number = 0
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                yield number, line
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise TraceError(f"{path}: line {number + 1}: file is truncated or not valid gzip ({error})") from None


def read_trace(path: str | os.PathLike, *, skip_bad_lines: bool = False) -> Trace:
    """Read a `.swf[.gz]` or `.csv[.gz]` trace. Raises TraceError on the first bad line unless
    `skip_bad_lines`; jobs without a positive run time or CPU count are left out and counted."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TraceError(f"{path}: no such trace file")
    base = path[:-3] if path.endswith(".gz") else path
    if base.endswith(".swf"):
        trace = _read_swf(path, skip_bad_lines)
    elif base.endswith(".csv"):
        trace = _read_csv(path, skip_bad_lines)
    else:
        raise TraceError(f"{path}: unknown trace format; allowed: .swf, .swf.gz, .csv, .csv.gz")
    if not len(trace):
        raise TraceError(f"{path}: the trace holds no job with a positive run time and CPU count")
    return trace.sorted()


def _number(path: str, number: int, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(f"{path}: line {number}: {name} must be a number; got {text!r}") from None
    if not math.isfinite(value):
        raise TraceError(f"{path}: line {number}: {name} must be a finite number; got {text!r}")
    return value


def _read_swf(path: str, skip_bad: bool) -> Trace:
    trace = Trace(os.path.basename(path))
    names = {SWF_SUBMIT: "field 2 (submit time)", SWF_RUN: "field 4 (run time)",
             SWF_ALLOC: "field 5 (allocated processors)", SWF_USED_MEM: "field 7 (used memory)",
             SWF_REQ_PROCS: "field 8 (requested processors)", SWF_REQ_TIME: "field 9 (requested time)",
             SWF_REQ_MEM: "field 10 (requested memory)"}
    for number, line in _lines(path):
        text = line.strip()
        if not text:
            continue
        if text.startswith(";"):
            head, _, value = text[1:].partition(":")
            if head.strip() == "UnixStartTime":
                try:
                    trace.start_unix = float(value)
                except ValueError:
                    pass
            continue
        parts = text.split()
        try:
            if len(parts) != SWF_FIELDS:
                raise TraceError(f"{path}: line {number}: expected {SWF_FIELDS} whitespace-separated SWF "
                                 f"fields, got {len(parts)} (truncated line?)")
            value = {f: _number(path, number, n, parts[f - 1]) for f, n in names.items()}
        except TraceError:
            if not skip_bad:
                raise
            trace.bad_lines += 1
            continue
        cpus = value[SWF_ALLOC] if value[SWF_ALLOC] > 0 else value[SWF_REQ_PROCS]
        run = value[SWF_RUN]
        if run <= 0 or cpus <= 0:
            trace.excluded += 1
            continue
        kb_per_proc = value[SWF_REQ_MEM] if value[SWF_REQ_MEM] > 0 else value[SWF_USED_MEM]
        memory_gb = max(0.0, kb_per_proc) * cpus / (1024 * 1024)
        user, exe = parts[SWF_USER - 1], parts[SWF_EXE - 1]
        key = None if user == "-1" else f"{user}/{exe}"
        requested = value[SWF_REQ_TIME] if value[SWF_REQ_TIME] > 0 else None
        trace.add(value[SWF_SUBMIT], run, cpus, memory_gb, key, requested)
    return trace


def _read_csv(path: str, skip_bad: bool) -> Trace:
    trace = Trace(os.path.basename(path))
    lines = _lines(path)
    header_line = next(lines, None)
    if header_line is None:
        raise TraceError(f"{path}: line 1: empty file; expected a header with {', '.join(CSV_REQUIRED)}")
    header = [h.strip() for h in next(csv.reader(io.StringIO(header_line[1])))]
    missing = [c for c in CSV_REQUIRED if c not in header]
    unknown = [c for c in header if c not in CSV_REQUIRED + CSV_OPTIONAL]
    if missing or unknown:
        raise TraceError(f"{path}: line 1: header {'lacks ' + ', '.join(missing) if missing else ''}"
                         f"{'; ' if missing and unknown else ''}{'has unknown ' + ', '.join(unknown) if unknown else ''}; "
                         f"required columns: {', '.join(CSV_REQUIRED)}; optional: {', '.join(CSV_OPTIONAL)}")
    col = {name: i for i, name in enumerate(header)}
    for number, line in lines:
        if not line.strip():
            continue
        row = next(csv.reader(io.StringIO(line)))
        try:
            if len(row) != len(header):
                raise TraceError(f"{path}: line {number}: expected {len(header)} columns ({', '.join(header)}), "
                                 f"got {len(row)} (truncated line?)")
            arrival = _number(path, number, "arrival_s", row[col["arrival_s"]])
            duration = _number(path, number, "duration_s", row[col["duration_s"]])
            cpus = _number(path, number, "cpus", row[col["cpus"]])
            memory = _number(path, number, "memory_gb", row[col["memory_gb"]]) if "memory_gb" in col else 0.0
            requested = None
            if "requested_s" in col and row[col["requested_s"]].strip():
                requested = _number(path, number, "requested_s", row[col["requested_s"]])
            if arrival < 0 or memory < 0:
                raise TraceError(f"{path}: line {number}: arrival_s and memory_gb must be >= 0")
        except TraceError:
            if not skip_bad:
                raise
            trace.bad_lines += 1
            continue
        if duration <= 0 or cpus <= 0:
            trace.excluded += 1
            continue
        parts = [row[col[c]].strip() for c in ("user", "executable") if c in col]
        key = "/".join(parts) if any(parts) else None
        trace.add(arrival, duration, cpus, memory, key, requested if requested and requested > 0 else None)
    return trace
