"""The `dpe` command line."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from dpe_dagster.config import ConfigError
from dpe_dagster.console import command_environment, command_instance, console, err, print_error

app = typer.Typer(help="dpe: on-demand node pools for Dagster runs, and what every run cost.", no_args_is_help=True,
                  add_completion=False)
def _demo_job() -> str:
    from dpe_dagster.environment import project_table

    try:
        job = project_table().get("demo_job")
    except ConfigError as error:
        print_error("configuration error:", error)
        raise typer.Exit(2) from None
    if not isinstance(job, str) or not job:
        print_error("--job:", "name the job to run, or set [tool.dpe] demo_job in the project's pyproject.toml")
        raise typer.Exit(2)
    return job


@app.command()
def demo(
    timeout: float = typer.Option(900, min=30, help="Seconds the whole cycle may take before it counts as failed."),
    scale_factor: Optional[float] = typer.Option(None, min=0.001, max=100,
                                                 help="sets DPE_TPCH_SCALE_FACTOR, which this repository's example "
                                                 "TPC-H pipelines read."),
    job: Optional[str] = typer.Option(None, help="The job to run (default: [tool.dpe] demo_job in pyproject.toml)."),
) -> None:
    """Run the whole cycle for real: daemon up, pipeline queued, pool scaled up, pipeline run,
    usage recorded, pool scaled down to its minimum, report printed, everything stopped."""
    from dpe_dagster.demo import DemoFailed, run_demo
    from dpe_dagster.spark.java import JavaMissing

    if scale_factor is not None:
        os.environ["DPE_TPCH_SCALE_FACTOR"] = f"{scale_factor:g}"
    env = command_environment()
    job = job or _demo_job()
    try:
        run_demo(env, job, timeout, console)
    except JavaMissing as error:
        print_error("", error)
        raise typer.Exit(2) from None
    except DemoFailed as error:
        print_error("demo failed:", error)
        raise typer.Exit(1) from None


@app.command()
def usage(
    by: str = typer.Option("run", "--by", help="Group by run, asset, pool, team or day."),
    since: Optional[str] = typer.Option(None, help="Only runs that ended at or after this ISO date/time (UTC)."),
    until: Optional[str] = typer.Option(None, help="Only runs that ended before this ISO date/time (UTC)."),
    output: str = typer.Option("table", "--format", help="table, json or csv."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
    list_nodes: bool = typer.Option(False, "--nodes", help="List node lifetimes (removed in the window) instead."),
) -> None:
    """Print the usage ledger, read back from Dagster's event log."""
    from dpe_dagster.usage.eventlog import read_node_lifetimes, read_usage
    from dpe_dagster.scaling.cursor import read_busy_seconds
    from dpe_dagster.usage.live import report_nodes
    from dpe_dagster.usage.report import node_rows, nodes_table, rows_csv, rows_table, runs_table
    from dpe_dagster.usage.summary import GROUPINGS, Window, parse_time, summarize

    output = "json" if as_json else output
    problems = []
    if by not in GROUPINGS:
        problems.append(f"--by: must be one of {', '.join(GROUPINGS)}; got {by!r}")
    if output not in ("table", "json", "csv"):
        problems.append(f"--format: must be one of table, json, csv; got {output!r}")
    try:
        window = Window(parse_time("--since", since), parse_time("--until", until))
    except ValueError as error:
        problems.append(str(error))
    if problems:
        print_error("", "\n".join(problems))
        raise typer.Exit(2)
    with command_instance() as instance:
        records, nodes = read_usage(instance), read_node_lifetimes(instance)
        # nodes still up count too, with the busy time the autoscaler has counted of them
        with_live, unread = report_nodes(instance, command_environment(), time.time(), read_busy_seconds)
    for pool, error in unread.items():
        err.print(f"[yellow]pool {pool}: its live nodes are left out: {escape(str(error))}[/yellow]")
    rows = summarize(by, records, with_live, window)
    if list_nodes:
        removed = [n for n in nodes if window.holds(n.removed_at)]
        rows = node_rows(removed)
        if output == "table":
            console.print(nodes_table(removed))
            return
    if output == "json":
        print(json.dumps(rows, indent=2))
    elif output == "csv":
        print(rows_csv(rows), end="")
    elif by == "run":
        console.print(runs_table([r for r in records if window.holds(r.ended_at)]))
        console.print(nodes_table([n for n in nodes if window.holds(n.removed_at)]))
    else:
        console.print(rows_table(rows, f"dpe usage by {by} (from Dagster's event log)"))


