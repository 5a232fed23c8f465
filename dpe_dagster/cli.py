"""The `dpe` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from dpe_dagster.config import ConfigError

app = typer.Typer(help="dpe: on-demand node pools for Dagster runs, and what every run cost.", no_args_is_help=True,
                  add_completion=False)
# Reports are wide: keep them readable when the output is a file or a pipe.
console = Console(width=None if sys.stdout.isatty() else 160)
# Errors are never wrapped: a path or a field name stays whole on one line (and greppable).
err = Console(stderr=True, soft_wrap=True)


def _error(label: str, message: object) -> None:
    """An error on stderr: the label in red, the message as written (no markup, so `[tool.dpe]`
    and `taints[0]` stay whole)."""
    err.print(f"[red]{escape(label)}[/red] {escape(str(message))}" if label else f"[red]{escape(str(message))}[/red]")


class StepFailed(RuntimeError):
    pass


def _environment(source: Optional[Path] = None):
    from dpe_dagster.environment import load_environment

    try:
        return load_environment(source)
    except ConfigError as error:
        _error("configuration error:", error)
        raise typer.Exit(2) from None


def _demo_job() -> str:
    from dpe_dagster.environment import project_table

    try:
        job = project_table().get("demo_job")
    except ConfigError as error:
        _error("configuration error:", error)
        raise typer.Exit(2) from None
    if not isinstance(job, str) or not job:
        _error("--job:", "name the job to run, or set [tool.dpe] demo_job in the project's pyproject.toml")
        raise typer.Exit(2)
    return job


def _instance(must_exist: bool = True):
    from dagster import DagsterInstance

    from dpe_dagster.paths import dagster_home

    home = dagster_home()
    if must_exist and not (home / "dagster.yaml").exists():
        _error(f"no dpe instance at {home}:", "run `dpe demo` (or `make demo`) first, or set DAGSTER_HOME")
        raise typer.Exit(2)
    return DagsterInstance.from_config(str(home))


def _wait(what: str, done: Callable[[], str | None], timeout_s: float, detail: Callable[[], str] = lambda: "") -> str:
    """Show a spinner until `done()` returns a message; fail after `timeout_s`."""
    start = time.monotonic()
    with console.status(what) as status:
        while True:
            message = done()
            if message is not None:
                console.print(f"[green]✓[/green] {what}: {message} [dim]({time.monotonic() - start:.0f}s)[/dim]")
                return message
            if time.monotonic() - start > timeout_s:
                raise StepFailed(f"{what}: not done after {timeout_s:.0f}s ({detail()})")
            status.update(f"{what} [dim]{time.monotonic() - start:.0f}s {detail()}[/dim]")
            time.sleep(1)


def _pool_summary(env) -> str:
    from dpe_dagster.pools import open_pool

    parts = []
    for name, config in env.pools.items():
        nodes = open_pool(config, env).nodes()
        busy = sum(n.busy for n in nodes)
        running = sum(n.state == "running" for n in nodes)
        parts.append(f"{name}: {len(nodes)} node(s), {running} running, {busy} busy")
    return "; ".join(parts)


@contextmanager
def _cloud_for(env):
    """What stands in for the environment's clouds for as long as the demo: the AWS emulator on
    loopback (`aws.emulator`), then the environment's `sandbox` (e.g. eks-sim's Kubernetes control
    plane). Yields the sandbox's object, or None: its `instance` (dagster.yaml sections) and
    `instance_written(path)`, when it has them, shape the demo's Dagster instance."""
    import importlib

    with ExitStack() as stack:
        if env.aws.get("emulator"):
            from dpe_dagster.pools.aws.emulator import emulated_aws

            stack.enter_context(emulated_aws(env))
        sandbox = None
        if env.sandbox:
            module, _, attribute = env.sandbox.partition(":")
            try:
                factory = getattr(importlib.import_module(module), attribute)
                with console.status(f"starting the sandbox {env.sandbox}"):
                    sandbox = stack.enter_context(factory(env))
            except Exception as error:
                raise StepFailed(f"sandbox: {env.sandbox} could not start: {type(error).__name__}: {error}") from error
            console.print(f"[green]✓[/green] sandbox {env.sandbox} started")
        yield sandbox


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
    from dagster import DagsterRunStatus

    from dpe_dagster.daemon import dagster_bin, start_daemon, stop_process_group
    from dpe_dagster.instance import write_instance
    from dpe_dagster.spark.java import JavaMissing, check_java
    from dpe_dagster.paths import dagster_home, dpe_home, project_root
    from dpe_dagster.pools import open_pool
    from dpe_dagster.pools.local.standalone import spark_pids_of
    from dpe_dagster.providers import provider
    from dpe_dagster.usage.eventlog import read_node_lifetimes
    from dpe_dagster.usage.ledger import read_run_usage
    from dpe_dagster.usage.report import nodes_table, runs_table

    if scale_factor is not None:
        os.environ["DPE_TPCH_SCALE_FACTOR"] = f"{scale_factor:g}"
    env = _environment()
    try:
        check_java()
    except JavaMissing as error:
        _error("", error)
        raise typer.Exit(2) from None
    home = dagster_home()
    os.environ["DAGSTER_HOME"] = str(home)
    # Every process the demo starts inherits DPE_HOME: that is how leftovers are found at the end.
    os.environ["DPE_HOME"] = str(dpe_home())
    job = job or _demo_job()
    console.print(f"dpe demo: environment [bold]{env.name}[/bold], job [bold]{job}[/bold], "
                  f"instance {home}")
    deadline = time.monotonic() + timeout
    left = lambda: max(5.0, deadline - time.monotonic())  # noqa: E731
    run_id = str(uuid.uuid4())
    failed = None
    with ExitStack() as stack:
        try:
            sandbox = stack.enter_context(_cloud_for(env))
            written = write_instance(home, env, getattr(sandbox, "instance", None))
            if hasattr(sandbox, "instance_written"):
                sandbox.instance_written(written)
            instance = stack.enter_context(_instance())
            daemon = start_daemon(home, dpe_home() / "logs" / "daemon.log")
            stack.callback(stop_process_group, daemon)
            console.print(f"[green]✓[/green] Dagster daemon started (pid {daemon.pid}, log {dpe_home() / 'logs'})")
            launch = subprocess.run(
                [dagster_bin("dagster"), "job", "launch", "-w", str(project_root() / "workspace.yaml"), "-j", job,
                 "--run-id", run_id],
                capture_output=True, text=True, env=dict(os.environ), cwd=project_root(), timeout=left(),
            )
            if launch.returncode != 0:
                raise StepFailed(f"could not queue job {job}: {launch.stderr.strip()[-2000:]}")
            console.print(f"[green]✓[/green] queued run {run_id} of job {job}")

            def status() -> DagsterRunStatus:
                run = instance.get_run_by_id(run_id)
                return run.status if run else DagsterRunStatus.NOT_STARTED

            ended = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
            detail = lambda: f"run {status().value}; {_pool_summary(env)}"  # noqa: E731
            seen: set[str] = set()  # nodes that came up for the run: each one removed must have its record

            def nodes_up() -> bool:
                up = [node.id for c in env.pools.values() for node in open_pool(c, env).nodes()]
                seen.update(up)
                return bool(up)

            def scaled_down() -> bool:
                pools = [(c, open_pool(c, env)) for c in env.pools.values()]
                nodes = [(c, pool, pool.nodes()) for c, pool in pools]
                alive = {node.id for _, _, up in nodes for node in up}
                return (all(len(up) <= c.min_size and pool.target() <= c.min_size for c, pool, up in nodes)
                        and seen - alive <= {n.node_id for n in read_node_lifetimes(instance)})

            _wait("scaling up for the queued run",
                  lambda: (_pool_summary(env) if nodes_up()
                           else ("run ended before any node came up" if status() in ended else None)),
                  left(), detail)
            final = _wait("running the pipeline", lambda: status().value if status() in ended else None, left(), detail)
            if final != DagsterRunStatus.SUCCESS.value:
                raise StepFailed(f"run {run_id} ended {final}; see it in the Dagster UI (`dpe ui`)")
            _wait("recording usage in the event log",
                  lambda: next((f"{r.node_seconds:.1f} node-seconds, ${r.cost_usd:.6f}"
                                for r in read_run_usage(instance) if r.run_id == run_id), None), left())
            _wait("scaling down after the idle timeout", lambda: _pool_summary(env) if scaled_down() else None,
                  left(), lambda: _pool_summary(env))
            console.print(runs_table([r for r in read_run_usage(instance) if r.run_id == run_id]))
            console.print(nodes_table(read_node_lifetimes(instance)[-10:]))
        except (StepFailed, subprocess.TimeoutExpired, OSError) as error:
            failed = str(error)
        finally:
            with console.status("stopping the daemon and every pool process"):
                stack.close()
                for config in env.pools.values():
                    if provider(config.provider).starts_processes_here:
                        open_pool(config, env).shutdown()
    leaked = spark_pids_of(dpe_home())
    if leaked:
        failed = (failed + "; " if failed else "") + f"Spark processes still alive after the demo: {sorted(leaked)}"
    if failed:
        _error("demo failed:", failed)
        raise typer.Exit(1)
    console.print("[green]demo finished[/green]: every Spark process it started is stopped. "
                  "`dpe usage` shows the ledger; `dpe ui` opens the Dagster UI; `dpe metrics --once` prints "
                  "its Prometheus series.")


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
    from dpe_dagster.usage.eventlog import read_node_lifetimes
    from dpe_dagster.usage.ledger import read_usage
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
        _error("", "\n".join(problems))
        raise typer.Exit(2)
    with _instance() as instance:
        records, nodes = read_usage(instance), read_node_lifetimes(instance)
        # nodes still up count too, with the busy time the autoscaler has counted of them
        with_live, unread = report_nodes(instance, _environment(), time.time(), read_busy_seconds)
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
    """Show each node pool: min, max, target and its nodes, as the provider reports them, and the
    last failure the autoscaler recorded for it (cleared once the autoscaler sizes the pool again)."""
    from datetime import datetime, timezone

    from rich.table import Table

    from dpe_dagster.paths import dagster_home
    from dpe_dagster.pools import PoolError, open_pool
    from dpe_dagster.scaling.cursor import read_failures

    env = _environment()
    failures: dict[str, dict] = {}
    if (dagster_home() / "dagster.yaml").exists():
        with _instance() as instance:
            failures = read_failures(instance)
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
            "last_failure": failures.get(name),
        })
    if as_json:
        print(json.dumps(out, indent=2))
        return
    table = Table(title=f"node pools of environment {env.name}")
    for column in ("pool", "provider", "lifecycle", "min", "max", "target", "nodes", "last failure"):
        table.add_column(column)
    for p in out:
        nodes = ", ".join(f"{n['id']} ({n['state']}{', busy' if n['busy'] else ''})" for n in p["nodes"]) or "-"
        if p["error"]:
            nodes = f"[red]{p['error']}[/red]"
        failure = p["last_failure"]
        shown = "-" if failure is None else (
            f"{datetime.fromtimestamp(failure['at'], timezone.utc):%Y-%m-%d %H:%M:%S} UTC: {failure['error']}")
        table.add_row(p["pool"], p["provider"], p["lifecycle"], str(p["min"]), str(p["max"]),
                      "?" if p["target"] is None else str(p["target"]), nodes, shown)
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
    env = _environment(check)
    console.print(f"{check}: valid; pools: {', '.join(env.pools)}")


