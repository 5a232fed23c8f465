"""`dpe demo`: the whole cycle for real, one named step after another.

The environment's stand-ins for its clouds start (`stand_ins`), the demo's Dagster instance is
written and opened (`open_instance`) and the daemon started (`start_daemon_process`); the job is
queued (`queue_run`); then the demo waits for nodes to come up for the run (`wait_for_nodes`), for
the run to succeed (`wait_for_run`), for its usage record (`wait_for_usage`) and for every pool to be
back at its minimum (`wait_for_scale_down`), prints what the run cost (`print_summary`), and stops
everything it started (`stop_everything`), checking that no Spark process outlives it.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from dagster import DagsterInstance, DagsterRunStatus
from rich.console import Console

from dpe_dagster.config import Environment
from dpe_dagster.daemon import dagster_bin, start_daemon, stop_process_group
from dpe_dagster.instance import write_instance
from dpe_dagster.paths import dagster_home, dpe_home, project_root
from dpe_dagster.pools import open_pool
from dpe_dagster.providers import provider
from dpe_dagster.spark.java import check_java, spark_pids_of
from dpe_dagster.usage.eventlog import read_node_lifetimes, read_run_usage
from dpe_dagster.usage.report import nodes_table, runs_table

ENDED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


class StepFailed(RuntimeError):
    """A step of the demo did not finish; the message names the step and why."""


class DemoFailed(RuntimeError):
    """The demo's cycle did not complete, or left Spark processes behind."""


@dataclass
class Cycle:
    """What the steps of one demo share: the run they follow and the time left."""

    env: Environment
    job: str
    console: Console
    deadline: float  # time.monotonic() by which the whole cycle must be done
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    instance: DagsterInstance | None = None
    seen: set[str] = field(default_factory=set)  # nodes that came up for the run: each one removed must have its record

    def left(self) -> float:
        """Seconds the next step may take: what is left of the timeout, never under 5."""
        return max(5.0, self.deadline - time.monotonic())

    def status(self) -> DagsterRunStatus:
        run = self.instance.get_run_by_id(self.run_id)
        return run.status if run else DagsterRunStatus.NOT_STARTED

    def detail(self) -> str:
        return f"run {self.status().value}; {pool_summary(self.env)}"

    def wait(self, what: str, done: Callable[[], str | None], detail: Callable[[], str] = lambda: "") -> str:
        """Show a spinner until `done()` returns a message; fail once the time left has passed."""
        timeout_s = self.left()
        start = time.monotonic()
        with self.console.status(what) as status:
            while True:
                message = done()
                if message is not None:
                    self.console.print(f"[green]✓[/green] {what}: {message} [dim]({time.monotonic() - start:.0f}s)[/dim]")
                    return message
                if time.monotonic() - start > timeout_s:
                    raise StepFailed(f"{what}: not done after {timeout_s:.0f}s ({detail()})")
                status.update(f"{what} [dim]{time.monotonic() - start:.0f}s {detail()}[/dim]")
                time.sleep(1)


def pool_summary(env: Environment) -> str:
    parts = []
    for name, config in env.pools.items():
        nodes = open_pool(config, env).nodes()
        busy = sum(n.busy for n in nodes)
        running = sum(n.state == "running" for n in nodes)
        parts.append(f"{name}: {len(nodes)} node(s), {running} running, {busy} busy")
    return "; ".join(parts)


# -- the steps, in order ---------------------------------------------------------------------------

def use_demo_home() -> Path:
    """The demo's Dagster instance folder, named to every process the demo starts. They inherit
    DPE_HOME too: that is how leftovers are found at the end."""
    home = dagster_home()
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["DPE_HOME"] = str(dpe_home())
    return home


@contextmanager
def stand_ins(env: Environment, console: Console) -> Iterator[Any]:
    """What stands in for the environment's clouds for as long as the demo: what each provider of
    its pools puts in its cloud's place (`Provider.stand_in`, an emulator on loopback, say), then
    the environment's `sandbox` (a Kubernetes control plane, say). Yields the sandbox's object, or
    None: its `instance` (dagster.yaml sections) and `instance_written(path)`, when it has them,
    shape the demo's Dagster instance."""
    with ExitStack() as stack:
        for name in dict.fromkeys(config.provider for config in env.pools.values()):
            stand_in = provider(name).stand_in(env)
            if stand_in is not None:
                stack.enter_context(stand_in)
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


def open_instance(home: Path, env: Environment, sandbox: Any) -> DagsterInstance:
    """Write the demo's dagster.yaml (with the sandbox's sections, when it has some) and open it."""
    written = write_instance(home, env, getattr(sandbox, "instance", None))
    if hasattr(sandbox, "instance_written"):
        sandbox.instance_written(written)
    return DagsterInstance.from_config(str(home))


def start_daemon_process(cycle: Cycle, home: Path, stack: ExitStack) -> None:
    """Start the Dagster daemon (sensors, run queue); the stack stops it with the demo."""
    daemon = start_daemon(home, dpe_home() / "logs" / "daemon.log")
    stack.callback(stop_process_group, daemon)
    cycle.console.print(f"[green]✓[/green] Dagster daemon started (pid {daemon.pid}, log {dpe_home() / 'logs'})")


