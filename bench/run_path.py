"""Run-path overhead: the TPC-H job through dpe (local pool, real daemon) against the same queries in
one plain PySpark script, on the same generated tables, at each scale factor.

Per repeat, interleaved in one session: the plain script (`bench/plain_tpch.py`, local[2], 2g),
then dpe with the pool at zero (cold: the launcher starts the Spark master and one 2-core worker),
then dpe again while the workers are still up (warm). dpe's wall time is the run's RUN_ENQUEUED
to RUN_SUCCESS (its event log); the plain script's is its process from start to exit. Both runs
skip the DuckDB asset checks (dpe's run is submitted without them), so both do exactly the four
queries. Peak memory is the summed RSS of every process each side started (daemon, code server,
run worker, Spark master/workers/executors for dpe; Python and its JVM for plain).

    .venv/bin/python bench/run_path.py --scale-factors 1,10 --repeats 3
    .venv/bin/python bench/run_path.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (run_main, write_report, OUT, ROOT, TAG_VAR, BenchError, PeakMemory, RunSubmitter, daemon,  # noqa: E402
                          event_times, machine, median, scale_factors, step_events, wait_for)

TARGET_RATIO = 1.15


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


class DpeSide:
    """dpe's `local` environment on its own DPE_HOME and Dagster instance, with a daemon."""

    def __init__(self, out: Path, scale_factor: float):
        from resources import repository_environment

        self.home = out / "dpe"
        self.scale_factor = scale_factor
        self.tag = f"dpe-{uuid.uuid4().hex[:8]}"
        self.env_vars = {"DPE_HOME": str(self.home), "DAGSTER_HOME": str(self.home / "dagster"),
                         "DPE_TPCH_SCALE_FACTOR": f"{scale_factor:g}", "DPE_ENV": "local",
                         # The bench stops the workers itself (cold runs); the sensor must not race it.
                         "DPE_IDLE_TIMEOUT_S": "3600"}
        os.environ.update(self.env_vars)
        self.env = repository_environment("local")
        self.pool_config = self.env.pools["spot-etl"]

    def data_root(self) -> Path:
        return self.home / "data" / "tpch"

    def pool(self):
        from dpe_dagster.pools import open_pool

        return open_pool(self.pool_config, self.env)

    def __enter__(self):
        from dagster import DagsterInstance

        from dpe_dagster.instance import write_instance

        ports = [7077, 8080, 7100, 7101, 7102, 8100, 8101, 8102]
        busy = [p for p in ports if not port_free(p)]
        if busy:
            raise BenchError(f"ports {busy} are taken (another dpe demo or test using the local pool?): the local "
                             "environment's pool needs them; run again when they are free")
        write_instance(self.home / "dagster", self.env)
        self.instance = DagsterInstance.from_config(str(self.home / "dagster"))
        self._daemon = daemon(self.home / "dagster", ROOT / "workspace.yaml", self.home / "daemon.log",
                              {TAG_VAR: self.tag})
        process = self._daemon.__enter__()
        self._submitter = RunSubmitter(self.instance, ROOT / "workspace.yaml", "dpe", "tpch").__enter__()
        wait_for("the daemon", lambda: process.poll() is None and self.instance.get_daemon_heartbeats(), 120, 0.5)
        return self

    def __exit__(self, *exc):
        try:
            self._submitter.__exit__(*exc)
            self._daemon.__exit__(*exc)
        finally:
            self.pool().shutdown()
            self.instance.dispose()

    def run(self, timeout_s: float) -> dict:
        from dagster import DagsterRunStatus

        ended = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
        with PeakMemory(self.tag) as memory:
            run_id = self._submitter.submit(without_checks=True)
            run = wait_for("the dpe run", lambda: (r := self.instance.get_run_by_id(run_id)) and r.status in ended and r,
                           timeout_s, 0.2)
        if run.status != DagsterRunStatus.SUCCESS:
            raise BenchError(f"dpe run {run_id} ended {run.status.value}; see the Dagster UI on {self.home / 'dagster'}")
        t = event_times(self.instance, run_id)
        enqueued, done = t["RUN_ENQUEUED"][0], t["RUN_SUCCESS"][0]
        steps = {}
        starts = {}
        for kind, key, at in step_events(self.instance, run_id):
            if kind == "STEP_START":
                starts[key] = at
            elif kind == "STEP_SUCCESS":
                steps[key.removeprefix("tpch_")] = at - starts[key]
        first_step = min(starts.values())
        return {"wall_s": done - enqueued, "peak_mib": memory.peak_mib, "steps": steps,
                "queue_s": t["RUN_STARTING"][0] - enqueued,
                "launch_s": t["RUN_START"][0] - t["RUN_STARTING"][0],  # launcher scale-up + run worker + code load
                "worker_to_first_step_s": first_step - t["RUN_START"][0],
                "after_last_step_s": done - max(starts[k] + steps[k.removeprefix("tpch_")] for k in starts)}


