"""Tick cost at scale: one `dpe_autoscaler` tick with many pools and many runs in run storage.

For each storage (SQLite, PostgreSQL) the run storage grows through the run counts (finished runs,
every one tagged with a pool, as a long-lived instance has them) while a fixed number of active runs
(`--active`, STARTED, one per pool) waits on the first pools. At each run count and each pool count,
the real sensor ticks against real `aws_asg` pools on moto's server on loopback (one group per pool,
created once); the tick's time and, separately, the time of its demand read (`read_demand`: the run
storage part) are the medians of `--ticks` ticks after one warm-up tick.

The demand read must stay flat as finished runs accumulate (it asks for active statuses only, an
indexed query); the pool side grows with the number of pools (AWS calls per pool).

    .venv/bin/python bench/tick_cost.py
    .venv/bin/python bench/tick_cost.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import run_main, write_report, OUT, BenchError, machine, median  # noqa: E402

PG_BASE = "postgresql://postgres@127.0.0.1:5432"
PG_DB = "dpe_bench_tick"
BATCH = 2000


def _ints(text: str, flag: str, parser) -> list[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        parser.error(f"{flag}: must be comma-separated whole numbers; got {text!r}")
    if not values or values[0] < 1:
        parser.error(f"{flag}: every value must be >= 1; got {text!r}")
    return values


def pool_name(i: int) -> str:
    return f"p{i:04d}"


def environment(n_pools: int):
    from dpe_dagster.config import parse_environment

    pool = {
        "provider": "aws_asg", "min_size": 0, "max_size": 3, "node_cpus": 2, "node_memory_gb": 8,
        "lifecycle": "spot", "price_per_node_hour": 0.035, "idle_timeout_s": 3600, "boot_timeout_s": 600,
        "default_run_cpus": 2, "default_run_memory_gb": 4,
    }
    return parse_environment("aws-sim", {
        "sensor_interval_s": 5,
        "aws": {"region": "us-east-1", "emulator": True, "max_attempts": 3},
        "pools": {pool_name(i): {**pool, "settings": {"group_name": f"dpe-bench-{pool_name(i)}",
                                                       "busy_source": "dagster_runs",
                                                       "instance_types": ["m6i.large"]}}
                  for i in range(n_pools)},
    })


# -- run storage ------------------------------------------------------------------------------------
def add_runs(instance, count: int, n_pools: int, status, start: int) -> None:
    """Insert `count` runs through the run storage's own tables (its schema and indexes), in batches."""
    from dagster import DagsterRun
    from dagster._core.storage.runs.schema import RunsTable, RunTagsTable
    from dagster._serdes import serialize_value

    from dpe_dagster.scaling.tags import pool_tags

    storage = instance.run_storage
    now = time.time()
    for first in range(0, count, BATCH):
        runs, tags = [], []
        for i in range(start + first, start + min(count, first + BATCH)):
            run_tags = pool_tags(pool_name(i % n_pools), cpus=2)
            run = DagsterRun(job_name="etl", run_id=str(uuid.uuid4()), status=status, tags=run_tags)
            runs.append({"run_id": run.run_id, "pipeline_name": run.job_name, "status": run.status.value,
                         "run_body": serialize_value(run), "snapshot_id": None, "partition": None,
                         "partition_set": None,
                         "create_timestamp": __import__("datetime").datetime.fromtimestamp(now - i)})
            tags += [{"run_id": run.run_id, "key": k, "value": v} for k, v in run_tags.items()]
        with storage.connect() as conn:
            conn.execute(RunsTable.insert(), runs)
            conn.execute(RunTagsTable.insert(), tags)


def open_instance(kind: str, home: Path):
    from dagster import DagsterInstance

    from dpe_dagster.instance import write_instance

    shutil.rmtree(home, ignore_errors=True)
    extra = {"storage": {"postgres": {"postgres_url": f"{PG_BASE}/{PG_DB}"}}} if kind == "postgres" else {}
    write_instance(home, environment(1), extra)
    os.environ["DAGSTER_HOME"] = str(home)  # the aws-sim busy lookup reads runs from this instance
    return DagsterInstance.from_config(str(home))


def postgres(action: str) -> None:
    cmd = {"create": ["createdb", "-h", "127.0.0.1", "-U", "postgres", PG_DB],
           "drop": ["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", PG_DB]}[action]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed: {result.stderr.strip()} (is PostgreSQL on 127.0.0.1:5432?)")