@app.command()
def down() -> None:
    """Stop every local pool process (Spark master and workers), busy or not."""
    from dpe_dagster.pools import open_pool

    env = _environment()
    for config in env.pools.values():
        open_pool(config, env).shutdown()
        console.print(f"pool {config.name}: stopped")


@app.command()
def ui(port: int = typer.Option(3000, min=1024, max=65535, help="Port of the Dagster UI.")) -> None:
    """Open the Dagster UI (and daemon) on this environment's instance: `dagster dev`."""
    from dpe_dagster.daemon import dagster_bin
    from dpe_dagster.instance import write_instance
    from dpe_dagster.paths import dagster_home, project_root

    env = _environment()
    home = dagster_home()
    write_instance(home, env)
    console.print(f"Dagster UI on http://127.0.0.1:{port} (instance {home}); Ctrl-C stops it.")
    os.environ["DAGSTER_HOME"] = str(home)
    os.chdir(project_root())
    os.execv(dagster_bin("dagster"), [dagster_bin("dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
                                      "-p", str(port)])


# -- subcommands defined next to their concept register here ---------------------------------
@app.command()
def interruptions(once: bool = typer.Option(False, help="One long poll, then exit (default: poll forever)."),
                  wait_s: int = typer.Option(20, min=0, max=20, help="SQS WaitTimeSeconds of each poll.")) -> None:
    """Read the spot interruption queue continuously: cordon warned nodes, ask for replacements at once."""
    import logging

    from dpe_dagster.pools.aws.interruptions import read_forever, reader_for

    env = _environment()
    # The Dagster instance is mounted: tell the runs on warned nodes.
    instance = _instance() if os.environ.get("DAGSTER_HOME") else None
    try:
        reader = reader_for(env, instance)
    except Exception as error:  # ConfigError, PoolError: say which and stop
        _error("interruptions:", error)
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not read_forever(reader, once=once, wait_s=wait_s):
        raise typer.Exit(1)


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

    env = _environment()
    collector = DpeCollector(_instance(), env, max_names=max_names)
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
        _error("--port:", f"cannot listen on {address}:{port}: {error}")
        raise typer.Exit(2) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"serving dpe's series of environment {env.name} on http://{address}:{port}/metrics")
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.shutdown()


def _register_subcommands() -> None:
    from dpe_dagster.sim.command import register as register_simulate
    register_simulate(app)


_register_subcommands()

if __name__ == "__main__":
    app()
