"""The seed's stack as a peer: the same four-query TPC-H pipeline as an Apache Airflow 3 DAG
(`airflow standalone`: LocalExecutor, SQLite), against dpe and the plain PySpark script.

Airflow lives in its own virtual environment under bench/.airflow/ (created here with uv when
missing; never a dependency of dpe). Its DAG (`bench/airflow_dag/tpch_airflow.py`) runs each step as
a task that calls `bench/plain_tpch.py --steps <step>`: the same asset code, one process and one
SparkSession per task, as Airflow runs Python work. Per repeat, interleaved in one session: plain
script, dpe (pool at zero, as on demand), Airflow. Wall time is trigger to done: Airflow's dag run
queued_at -> end_date, dpe's RUN_ENQUEUED -> RUN_SUCCESS, the plain process start -> exit.
Scheduling overhead per task is the gap between a step's end and the next step's start (plus, for the
first step, trigger to first step); Airflow's from its metadata DB, dpe's from its event log.

    .venv/bin/python bench/airflow_peer.py --scale-factor 0.1 --repeats 3
    .venv/bin/python bench/airflow_peer.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import run_main, write_report, OUT, ROOT, TAG_VAR, BenchError, PeakMemory, machine, median, step_events, wait_for  # noqa: E402
from bench.run_path import DpeSide, plain_run  # noqa: E402

AIRFLOW_DIR = ROOT / "bench" / ".airflow"
AIRFLOW_SPEC = "apache-airflow==3.*"
DAG_ID = "tpch_airflow"
STEPS = ("tables", "q1", "q3", "q5", "q6")


def uv_command() -> list[str]:
    """uv as the Makefile finds it: on PATH, else as a module of a Python that has it (`make setup`
    installs it with `pip install --user`, whose scripts folder may not be on PATH)."""
    found = shutil.which("uv")
    if found:
        return [found]
    for python in (sys.executable, shutil.which("python3")):
        if python and subprocess.run([python, "-m", "uv", "--version"], capture_output=True).returncode == 0:
            return [python, "-m", "uv"]
    raise BenchError("uv is needed to create Airflow's own virtual environment (make setup installs it)")


def ensure_airflow(venv: Path, console) -> Path:
    airflow = venv / "bin" / "airflow"
    if airflow.exists():
        return airflow
    uv = uv_command()
    console.print(f"installing {AIRFLOW_SPEC} into {venv} (once)")
    subprocess.run([*uv, "venv", "--python", "3.11", str(venv)], check=True, capture_output=True)
    result = subprocess.run([*uv, "pip", "install", "--python", str(venv / "bin" / "python"), AIRFLOW_SPEC],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"installing {AIRFLOW_SPEC} failed: {result.stderr.strip()[-2000:]}")
    return airflow


def _ts(value) -> float:
    if value is None:
        raise BenchError("Airflow left a timestamp empty")
    text = str(value).replace(" ", "T")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


class AirflowSide:
    def __init__(self, airflow: Path, home: Path, scale_factor: float, data_root: Path):
        self.airflow = airflow
        self.home = home
        self.db = home / "airflow.db"
        self.tag = f"airflow-{uuid.uuid4().hex[:8]}"
        port = _free_port()
        self.env = dict(
            os.environ,
            AIRFLOW_HOME=str(home),
            PATH=f"{airflow.parent}{os.pathsep}{os.environ.get('PATH', '')}",  # standalone starts `airflow ...`
            AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "bench" / "airflow_dag"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{self.db}",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
            AIRFLOW__API__PORT=str(port),
            # Task processes report to the API server; its default (localhost:8080) is the Spark master's web UI here.
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            DPE_BENCH_PYTHON=sys.executable,
            DPE_BENCH_SF=f"{scale_factor:g}",
            DPE_BENCH_DATA=str(data_root),
            **{TAG_VAR: self.tag},
        )
        for key in ("DAGSTER_HOME", "DPE_HOME"):
            self.env.pop(key, None)

    def __enter__(self):
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        log = open(self.home / "standalone.log", "ab")
        self.process = subprocess.Popen([str(self.airflow), "standalone"], env=self.env, cwd=ROOT, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

        def ready():
            if self.process.poll() is not None:
                raise BenchError(f"airflow standalone exited {self.process.returncode}; see {self.home / 'standalone.log'}")
            return self.db.exists() and self._query("select count(*) from serialized_dag where dag_id = ?", DAG_ID)
        wait_for("Airflow to start and parse the DAG", lambda: _safe(ready), 600, 1.0)
        time.sleep(5)  # scheduler heartbeat and executor up
        return self

    def __exit__(self, *exc):
        from dpe_dagster.daemon import stop_process_group

        stop_process_group(self.process)

    def _query(self, sql: str, *params):
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as db:
            return db.execute(sql, params).fetchall()[0][0] if "count(" in sql else db.execute(sql, params).fetchall()

    def run(self, timeout_s: float) -> dict:
        known = {r[0] for r in self._query("select run_id from dag_run where dag_id = ?", DAG_ID)}
        with PeakMemory(self.tag) as memory:
            out = subprocess.run([str(self.airflow), "dags", "trigger", DAG_ID], env=self.env, cwd=ROOT,
                                 capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                raise BenchError(f"airflow dags trigger failed: {out.stderr.strip()[-2000:]}")
            run_id = wait_for("the dag run to appear", lambda: next(
                (r[0] for r in _safe(lambda: self._query("select run_id from dag_run where dag_id = ?", DAG_ID)) or []
                 if r[0] not in known), None), 120, 0.5)
            state = wait_for("the Airflow dag run", lambda: next(iter(
                [s for (s,) in _safe(lambda: self._query("select state from dag_run where run_id = ?", run_id)) or []
                 if s in ("success", "failed")]), None), timeout_s, 0.5)
        if state != "success":
            raise BenchError(f"Airflow dag run {run_id} ended {state}; see {self.home / 'logs'}")
        queued, started, ended = self._query("select queued_at, start_date, end_date from dag_run where run_id = ?",
                                             run_id)[0]
        tasks = {task: (_ts(s), _ts(e)) for task, s, e in self._query(
            "select task_id, start_date, end_date from task_instance where run_id = ?", run_id)}
        order = [tasks[f"tpch_{s}"] for s in STEPS]
        gaps = [order[0][0] - _ts(queued)] + [order[i][0] - order[i - 1][1] for i in range(1, len(order))]
        return {"wall_s": _ts(ended) - _ts(queued), "peak_mib": memory.peak_mib,
                "task_s": {s: e - b for s, (b, e) in zip(STEPS, order)}, "gaps_s": gaps,
                "after_last_s": _ts(ended) - order[-1][1]}


def _safe(fn):
    try:
        return fn()
    except sqlite3.Error:
        return None


def _free_port() -> int:
    from dpe_dagster.pools.aws.emulator import free_port

    return free_port()


def dpe_gaps(dpe: DpeSide, run: dict) -> dict:
    """Trigger-to-first-step and step-to-step gaps of dpe's last run, from its event log."""
    from bench.common import event_times

    last = dpe.instance.get_runs(limit=1)[0]
    events = step_events(dpe.instance, last.run_id)
    starts = [at for kind, _, at in events if kind == "STEP_START"]
    ends = [at for kind, _, at in events if kind == "STEP_SUCCESS"]
    enqueued = event_times(dpe.instance, last.run_id)["RUN_ENQUEUED"][0]
    gaps = [starts[0] - enqueued] + [starts[i] - ends[i - 1] for i in range(1, len(starts))]
    return {**run, "gaps_s": gaps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale-factor", type=float, default=0.1, help="TPC-H scale factor (default 0.1)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--venv", type=Path, default=AIRFLOW_DIR / "venv", help="Airflow's own virtual environment")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    parser.add_argument("--quick", action="store_true", help="scale factor 0.01, one repeat")
    parser.add_argument("--out", type=Path, default=OUT / "airflow_peer", help="working folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.scale_factor, args.repeats = 0.01, 1
    if not 0 < args.scale_factor <= 10:
        parser.error("--scale-factor: must be in (0, 10]")
    if args.repeats < 1:
        parser.error("--repeats: must be >= 1")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from assets.tpch.data import TpchData

    console = Console()
    console.print(f"machine: {machine()}")
    airflow = ensure_airflow(args.venv, console)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = []
    sf = args.scale_factor
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("starting dpe's daemon and Airflow standalone", total=args.repeats * 3)
        with DpeSide(args.out, sf) as dpe:
            TpchData(scale_factor=sf, root=str(dpe.data_root())).generate()
            with AirflowSide(airflow, AIRFLOW_DIR / "home", sf, dpe.data_root()) as af:
                for repeat in range(args.repeats):
                    for kind in ("plain", "dpe", "airflow"):
                        progress.update(task, description=f"sf {sf:g} #{repeat + 1}: {kind}")
                        if kind == "plain":
                            row = plain_run(dpe.data_root(), sf, args.timeout)
                        elif kind == "dpe":
                            dpe.pool().shutdown()
                            row = dpe_gaps(dpe, dpe.run(args.timeout))
                        else:
                            row = af.run(args.timeout)
                        results.append({"repeat": repeat, "kind": kind, **row})
                        progress.update(task, advance=1)
    table = Table(title=f"TPC-H sf {sf:g}, trigger to done (medians of {args.repeats}, interleaved)")
    for col in ("side", "wall s", "vs plain", "trigger->1st step s", "mean gap between steps s", "peak MiB"):
        table.add_column(col, justify="right")
    summary = []
    plain = [r for r in results if r["kind"] == "plain"]
    for kind in ("plain", "dpe", "airflow"):
        rows = [r for r in results if r["kind"] == kind]
        entry = {"kind": kind, "wall_s": median([r["wall_s"] for r in rows]),
                 "ratio": median([r["wall_s"] / p["wall_s"] for r, p in zip(rows, plain)]),
                 "peak_mib": median([r["peak_mib"] for r in rows])}
        if "gaps_s" in rows[0]:
            entry["first_gap_s"] = median([r["gaps_s"][0] for r in rows])
            entry["step_gap_s"] = median([sum(r["gaps_s"][1:]) / len(r["gaps_s"][1:]) for r in rows])
        if "task_s" in rows[0]:
            entry["task_s"] = {s: median([r["task_s"][s] for r in rows]) for s in STEPS}
        if "steps" in rows[0]:
            entry["steps"] = {s: median([r["steps"].get(s, float("nan")) for r in rows]) for s in rows[0]["steps"]}
        summary.append(entry)
        table.add_row(kind, f"{entry['wall_s']:.1f}", f"{entry['ratio']:.2f}",
                      f"{entry['first_gap_s']:.2f}" if "first_gap_s" in entry else "-",
                      f"{entry['step_gap_s']:.3f}" if "step_gap_s" in entry else "-", f"{entry['peak_mib']:.0f}")
    console.print(table)
    path = write_report(args.out, "airflow_peer", started, scale_factor=sf, summary=summary, runs=results)
    console.print(f"results: {path}")
    return 0


if __name__ == "__main__":
    run_main("airflow_peer", main)
