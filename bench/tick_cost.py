"""Tick cost at scale: one `dpe_autoscaler` tick with many pools and many runs in run storage.

For each storage (SQLite, PostgreSQL) the run storage grows through the run counts (finished runs,
every one tagged with a pool, as a long-lived instance has them) while a fixed number of active runs
(`--active`, STARTED, one per pool) waits on the first pools. At each run count and each pool count,
the real sensor ticks against real `aws_asg` pools on moto's server on loopback (one group per pool,
created once); the tick's time and, separately, the time of its demand read (`read_demand`: the run
storage part) are the medians of `--ticks` ticks after one warm-up tick.

The demand read must stay flat as finished runs accumulate (it asks for active statuses only, an
indexed query); the pool side grows with the number of pools (AWS calls per pool).

At the largest run count, two more scenarios (`--scenarios`): `busy`, every pool with a node up and
a run on it (steady ticks, then churning ticks where every node turns idle or busy), with the AWS
calls of each tick counted by operation; `ledger`, the usage-ledger sensor's tick (with a cursor per
pool) against one read of its streams, measured in the same run.

    .venv/bin/python bench/tick_cost.py
    .venv/bin/python bench/tick_cost.py --quick
    .venv/bin/python bench/tick_cost.py --scenarios busy,ledger --runs 10000
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

from bench.common import run_main, write_report, OUT, BenchError, autoscaler_ticks, machine, median  # noqa: E402

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
def add_runs(instance, count: int, n_pools: int, status, start: int) -> list[str]:
    """Insert `count` runs through the run storage's own tables (its schema and indexes), in batches;
    run `start + i` goes to pool `(start + i) % n_pools`. Returns their ids."""
    from dagster import DagsterRun
    from dagster._core.storage.runs.schema import RunsTable, RunTagsTable
    from dagster._serdes import serialize_value

    from dpe_dagster.tags import pool_tags

    storage = instance.run_storage
    now = time.time()
    ids: list[str] = []
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
        ids += [r["run_id"] for r in runs]
    return ids


def open_instance(kind: str, home: Path, db: str = PG_DB):
    from dagster import DagsterInstance

    from dpe_dagster.instance import write_instance

    shutil.rmtree(home, ignore_errors=True)
    extra = {"storage": {"postgres": {"postgres_url": f"{PG_BASE}/{db}"}}} if kind == "postgres" else {}
    write_instance(home, environment(1), extra)
    os.environ["DAGSTER_HOME"] = str(home)  # the aws-sim busy lookup reads runs from this instance
    return DagsterInstance.from_config(str(home))


def postgres(action: str, db: str = PG_DB) -> None:
    """Create or drop a benchmark's database."""
    cmd = {"create": ["createdb", "-h", "127.0.0.1", "-U", "postgres", db],
           "drop": ["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", db]}[action]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"{cmd[0]}: {error} (is PostgreSQL on 127.0.0.1:5432?)") from None
    if result.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed: {result.stderr.strip()} (is PostgreSQL on 127.0.0.1:5432?)")


# -- one cell -----------------------------------------------------------------------------------------
def measure(instance, env, ticks: int, calls: "AwsCalls | None" = None) -> dict:
    from dagster import RunsFilter

    from dpe_dagster.runs import ACTIVE_STATUSES
    from dpe_dagster.scaling.demand import read_demand
    from dpe_dagster.tags import POOL_TAG

    tick = autoscaler_ticks(instance, env)
    first = tick()  # opens the pools, scales up for the active runs
    before = dict(calls.counts) if calls else {}
    tick_times = [tick() for _ in range(ticks)]
    sent = {op: n / ticks for op, n in calls.since(before).items()} if calls else {}
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
            "tag_filtered_read_s": median(tagged_times), "active_seen": sum(len(v) for v in demand.by_pool.values()),
            "calls": sent}