# -- one cell -----------------------------------------------------------------------------------------
def measure(instance, env, ticks: int) -> dict:
    from dagster import build_sensor_context

    from dagster import RunsFilter

    from dpe_dagster.scaling.demand import ACTIVE_STATUSES, read_demand
    from dpe_dagster.scaling.sensor import build_autoscaler_sensor
    from dpe_dagster.scaling.tags import POOL_TAG

    sensor = build_autoscaler_sensor(env)
    cursor = None

    def tick() -> float:
        nonlocal cursor
        context = build_sensor_context(instance=instance, cursor=cursor)
        started = time.perf_counter()
        sensor(context)
        elapsed = time.perf_counter() - started
        cursor = context.cursor
        return elapsed

    first = tick()  # opens the pools, scales up for the active runs
    tick_times = [tick() for _ in range(ticks)]
    read_times, tagged_times = [], []
    for _ in range(max(ticks, 5)):
        # Interleaved: dpe's demand read, then the read it replaced (active statuses AND the pool tag
        # in SQL), on the same storage and rows.
        started = time.perf_counter()
        # The run-storage part of the sensor's read: the active runs and their jobs' recent
        # successes (expected ends); no pool given, so no provider is asked where runs are.
        demand = read_demand(instance, env, {}, time.time())
        read_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        instance.get_runs(filters=RunsFilter(statuses=ACTIVE_STATUSES, tags={POOL_TAG: sorted(env.pools)}))
        tagged_times.append(time.perf_counter() - started)
    return {"first_tick_s": first, "tick_s": median(tick_times), "read_demand_s": median(read_times),
            "tag_filtered_read_s": median(tagged_times), "active_seen": sum(len(v) for v in demand.by_pool.values())}


def use_look_ahead(enabled: bool) -> None:
    """batched (dpe now): one DescribeAutoScalingGroups per 100 groups per tick, each pool's look reads
    its group from that answer. per-pool (before): every pool describes its own group in its look.
    The baseline is dpe's own sensor with `look_ahead` switched off, nothing else changed."""
    import dpe_dagster.scaling.sensor as sensor_module
    from dpe_dagster.pools import look_ahead

    sensor_module.look_ahead = look_ahead if enabled else (lambda pools: None)