def queue_run(cycle: Cycle) -> None:
    """Queue a run of the job, as a user launches one, with the demo's run id."""
    launch = subprocess.run(
        [dagster_bin("dagster"), "job", "launch", "-w", str(project_root() / "workspace.yaml"), "-j", cycle.job,
         "--run-id", cycle.run_id],
        capture_output=True, text=True, env=dict(os.environ), cwd=project_root(), timeout=cycle.left(),
    )
    if launch.returncode != 0:
        raise StepFailed(f"could not queue job {cycle.job}: {launch.stderr.strip()[-2000:]}")
    cycle.console.print(f"[green]✓[/green] queued run {cycle.run_id} of job {cycle.job}")


def wait_for_nodes(cycle: Cycle) -> None:
    """Wait until some pool has a node for the queued run (or the run ended without one)."""
    env = cycle.env

    def nodes_up() -> bool:
        up = [node.id for c in env.pools.values() for node in open_pool(c, env).nodes()]
        cycle.seen.update(up)
        return bool(up)

    cycle.wait("scaling up for the queued run",
               lambda: (pool_summary(env) if nodes_up()
                        else ("run ended before any node came up" if cycle.status() in ENDED else None)),
               cycle.detail)


def wait_for_run(cycle: Cycle) -> None:
    """Wait until the run ends; it must succeed."""
    final = cycle.wait("running the pipeline", lambda: cycle.status().value if cycle.status() in ENDED else None,
                       cycle.detail)
    if final != DagsterRunStatus.SUCCESS.value:
        raise StepFailed(f"run {cycle.run_id} ended {final}; see it in the Dagster UI (`dpe ui`)")


def wait_for_usage(cycle: Cycle) -> None:
    """Wait until the run's usage record is in the event log."""
    cycle.wait("recording usage in the event log",
               lambda: next((f"{r.node_seconds:.1f} node-seconds, ${r.cost_usd:.6f}"
                             for r in read_run_usage(cycle.instance) if r.run_id == cycle.run_id), None))


def wait_for_scale_down(cycle: Cycle) -> None:
    """Wait until every pool is back at its minimum and every node removed has its lifetime record."""
    env = cycle.env

    def scaled_down() -> bool:
        pools = [(c, open_pool(c, env)) for c in env.pools.values()]
        nodes = [(c, pool, pool.nodes()) for c, pool in pools]
        alive = {node.id for _, _, up in nodes for node in up}
        return (all(len(up) <= c.min_size and pool.target() <= c.min_size for c, pool, up in nodes)
                and cycle.seen - alive <= {n.node_id for n in read_node_lifetimes(cycle.instance)})

    cycle.wait("scaling down after the idle timeout", lambda: pool_summary(env) if scaled_down() else None,
               lambda: pool_summary(env))


def print_summary(cycle: Cycle) -> None:
    """The run's usage record and the last node lifetimes, as `dpe usage` shows them."""
    cycle.console.print(runs_table([r for r in read_run_usage(cycle.instance) if r.run_id == cycle.run_id]))
    cycle.console.print(nodes_table(read_node_lifetimes(cycle.instance)[-10:]))


def stop_everything(env: Environment, stack: ExitStack, console: Console) -> None:
    """Stop the daemon, the stand-ins and every pool process this machine runs, busy or not."""
    with console.status("stopping the daemon and every pool process"):
        stack.close()
        for config in env.pools.values():
            if provider(config.provider).starts_processes_here:
                open_pool(config, env).shutdown()


def run_demo(env: Environment, job: str, timeout_s: float, console: Console) -> None:
    """The whole cycle of `job` on `env`; raise DemoFailed, after stopping everything, when a step
    fails or Spark processes outlive it. JavaMissing: no Java to run Spark, nothing started."""
    check_java()
    home = use_demo_home()
    console.print(f"dpe demo: environment [bold]{env.name}[/bold], job [bold]{job}[/bold], instance {home}")
    cycle = Cycle(env, job, console, deadline=time.monotonic() + timeout_s)
    problems = []
    with ExitStack() as stack:
        try:
            sandbox = stack.enter_context(stand_ins(env, console))
            cycle.instance = stack.enter_context(open_instance(home, env, sandbox))
            start_daemon_process(cycle, home, stack)
            queue_run(cycle)
            wait_for_nodes(cycle)
            wait_for_run(cycle)
            wait_for_usage(cycle)
            wait_for_scale_down(cycle)
            print_summary(cycle)
        except (StepFailed, subprocess.TimeoutExpired, OSError) as error:
            problems.append(str(error))
        finally:
            stop_everything(env, stack, console)
    leaked = spark_pids_of(dpe_home())
    if leaked:
        problems.append(f"Spark processes still alive after the demo: {sorted(leaked)}")
    if problems:
        raise DemoFailed("; ".join(problems))
    console.print("[green]demo finished[/green]: every Spark process it started is stopped. "
                  "`dpe usage` shows the ledger; `dpe ui` opens the Dagster UI; `dpe metrics --once` prints "
                  "its Prometheus series.")