# -- nodes up and busy ---------------------------------------------------------------------------------
class AwsCalls:
    """Counts the AWS calls the pools send, by operation, on the clients every pool of this process
    shares (`aws_asg.make_clients`)."""

    def __init__(self, env):
        from dpe_dagster.pools.aws.asg import AwsSettings, make_clients

        self.counts: dict[str, int] = {}
        for client in make_clients(AwsSettings.parse(dict(env.block("aws")))):
            client.meta.events.register("before-call", self._count)

    def _count(self, model, **_kwargs) -> None:
        self.counts[model.name] = self.counts.get(model.name, 0) + 1

    def since(self, before: dict[str, int]) -> dict[str, int]:
        return {k: v - before.get(k, 0) for k, v in sorted(self.counts.items()) if v - before.get(k, 0)}


def finish_runs(instance, run_ids: list[str]) -> None:
    from dagster import DagsterEventType
    from dagster._core.events import DagsterEvent

    for run_id in run_ids:
        instance.run_storage.handle_run_event(
            run_id, DagsterEvent(event_type_value=DagsterEventType.RUN_SUCCESS.value, job_name="etl"))


def busy_nodes(autoscaling, n_pools: int) -> int:
    """Instances in service and protected from scale-in (dpe protects the busy ones) over the groups."""
    names = [f"dpe-bench-{pool_name(i)}" for i in range(n_pools)]
    found = 0
    for start in range(0, len(names), 100):
        for group in autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=names[start:start + 100],
                                                              MaxRecords=100)["AutoScalingGroups"]:
            found += sum(1 for m in group["Instances"] if m["LifecycleState"] == "InService" and m["ProtectedFromScaleIn"])
    return found


def measure_busy(instance, env, n_pools: int, ticks: int, calls: AwsCalls, stored: int, autoscaling) -> dict:
    """Every pool holds one node with a run on it (STARTED, 2 CPUs: a whole node), as the emulator
    places runs (`busy_source: dagster_runs`). Steady: the same runs tick after tick (the nodes'
    DescribeInstances and busy lookups, nothing changes). Churn: before each tick (untimed) every
    pool's run ends or a new one starts, so every node turns idle or busy and its scale-in
    protection is released or set (SetInstanceProtection) in the tick."""
    from dagster import DagsterRunStatus

    timed = autoscaler_ticks(instance, env)

    def tick() -> tuple[float, dict[str, int]]:
        before = dict(calls.counts)
        return timed(), calls.since(before)

    running = add_runs(instance, n_pools, n_pools, DagsterRunStatus.STARTED, stored)
    stored += n_pools
    tick()  # scales every pool up to one node
    _, first_seen = tick()  # the nodes are seen busy and protected
    busy = busy_nodes(autoscaling, n_pools)
    if busy < n_pools:  # the first pools also hold the grid's active runs: a second node each
        raise BenchError(f"{busy} busy, protected node(s) over {n_pools} pools; expected at least one per pool")
    steady = [tick() for _ in range(ticks)]
    churn = []
    for number in range(ticks):
        if number % 2 == 0:
            finish_runs(instance, running)
            running = []
        else:
            running = add_runs(instance, n_pools, n_pools, DagsterRunStatus.STARTED, stored)
            stored += n_pools
        churn.append(tick())
    finish_runs(instance, running)

    def per_tick(samples) -> dict[str, float]:
        ops = sorted({op for _, counted in samples for op in counted})
        return {op: sum(counted.get(op, 0) for _, counted in samples) / len(samples) for op in ops}

    return {"steady_tick_s": median([t for t, _ in steady]), "churn_tick_s": median([t for t, _ in churn]),
            "steady_calls": per_tick(steady), "churn_calls": per_tick(churn), "first_busy_calls": first_seen,
            "busy_nodes": busy, "stored": stored}


def empty_groups(autoscaling, n_pools: int) -> None:
    """Every group back to zero instances, protection released first (a protected instance is kept)."""
    for i in range(n_pools):
        name = f"dpe-bench-{pool_name(i)}"
        group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
        ids = [m["InstanceId"] for m in group["Instances"] if m.get("ProtectedFromScaleIn")]
        if ids:
            autoscaling.set_instance_protection(AutoScalingGroupName=name, InstanceIds=ids, ProtectedFromScaleIn=False)
    reset_groups(autoscaling, n_pools)


