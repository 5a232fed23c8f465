"""`dpe simulate`: replay a job trace through every scaling policy and compare what each cost."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dpe_dagster.config import PLACEMENTS, ConfigError, PoolConfig
from dpe_dagster.sim.boot import BootTime
from dpe_dagster.sim.engine import SimulationError
from dpe_dagster.sim.policies import DEFAULT_POLICIES, POLICIES, checked

if TYPE_CHECKING:
    from dpe_dagster.sim.run import Setup
from dpe_dagster.sim.schedules import ScheduleError, parse_schedules, runs_during_trace
from dpe_dagster.sim.trace import TraceError, read_trace
from dpe_dagster.sim.workload import build_workload

COLUMNS = (
    ("cost", "cost", "{:,.0f}"),
    ("x lower bound", "cost_vs_lower_bound", "{:.3f}"),
    ("node-hours", "node_hours", "{:,.0f}"),
    ("utilization", "utilization", "{:.1%}"),
    ("wait p50 s", "wait_p50_s", "{:,.0f}"),
    ("wait p95 s", "wait_p95_s", "{:,.0f}"),
    ("wait p99 s", "wait_p99_s", "{:,.0f}"),
    ("scale-ups", "scale_ups", "{:,}"),
    ("scale-downs", "scale_downs", "{:,}"),
    ("sim s", "sim_seconds", "{:.1f}"),
)


def _fail(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code=2)


def _positive(name: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        _fail(f"{name}: must be a finite number {'>= 0' if allow_zero else '> 0'}; got {value:g}")


def parse_idle_timeout(text: str) -> dict:
    """`--idle-timeout SECONDS` (fixed) or `auto` (decided by the policy, capped at the pool's)."""
    if text == "auto":
        return {"idle_timeout_s": 1800.0, "idle_timeout_mode": "auto"}
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        _fail(f"--idle-timeout: must be a number of seconds >= 0 or 'auto'; got {text!r}")
    return {"idle_timeout_s": seconds}


def replayed_pool(environment: str | None, pool: str | None) -> tuple[PoolConfig, float]:
    """The pool dpe replays with, exactly as that environment deploys it, and its sensor interval."""
    from dpe_dagster.environment import load_environment, project_environments

    if environment is not None:
        named, _ = project_environments()
        if environment not in named:
            raise ConfigError(f"--environment: unknown environment {environment!r}; "
                              f"allowed: {', '.join(sorted(named)) or '(none: the project has no [tool.dpe.environments])'}")
    env = load_environment(name=environment)
    if pool is not None and pool not in env.pools:
        raise ConfigError(f"--pool: no pool {pool!r} in environment {env.name!r}; "
                          f"allowed: {', '.join(sorted(env.pools))}")
    config = env.pool(pool) if pool is not None else next(iter(env.pools.values()))
    return config, float(env.sensor_interval_s)


def replay_summary(deployed: PoolConfig, setup: "Setup") -> dict:
    """What `dpe` replayed: the deployed pool's settings, and the shape the trace was run on."""
    pool = setup.pool()
    return {"environment_pool": deployed.name, "node_cpus": pool.node_cpus, "sensor_interval_s": setup.sensor_interval_s,
            **{name: getattr(pool, name) for name in ("idle_timeout_s", "idle_timeout_mode", "placement",
                                                      "wait_target_s", "boot_timeout_s", "min_size")}}


def render_table(result: dict, console: Console) -> None:
    bound = result["lower_bound"]
    table = Table(title=f"{result['trace']}: {result['jobs']:,} jobs; lower bound {bound['cost']:,.0f} "
                        f"({bound['node_hours']:,.0f} node-hours)")
    table.add_column("policy")
    for title, _, _ in COLUMNS:
        table.add_column(title, justify="right")
    for name, row in result["policies"].items():
        table.add_row(name, *[fmt.format(row[key]) if row.get(key) is not None else "-" for _, key, fmt in COLUMNS])
    console.print(table)
    replayed = result.get("dpe_pool")
    if replayed:
        console.print("dpe replays pool " + replayed["environment_pool"] + " as deployed: "
                      + ", ".join(f"{k} {v}" for k, v in replayed.items() if k != "environment_pool"), highlight=False)
    seer = result.get("clairvoyant")
    if seer:
        console.print(f"clairvoyant pool (knows every arrival, boots ahead, packs perfectly): "
                      f"{seer['cost']:,.0f}, {seer['cost_vs_lower_bound']:.3f}x the lower bound")
    extra = {name: row["scheduled_wait_p95_s"] for name, row in result["policies"].items()
             if "scheduled_wait_p95_s" in row}
    if extra:
        console.print("scheduled runs, wait p95 s: " + ", ".join(f"{k} {v:g}" for k, v in extra.items()))


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate_command(
        trace: Path = typer.Option(..., "--trace", help="Job trace: .swf or .csv, gzipped or not."),
        environment: Optional[str] = typer.Option(
            None, "--environment", help="Environment whose pool dpe replays with (default: DPE_ENV, else local)."),
        pool_name: Optional[str] = typer.Option(
            None, "--pool", help="Pool of that environment to replay (default: its first pool)."),
        node_cpus: Optional[float] = typer.Option(
            None, "--node-cpus", help="CPUs per node (default: the pool's node shape)."),
        node_memory_gb: Optional[float] = typer.Option(
            None, "--node-memory-gb", help="Memory per node; by default memory is not modelled."),
        boot_seconds: str = typer.Option(
            "120", "--boot-seconds", help="Node boot time: SECONDS, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA."),
        policy: Optional[list[str]] = typer.Option(
            None, "--policy", help=f"Policy to run (repeatable; default: {', '.join(DEFAULT_POLICIES)}): "
            + "; ".join(f"{name}: {policy.summary}" for name, policy in POLICIES.items()) + "."),
        price: Optional[float] = typer.Option(None, "--price", help="Price per node-hour (default: the pool's)."),
        spot_rate: float = typer.Option(
            0.0, "--spot-interruptions-per-hour", help="Spot interruptions per node-hour (0: none)."),
        fallback_price: Optional[float] = typer.Option(
            None, "--fallback-price", help="Price per node-hour of the fallback pool used after an interruption."),
        idle_timeout: Optional[str] = typer.Option(
            None, "--idle-timeout", help="Override the pool's idle timeout: SECONDS, or auto (decided by the "
            "policy, capped at the pool's idle_timeout_s)."),
        schedules: Optional[Path] = typer.Option(
            None, "--schedules", help="Cron schedules whose runs are added on top of the trace."),
        skip_bad_lines: bool = typer.Option(
            False, "--skip-bad-lines", help="Skip and count malformed trace lines instead of failing."),
        placement: Optional[str] = typer.Option(
            None, "--placement", help="Override the pool's placement: ending-together (by expected end) or first-fit."),
        wait_target: Optional[float] = typer.Option(
            None, "--wait-target", help="Replay the pool at another wait_target_s: how long a run may wait for room, "
            "at p95 (seconds >= 0)."),
        evictable: bool = typer.Option(
            False, "--evictable", help="Let reactive and consolidating evict running jobs (they restart) "
            "to remove underused nodes; by default jobs are marked not evictable."),
        seed: int = typer.Option(0, "--seed", help="Seed for boot times and interruptions."),
        as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    ) -> None:
        """Replay a job trace through every scaling policy on the same nodes and prices."""
        try:
            from dpe_dagster.sim.run import Setup, simulate
        except ImportError as error:
            _fail(f"dpe simulate needs the sim extra (pip install 'dpe[sim]'): {error}")
        try:
            chosen = checked(policy) if policy else DEFAULT_POLICIES
        except ValueError as error:
            _fail(str(error))
        if placement is not None and placement not in PLACEMENTS:
            _fail(f"--placement: must be one of {', '.join(PLACEMENTS)}; got {placement!r}")
        _positive("--node-cpus", node_cpus)
        _positive("--node-memory-gb", node_memory_gb)
        _positive("--price", price, allow_zero=True)
        _positive("--spot-interruptions-per-hour", spot_rate, allow_zero=True)
        _positive("--fallback-price", fallback_price, allow_zero=True)
        _positive("--wait-target", wait_target, allow_zero=True)
        try:
            boot = BootTime.parse(boot_seconds)
        except ValueError as error:
            _fail(str(error))
        extra = parse_idle_timeout(idle_timeout) if idle_timeout is not None else {}
        if placement is not None:
            extra["placement"] = placement
        if wait_target is not None:
            extra["wait_target_s"] = wait_target
        try:
            config, interval = replayed_pool(environment, pool_name)
            loaded = read_trace(trace, skip_bad_lines=skip_bad_lines)
            runs = []
            if schedules is not None:
                runs = runs_during_trace(parse_schedules(schedules), loaded.start_unix, loaded.arrival[0],
                                         loaded.arrival[-1])
            work = build_workload(loaded, runs, memory=node_memory_gb is not None)
            world = {"node_cpus": node_cpus, "price": price}
            setup = Setup.from_pool(
                config, sensor_interval_s=interval, node_memory_gb=node_memory_gb, boot=boot,
                spot_rate_per_hour=spot_rate, fallback_price=fallback_price, seed=seed, evictable=evictable,
                idle_timeout_s=extra.pop("idle_timeout_s", None), pool_extra=extra,
                **{key: value for key, value in world.items() if value is not None})
            setup.pool()
        except (TraceError, ScheduleError, ConfigError) as error:
            _fail(str(error))
        console = Console(stderr=True)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            tasks = {name: bar.add_task(f"replaying {name}", total=1.0) for name in chosen}
            try:
                result = simulate(work, setup, chosen, progress=lambda name, f: bar.update(tasks[name], completed=f))
            except SimulationError as error:
                _fail(str(error))
        result["skipped_bad_lines"] = loaded.bad_lines
        result["excluded_jobs"] = loaded.excluded
        result["dpe_pool"] = replay_summary(config, setup)
        if schedules is not None:
            result["scheduled_runs"] = len(runs)
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            out = Console()
            render_table(result, out if out.is_terminal else Console(width=160))
            if loaded.bad_lines:
                typer.echo(f"skipped {loaded.bad_lines} malformed line(s)")