@app.command()
def pools(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show each node pool: min, max, target and its nodes, as the provider reports them, how long
    its runs waited for room today (p95, queued to running) next to its wait target (marked when
    the target did not hold: more than 5% of today's runs waited past theirs), and the last failure
    the autoscaler recorded for it (cleared once the autoscaler sizes the pool again)."""
    from datetime import datetime, timezone

    from rich.table import Table

    from dpe_dagster.paths import dagster_home
    from dpe_dagster.pools import PoolError, open_pool
    from dpe_dagster.scaling.cursor import read_failures
    from dpe_dagster.usage.waits import read_waits_since, wait_targets, waits_by_pool_day
    from dpe_dagster.usage.summary import day_start

    env = command_environment()
    failures: dict[str, dict] = {}
    waits = {}
    if (dagster_home() / "dagster.yaml").exists():
        with command_instance() as instance:
            failures = read_failures(instance)
            today = read_waits_since(instance, day_start(time.time()), env.pools)
            waits = {day.pool: day for day in waits_by_pool_day(today, wait_targets(env))}
    out = []
    for name, config in env.pools.items():
        pool = open_pool(config, env)
        try:
            nodes, target, problem = pool.nodes(), pool.target(), None
        except PoolError as error:  # one pool's provider failing does not hide the others
            nodes, target, problem = [], None, str(error)
        out.append({
            "pool": name, "provider": config.provider, "lifecycle": config.lifecycle,
            "min": config.min_size, "max": config.max_size, "target": target, "error": problem,
            "nodes": [{"id": n.id, "state": n.state, "busy": n.busy, "instance_type": n.instance_type,
                       "lifecycle": n.lifecycle, "zone": n.zone, "launched_at": n.launched_at} for n in nodes],
            "wait_target_s": config.wait_target_s,
            "waits_today": None if name not in waits else {
                key: value for key, value in waits[name].as_json().items()
                if key in ("runs", "p95_s", "past_target", "held")},
            "last_failure": failures.get(name),
        })
    if as_json:
        print(json.dumps(out, indent=2))
        return
    table = Table(title=f"node pools of environment {env.name}")
    # "wait target" on two lines: the table fits 160 columns with a provider's error in two cells.
    for column in ("pool", "provider", "lifecycle", "min", "max", "target", "nodes", "wait p95 today", "wait\ntarget",
                   "last failure"):
        table.add_column(column)
    for p in out:
        nodes = ", ".join(f"{n['id']} ({n['state']}{', busy' if n['busy'] else ''})" for n in p["nodes"]) or "-"
        if p["error"]:
            nodes = f"[red]{p['error']}[/red]"
        failure = p["last_failure"]
        shown = "-" if failure is None else (
            f"{datetime.fromtimestamp(failure['at'], timezone.utc):%Y-%m-%d %H:%M:%S} UTC: {failure['error']}")
        waited = p["waits_today"]
        if waited is not None:
            past = f", {waited['past_target']} past target" if waited["past_target"] else ""
            waited = f"{waited['p95_s']:.1f}s ({waited['runs']} run(s){past})" + (
                "" if waited["held"] is not False else " [red]target missed[/red]")
        table.add_row(p["pool"], p["provider"], p["lifecycle"], str(p["min"]), str(p["max"]),
                      "?" if p["target"] is None else str(p["target"]), nodes, waited or "-",
                      f"{p['wait_target_s']:g}s", shown)
    console.print(table)


@app.command()
def schema(check: Optional[Path] = typer.Option(None, "--check", help="Validate this configuration file instead "
                                                                       "of printing the schema.")) -> None:
    """Print the JSON schema of a dpe configuration file (pools.yaml), for editors and CI; with
    --check, validate one file as dpe loads it (environment variables resolved)."""
    from dpe_dagster.config import schema as config_schema

    if check is None:
        print(json.dumps(config_schema(), indent=2))
        return
    env = command_environment(check)
    console.print(f"{check}: valid; pools: {', '.join(env.pools)}")


@app.command()
def down() -> None:
    """Stop every local pool process (Spark master and workers), busy or not."""
    from dpe_dagster.pools import open_pool

    env = command_environment()
    for config in env.pools.values():
        open_pool(config, env).shutdown()
        console.print(f"pool {config.name}: stopped")


@app.command()
def ui(port: int = typer.Option(3000, min=1024, max=65535, help="Port of the Dagster UI.")) -> None:
    """Open the Dagster UI (and daemon) on this environment's instance: `dagster dev`."""
    from dpe_dagster.daemon import dagster_bin
    from dpe_dagster.instance import write_instance
    from dpe_dagster.paths import dagster_home, project_root

    env = command_environment()
    home = dagster_home()
    write_instance(home, env)
    console.print(f"Dagster UI on http://127.0.0.1:{port} (instance {home}); Ctrl-C stops it.")
    os.environ["DAGSTER_HOME"] = str(home)
    os.chdir(project_root())
    os.execv(dagster_bin("dagster"), [dagster_bin("dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
                                      "-p", str(port)])


@app.command()
def metrics(port: int = typer.Option(9108, min=1, max=65535, help="Port to serve /metrics on."),
            address: str = typer.Option("0.0.0.0", help="Address to listen on."),
            once: bool = typer.Option(False, "--once", help="Print the series once (Prometheus' text format) and exit."),
            max_names: int = typer.Option(50, min=1, help="How many team and asset names the series name; later "
                                                          "ones are counted under 'other'.")) -> None:
    """Serve dpe's state as Prometheus series on /metrics: pools, the run queue, the autoscaler's
    ticks, budgets and the ledger (docs/metrics.md lists them)."""
    import logging
    import signal
    import threading

    from dpe_dagster.metrics import DpeCollector, exposition, serve

    env = command_environment()
    collector = DpeCollector(command_instance(), env, max_names=max_names)
    if once:
        print(exposition(collector), end="")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The ledger so far is read once, before serving: no scrape waits for a year of records.
    with console.status("reading the ledger and the runs' waits so far"):
        collector.warm()
    try:
        server, _ = serve(collector, port, address)
    except OSError as error:
        print_error("--port:", f"cannot listen on {address}:{port}: {error}")
        raise typer.Exit(2) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"serving dpe's series of environment {env.name} on http://{address}:{port}/metrics")
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.shutdown()


# -- subcommands defined next to their concept, and the installed providers' own ------------
def _register_subcommands() -> None:
    from dpe_dagster.providers import providers
    from dpe_dagster.sim.command import register as register_simulate

    register_simulate(app)
    for _, kind in sorted(providers().items()):
        for command in kind.commands():
            app.command(name=command.__name__.replace("_", "-"))(command)


_register_subcommands()

if __name__ == "__main__":
    app()