# -- the ledger sensor ---------------------------------------------------------------------------------
def measure_ledger(instance, env, ticks: int) -> dict:
    """The ledger sensor's tick when nothing new has ended (every pool's cursor at the head of the
    run-finished events and of the node lifetimes), timed through the real sensor, with the count
    of storage reads it sent. Baseline in the same run: one read of those same streams (what each
    pool would read again if each read its own), so the ratio is what the pools add to a tick."""
    from dagster import build_sensor_context

    from dpe_dagster.usage.sensor import ReadCursor, build_ledger_sensor, dump_cursor, ended_events, node_lifetimes_after

    sensor = build_ledger_sensor(env)
    _, runs_head = ended_events(instance, None)
    _, nodes_head = node_lifetimes_after(instance, None)
    cursor = dump_cursor({name: {"runs": ReadCursor(after=runs_head), "nodes": ReadCursor(after=nodes_head)}
                          for name in env.pools})
    queries = 0
    reads = ("get_run_records", "fetch_run_status_changes", "fetch_observations")
    originals = {name: getattr(instance, name) for name in reads}

    def counted(original):
        def call(*args, **kwargs):
            nonlocal queries
            queries += 1
            return original(*args, **kwargs)
        return call

    sensor_times, one_times = [], []
    for number in range(ticks + 1):  # the first of each is a warm-up
        for name, original in originals.items():
            setattr(instance, name, counted(original))
        try:
            queries = 0
            started = time.perf_counter()
            sensor(build_sensor_context(instance=instance, cursor=cursor))
            elapsed = time.perf_counter() - started
        finally:
            for name in reads:
                delattr(instance, name)  # back to the class's own methods
        sent = queries
        started = time.perf_counter()
        found, _ = ended_events(instance, runs_head)
        node_lifetimes_after(instance, nodes_head)
        one = time.perf_counter() - started
        if found:
            raise BenchError(f"the one-read baseline found {len(found)} ended run(s) after the cursor; expected none")
        if number:
            sensor_times.append(elapsed)
            one_times.append(one)
    return {"ledger_tick_s": median(sensor_times), "one_query_s": median(one_times), "queries_per_tick": sent,
            "per_pool_over_one_query": median(sensor_times) / median(one_times)}


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


