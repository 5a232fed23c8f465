"""Helpers shared by the benchmarks: statistics, the machine line, process-tree memory, and
submitting a run of a job to a real Dagster instance the way `dagster job launch` does."""

from __future__ import annotations

import json

import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"
TAG_VAR = "DPE_BENCH_TAG"  # inherited by every process a benchmark starts: how memory is attributed


class BenchError(RuntimeError):
    """A benchmark could not measure what it was asked to; the message says why."""


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def java_version() -> str:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        return (out.stderr or out.stdout).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "java: not found"


def machine() -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores, {mem_gib:.0f} GiB, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, {java_version()}; load average at start {load}")


def scale_factors(parser, text: str) -> list[float]:
    """`--scale-factors`: comma-separated TPC-H scale factors, each in (0, 10] (2 cores, 24 GiB)."""
    try:
        factors = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--scale-factors: must be comma-separated numbers; got {text!r}")
    if not factors or any(not 0 < f <= 10 for f in factors):
        parser.error("--scale-factors: each must be in (0, 10] (2 cores, 24 GiB)")
    return factors


def wait_for(what: str, check: Callable[[], object], timeout_s: float, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


# -- memory of a process tree --------------------------------------------------------------------
def _tagged_rss(tag: str) -> int:
    needle = f"{TAG_VAR}={tag}".encode()
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


class PeakMemory:
    """Samples, every `interval_s`, the summed RSS of every process whose environment carries
    `DPE_BENCH_TAG=<tag>` (so daemons, code servers, run workers and Spark JVMs all count) and
    keeps the peak. Use as a context manager; `peak_mib` after exit."""

    def __init__(self, tag: str, interval_s: float = 0.25):
        self.tag = tag
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tagged_rss(self.tag))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20


# -- Dagster ------------------------------------------------------------------------------------
def write_workspace(path: Path, module_or_file: str, location: str, attribute: str = "defs") -> Path:
    """A workspace.yaml with one code location, loaded from a Python file under the project."""
    import yaml

    key = "python_file" if module_or_file.endswith(".py") else "python_module"
    target = str(ROOT / module_or_file) if key == "python_file" else module_or_file
    entry = {key: {("relative_path" if key == "python_file" else "module_name"): target,
                   "working_directory": str(ROOT), "location_name": location, "attribute": attribute}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"load_from": [entry]}))
    return path


class RunSubmitter:
    """Creates and submits runs of one job of a code location, in this process (no CLI process
    per run), exactly as `dagster job launch` does; optionally without the job's asset checks."""

    def __init__(self, instance, workspace_file: Path, location: str, job: str):
        self.instance = instance
        self.workspace_file = workspace_file
        self.location_name = location
        self.job_name = job
        self._context = None

    def __enter__(self) -> "RunSubmitter":
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import WorkspaceFileTarget

        self._context = WorkspaceProcessContext(self.instance, WorkspaceFileTarget([str(self.workspace_file)]))
        self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)

    def submit(self, tags: dict[str, str] | None = None, without_checks: bool = False) -> str:
        from dagster._core.definitions.selector import JobSubsetSelector

        request = self._context.create_request_context()
        location = request.get_code_location(self.location_name)
        repo = next(iter(location.get_repositories().values()))
        assets = repo.asset_graph.asset_keys_for_job(self.job_name) if without_checks else None
        selector = JobSubsetSelector(
            location_name=location.name, repository_name=repo.name, job_name=self.job_name,
            op_selection=None,
            asset_selection=assets,
            asset_check_selection=frozenset() if without_checks else None,
        )
        remote_job = location.get_job(selector)
        plan = location.get_execution_plan(remote_job, {}, step_keys_to_execute=None, known_state=None,
                                           instance=self.instance).execution_plan_snapshot
        run = self.instance.create_run(
            job_name=self.job_name, run_id=None, run_config={}, resolved_op_selection=None,
            step_keys_to_execute=plan.step_keys_to_execute, op_selection=None, status=None,
            root_run_id=None, parent_run_id=None, tags={**remote_job.tags, **(tags or {})},
            job_snapshot=remote_job.job_snapshot, execution_plan_snapshot=plan,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
            asset_selection=remote_job.asset_selection if without_checks else None,
            asset_check_selection=frozenset() if without_checks else None,
            asset_graph=repo.asset_graph,
        )
        self.instance.submit_run(run.run_id, request)
        return run.run_id


def event_times(instance, run_id: str) -> dict[str, list[float]]:
    """Event type name -> timestamps, for one run (from its event log)."""
    out: dict[str, list[float]] = {}
    for entry in instance.all_logs(run_id):
        if entry.dagster_event is not None:
            out.setdefault(entry.dagster_event.event_type.name, []).append(entry.timestamp)
    return out


def step_events(instance, run_id: str) -> list[tuple[str, str, float]]:
    """(event type, step key, timestamp) of the run's step starts and ends, in order."""
    rows = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.event_type.name in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE"):
            rows.append((event.event_type.name, event.step_key, entry.timestamp))
    return rows


@contextmanager
def daemon(home: Path, workspace: Path, log: Path, extra_env: dict[str, str] | None = None) -> Iterator:
    """A real dagster-daemon on this instance and workspace, stopped with its process group."""
    from dpe_dagster.daemon import dagster_bin, start_dagster_process, stop_process_group

    process = start_dagster_process([dagster_bin("dagster-daemon"), "run", "-w", str(workspace)], home, log,
                                    extra_env)
    try:
        yield process
    finally:
        stop_process_group(process)


def load_is_low() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (e.g. `timeout`) into SystemExit, so that context managers stop the daemons, the
    emulator and the pool processes a benchmark started."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def write_report(out: Path, name: str, started: float, **fields) -> Path:
    """`<out>/<name>.json`: the machine, the command that produced it, its duration and the results."""
    report = {"machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "seconds": time.time() - started, **fields}
    path = out / f"{name}.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def run_main(name: str, main: Callable[[], int]) -> None:
    """Run a benchmark's main: stop cleanly on SIGTERM, a BenchError is one line and exit 1."""
    exit_cleanly_on_sigterm()
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"{name}: {error}", file=sys.stderr)
        sys.exit(1)


def autoscaler_ticks(instance, env, after: Callable[[str], None] | None = None) -> Callable[[], float]:
    """A function that runs one `dpe_autoscaler` tick (the real sensor, its cursor carried from
    tick to tick) and returns its seconds; `after(cursor)`, untimed, after each tick."""
    from dagster import build_sensor_context

    from dpe_dagster.scaling.sensor import build_autoscaler_sensor

    sensor = build_autoscaler_sensor(env)
    cursor = None

    def tick() -> float:
        nonlocal cursor
        context = build_sensor_context(instance=instance, cursor=cursor)
        started = time.perf_counter()
        sensor(context)
        elapsed = time.perf_counter() - started
        cursor = context.cursor
        if after is not None:
            after(cursor)
        return elapsed

    return tick