def plain_run(data_root: Path, scale_factor: float, timeout_s: float, master: str = "local[2]",
              conf: dict[str, str] | None = None) -> dict:
    """The four queries in one plain PySpark process (`bench/plain_tpch.py`) on `master`. Peak memory
    counts that process and its driver JVM (not a standalone cluster's daemons)."""
    tag = f"plain-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, **{TAG_VAR: tag})
    command = [sys.executable, str(ROOT / "bench" / "plain_tpch.py"), "--scale-factor", f"{scale_factor:g}",
               "--data-root", str(data_root), "--master", master, "--steps", "q1,q3,q5,q6"]
    for key, value in (conf or {}).items():
        command += ["--conf", f"{key}={value}"]
    with PeakMemory(tag) as memory:
        started = time.time()
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s, cwd=ROOT)
        wall = time.time() - started
    if result.returncode != 0:
        raise BenchError(f"plain_tpch.py on {master} failed: {result.stderr.strip()[-2000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "peak_mib": memory.peak_mib, "steps": report["steps"],
            "session_start_s": report["session_start_s"], "import_s": report["import_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale-factors", default="1,10", help="comma-separated TPC-H scale factors (default 1,10)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per scale factor (default 3)")
    parser.add_argument("--no-warm", action="store_true", help="skip the warm-pool dpe run")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take (default 1800)")
    parser.add_argument("--quick", action="store_true", help="scale factor 0.01, one repeat: checks it works")
    parser.add_argument("--out", type=Path, default=OUT / "run_path", help="working folder (default bench/out/run_path)")
    args = parser.parse_args(argv)
    if args.quick:
        args.scale_factors, args.repeats = "0.01", 1
    factors = scale_factors(parser, args.scale_factors)
    if args.repeats < 1:
        parser.error("--repeats: must be >= 1")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from assets.tpch.data import TpchData
    from dpe_dagster.spark.java import check_java

    check_java()
    console = Console()
    console.print(f"machine: {machine()}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    started = time.time()
    kinds = ["plain", "dpe-cold"] + ([] if args.no_warm else ["dpe-warm"])
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("runs", total=len(factors) * args.repeats * len(kinds))
        for sf in factors:
            with DpeSide(args.out, sf) as dpe:
                progress.update(task, description=f"sf {sf:g}: generating tables")
                TpchData(scale_factor=sf, root=str(dpe.data_root())).generate()
                for repeat in range(args.repeats):
                    for kind in kinds:
                        progress.update(task, description=f"sf {sf:g} #{repeat + 1}: {kind}")
                        if kind == "plain":
                            row = plain_run(dpe.data_root(), sf, args.timeout)
                        else:
                            if kind == "dpe-cold":
                                dpe.pool().shutdown()
                            row = dpe.run(args.timeout)
                        results.append({"scale_factor": sf, "repeat": repeat, "kind": kind, **row})
                        progress.update(task, advance=1)
    table = Table(title="TPC-H Q1/Q3/Q5/Q6: dpe (local pool) vs one plain PySpark script (medians)")
    for col in ("sf", "side", "wall s", "ratio vs plain", "peak MiB", "q1 s", "q3 s", "q5 s", "q6 s"):
        table.add_column(col, justify="right")
    summary = []
    for sf in factors:
        plain = [r for r in results if r["scale_factor"] == sf and r["kind"] == "plain"]
        for kind in kinds:
            rows = [r for r in results if r["scale_factor"] == sf and r["kind"] == kind]
            # Ratio per repeat (each dpe run against the plain run next to it), then the median.
            ratios = [r["wall_s"] / p["wall_s"] for r, p in zip(rows, plain)]
            entry = {"scale_factor": sf, "kind": kind, "wall_s": median([r["wall_s"] for r in rows]),
                     "ratio": median(ratios), "peak_mib": median([r["peak_mib"] for r in rows]),
                     "steps": {q: median([r["steps"].get(q, float("nan")) for r in rows]) for q in ("q1", "q3", "q5", "q6")}}
            for key in ("queue_s", "launch_s", "worker_to_first_step_s", "after_last_step_s", "session_start_s",
                        "import_s"):
                if key in rows[0]:
                    entry[key] = median([r[key] for r in rows])
            summary.append(entry)
            table.add_row(f"{sf:g}", kind, f"{entry['wall_s']:.1f}", f"{entry['ratio']:.2f}", f"{entry['peak_mib']:.0f}",
                          *(f"{entry['steps'][q]:.1f}" for q in ("q1", "q3", "q5", "q6")))
    console.print(table)
    largest = max(factors)
    for entry in summary:
        if entry["scale_factor"] == largest and entry["kind"] != "plain":
            verdict = "within" if entry["ratio"] <= TARGET_RATIO else "OVER"
            console.print(f"sf {largest:g} {entry['kind']}: {entry['ratio']:.2f}x plain -> {verdict} the "
                          f"{TARGET_RATIO}x target; breakdown: queue {entry['queue_s']:.1f}s, launch (scale-up + run "
                          f"worker + code load) {entry['launch_s']:.1f}s, worker to first step "
                          f"{entry['worker_to_first_step_s']:.1f}s, after last step {entry['after_last_step_s']:.1f}s")
    path = write_report(args.out, "run_path", started, summary=summary, runs=results)
    console.print(f"results: {path}")
    return 0


if __name__ == "__main__":
    run_main("run_path", main)