def _calls(counted: dict[str, float]) -> str:
    return ", ".join(f"{op} {n:g}" for op, n in counted.items()) or "none"


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
    parser.add_argument("--scenarios", default="grid,busy,ledger",
                        help="grid (pools mostly at zero, the run-count grid), busy (every pool with a busy node, "
                             "steady and churning), ledger (the ledger sensor's per-pool queries vs one query); "
                             "busy and ledger run at the largest --runs (default all three)")
    parser.add_argument("--busy-max-pools", type=int, default=1000,
                        help="busy and ledger scenarios up to this many pools (default 1000)")
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
    scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()]
    if not scenarios or any(x not in ("grid", "busy", "ledger") for x in scenarios):
        parser.error(f"--scenarios: allowed values are grid, busy, ledger; got {args.scenarios!r}")
    if args.active > run_counts[0]:
        parser.error(f"--active ({args.active}) must not exceed the smallest --runs ({run_counts[0]})")

    import boto3
    from dagster import DagsterRunStatus
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from dpe_dagster.pools.aws.emulator import emulated_aws

    console = Console()
    console.print(f"machine: {machine()}")
    args.out.mkdir(parents=True, exist_ok=True)
    max_pools = pool_counts[-1]
    results = []
    started = time.time()
    cells_of = [("per-pool", n) for n in pool_counts if n <= args.per_pool_max_pools] + \
               [("batched", n) for n in pool_counts]
    if "grid" not in scenarios:
        cells_of = []
    busy_pools = [n for n in pool_counts if n <= args.busy_max_pools]
    extra = len([x for x in scenarios if x in ("busy", "ledger")]) * len(busy_pools)
    cells = len(storages) * (len(run_counts) * len(cells_of) + extra)
    busy_results, ledger_results = [], []
    with emulated_aws(environment(max_pools)) as aws, \
            Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     console=console) as progress:
        autoscaling = boto3.client("autoscaling", endpoint_url=aws.url, region_name=aws.region)
        calls = AwsCalls(environment(1))
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
                            cell = measure(instance, environment(n_pools), args.ticks, calls)
                            expected = sum(1 for i in range(args.active) if i % max_pools < n_pools)
                            if cell["active_seen"] != expected:
                                raise BenchError(f"demand read saw {cell['active_seen']} active runs, expected {expected}")
                            results.append({"storage": storage, "runs": n_runs, "pools": n_pools, "variant": variant,
                                            **cell})
                            # Written after every cell, so a long grid that is stopped keeps what it measured.
                            (args.out / "tick_cost.partial.json").write_text(json.dumps(results, indent=2))
                            progress.update(task, advance=1)
                    for n_pools in busy_pools if "busy" in scenarios else []:
                        progress.update(task, description=f"{storage}: {stored:,} runs, {n_pools} pools busy")
                        reset_groups(autoscaling, max_pools)
                        use_look_ahead(True)
                        cell = measure_busy(instance, environment(n_pools), n_pools, args.ticks, calls, stored,
                                            autoscaling)
                        stored = cell.pop("stored")
                        empty_groups(autoscaling, n_pools)
                        busy_results.append({"storage": storage, "runs": stored, "pools": n_pools, **cell})
                        (args.out / "tick_cost.busy.partial.json").write_text(json.dumps(busy_results, indent=2))
                        progress.update(task, advance=1)
                    for n_pools in busy_pools if "ledger" in scenarios else []:
                        progress.update(task, description=f"{storage}: {stored:,} runs, {n_pools} pools, ledger")
                        ledger_results.append({"storage": storage, "runs": stored, "pools": n_pools,
                                               **measure_ledger(instance, environment(n_pools), args.ticks)})
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
    if busy_results:
        busy_table = Table(title=f"Every pool with a busy node (median of {args.ticks} ticks); AWS calls per tick")
        for col in ("storage", "runs", "pools", "steady tick ms", "steady calls", "churn tick ms", "churn calls",
                    "steady / mostly-zero tick"):
            busy_table.add_column(col, justify="right")
        for r in busy_results:
            # The grid's tick at the same pool count, on the largest run count: pools mostly at zero.
            idle = next((g for g in results if g["variant"] == "batched" and
                         (g["storage"], g["runs"], g["pools"]) == (r["storage"], run_counts[-1], r["pools"])), None)
            r["steady_over_mostly_zero"] = r["steady_tick_s"] / idle["tick_s"] if idle else None
            busy_table.add_row(r["storage"], f"{r['runs']:,}", str(r["pools"]), f"{r['steady_tick_s'] * 1000:.0f}",
                               _calls(r["steady_calls"]), f"{r['churn_tick_s'] * 1000:.0f}", _calls(r["churn_calls"]),
                               f"x{r['steady_over_mostly_zero']:.2f}" if idle else "-")
        console.print(busy_table)
    for r in ledger_results:
        console.print(f"{r['storage']}, {r['runs']:,} runs, {r['pools']} pools: ledger sensor tick "
                      f"{r['ledger_tick_s'] * 1000:.1f} ms ({r['queries_per_tick']} run-storage queries) vs one query "
                      f"{r['one_query_s'] * 1000:.1f} ms -> x{r['per_pool_over_one_query']:.1f}")
    png = None
    if results:
        png = args.plot or args.out / "tick_cost.png"
        plot(results, png)
    path = write_report(args.out, "tick_cost", started, active=args.active, ticks=args.ticks, scenarios=scenarios,
                        results=results, flatness=flat, batched_vs_per_pool=speedups, busy=busy_results,
                        ledger=ledger_results)
    console.print(f"results: {path}" + (f"; curves: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    run_main("tick_cost", main)