def reset_groups(autoscaling, n_pools: int) -> None:
    for i in range(n_pools):
        autoscaling.set_desired_capacity(AutoScalingGroupName=f"dpe-bench-{pool_name(i)}", DesiredCapacity=0,
                                         HonorCooldown=False)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for storage, style in (("sqlite", "-"), ("postgres", "--")):
        for n_pools in sorted({r["pools"] for r in results}):
            rows = sorted((r for r in results if r["storage"] == storage and r["pools"] == n_pools
                           and r.get("variant") == "batched"), key=lambda r: r["runs"])
            if not rows:
                continue
            xs = [r["runs"] for r in rows]
            axes[0].plot(xs, [r["read_demand_s"] * 1000 for r in rows], style, marker="o",
                         label=f"{storage}, {n_pools} pools: status only (dpe)")
            if "tag_filtered_read_s" in rows[0]:
                axes[0].plot(xs, [r["tag_filtered_read_s"] * 1000 for r in rows], style, marker="x",
                             label=f"{storage}, {n_pools} pools: status + pool tag (before)")
            axes[1].plot(xs, [r["tick_s"] * 1000 for r in rows], style, marker="o", label=f"{storage}, {n_pools} pools")
    for ax, title in zip(axes, ("demand read (run storage)", "whole tick, batched group describes (storage + AWS API)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("runs in run storage (finished + active)")
        ax.set_ylabel("ms (median)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", default="10,100,1000", help="comma-separated pool counts (default 10,100,1000)")
    parser.add_argument("--runs", default="1000,10000,100000",
                        help="comma-separated run counts in storage (default 1000,10000,100000)")
    parser.add_argument("--storages", default="sqlite,postgres", help="sqlite, postgres or both (default both)")
    parser.add_argument("--ticks", type=int, default=5, help="measured ticks per cell (default 5)")
    parser.add_argument("--active", type=int, default=20, help="active (STARTED) runs, one per pool (default 20)")
    parser.add_argument("--per-pool-max-pools", type=int, default=100,
                        help="also measure the baseline (every pool describes its own group) up to this many pools "
                             "(default 100)")
    parser.add_argument("--quick", action="store_true", help="2/5 pools, 200/600 runs, SQLite only, 2 ticks")
    parser.add_argument("--out", type=Path, default=OUT / "tick_cost", help="working folder")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the curves (default <out>/tick_cost.png)")
    args = parser.parse_args(argv)
    if args.quick:
        args.pools, args.runs, args.storages, args.ticks, args.active = "2,5", "200,600", "sqlite", 2, 3
    pool_counts = _ints(args.pools, "--pools", parser)
    run_counts = _ints(args.runs, "--runs", parser)
    storages = [s.strip() for s in args.storages.split(",") if s.strip()]
    if not storages or any(s not in ("sqlite", "postgres") for s in storages):
        parser.error(f"--storages: allowed values are sqlite, postgres; got {args.storages!r}")
    if args.ticks < 1 or args.active < 0:
        parser.error("--ticks must be >= 1 and --active >= 0")
    if args.active > run_counts[0]:
        parser.error(f"--active ({args.active}) must not exceed the smallest --runs ({run_counts[0]})")

    import boto3
    from dagster import DagsterRunStatus
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from dpe_dagster.pools.aws_emulator import emulated_aws

    console = Console()
    console.print(f"machine: {machine()}")
    args.out.mkdir(parents=True, exist_ok=True)
    max_pools = pool_counts[-1]
    results = []
    started = time.time()
    cells_of = [("per-pool", n) for n in pool_counts if n <= args.per_pool_max_pools] + \
               [("batched", n) for n in pool_counts]
    cells = len(storages) * len(run_counts) * len(cells_of)
    with emulated_aws(environment(max_pools)) as aws, \
            Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     console=console) as progress:
        autoscaling = boto3.client("autoscaling", endpoint_url=aws.url, region_name=aws.region)
        task = progress.add_task("cells", total=cells)
        for storage in storages:
            if storage == "postgres":
                postgres("drop")
                postgres("create")
            try:
                with open_instance(storage, args.out / storage / "dagster") as instance:
                    progress.update(task, description=f"{storage}: {args.active} active runs")
                    add_runs(instance, args.active, max_pools, DagsterRunStatus.STARTED, 0)
                    stored = args.active
                    for n_runs in run_counts:
                        progress.update(task, description=f"{storage}: filling to {n_runs:,} runs")
                        add_runs(instance, n_runs - stored, max_pools, DagsterRunStatus.SUCCESS, stored)
                        stored = n_runs
                        for variant, n_pools in cells_of:
                            progress.update(task, description=f"{storage}: {n_runs:,} runs, {n_pools} pools, {variant}")
                            reset_groups(autoscaling, n_pools)
                            use_look_ahead(variant == "batched")
                            cell = measure(instance, environment(n_pools), args.ticks)
                            expected = sum(1 for i in range(args.active) if i % max_pools < n_pools)
                            if cell["active_seen"] != expected:
                                raise BenchError(f"demand read saw {cell['active_seen']} active runs, expected {expected}")
                            results.append({"storage": storage, "runs": n_runs, "pools": n_pools, "variant": variant,
                                            **cell})
                            # Written after every cell, so a long grid that is stopped keeps what it measured.
                            (args.out / "tick_cost.partial.json").write_text(json.dumps(results, indent=2))
                            progress.update(task, advance=1)
            finally:
                if storage == "postgres":
                    postgres("drop")
    table = Table(title=f"One autoscaler tick (median of {args.ticks}); {args.active} active runs")
    for col in ("storage", "runs", "pools", "group describes", "read_demand ms", "tag-filtered read ms (before)",
                "tick ms", "tick ms per pool"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["storage"], f"{r['runs']:,}", str(r["pools"]), r["variant"], f"{r['read_demand_s'] * 1000:.1f}",
                      f"{r['tag_filtered_read_s'] * 1000:.1f}", f"{r['tick_s'] * 1000:.0f}", f"{r['tick_s'] * 1000 / r['pools']:.1f}")
    console.print(table)
    flat = []
    for storage in storages:
        for variant, n_pools in cells_of:
            rows = [r for r in results if r["storage"] == storage and r["pools"] == n_pools and r["variant"] == variant]
            lo, hi = rows[0], rows[-1]
            flat.append({"storage": storage, "pools": n_pools, "variant": variant,
                         "read_ratio_largest_vs_smallest": hi["read_demand_s"] / lo["read_demand_s"],
                         "tick_ratio_largest_vs_smallest": hi["tick_s"] / lo["tick_s"]})
            console.print(f"{storage}, {n_pools} pools, {variant}: {hi['runs']:,} vs {lo['runs']:,} runs -> demand read "
                          f"x{flat[-1]['read_ratio_largest_vs_smallest']:.2f}, tick x{flat[-1]['tick_ratio_largest_vs_smallest']:.2f}")
    speedups = []
    for r in results:
        if r["variant"] != "batched":
            continue
        base = next((b for b in results if b["variant"] == "per-pool" and
                     (b["storage"], b["runs"], b["pools"]) == (r["storage"], r["runs"], r["pools"])), None)
        if base is not None:
            speedups.append({"storage": r["storage"], "runs": r["runs"], "pools": r["pools"],
                             "per_pool_tick_s": base["tick_s"], "batched_tick_s": r["tick_s"],
                             "per_pool_over_batched": base["tick_s"] / r["tick_s"]})
            console.print(f"{r['storage']}, {r['runs']:,} runs, {r['pools']} pools: per-pool describes "
                          f"{base['tick_s'] * 1000:.0f} ms vs batched {r['tick_s'] * 1000:.0f} ms per tick "
                          f"-> x{speedups[-1]['per_pool_over_batched']:.2f}")
    png = args.plot or args.out / "tick_cost.png"
    plot(results, png)
    path = write_report(args.out, "tick_cost", started, active=args.active, ticks=args.ticks,
                        results=results, flatness=flat, batched_vs_per_pool=speedups)
    console.print(f"results: {path}; curves: {png}")
    return 0


if __name__ == "__main__":
    run_main("tick_cost", main)
