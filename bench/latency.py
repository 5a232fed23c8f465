"""Reaction latency: from a run entering Dagster's queue to dpe's scale-up call reaching the AWS API.

The `aws-sim` environment runs against moto's server on loopback; a small recording proxy sits in
front of it, so the moment `SetDesiredCapacity` arrives is taken where the API receives it. A real
`dagster-daemon` runs a real instance; runs are submitted to its queue one at a time (the previous
one has ended and the group is back at 0 before the next), and the latency of each is

    (SetDesiredCapacity received by the API) - (the run's RUN_ENQUEUED event)

Three paths, each in its own phase with its own daemon:
- submit: dpe as configured: its run coordinator asks the pool for capacity the moment the run is
  queued (`dpe_dagster/launch/coordinator.py`), and the launcher asks again at dequeue;
- launcher: Dagster's plain queue; the run coordinator dequeues the run and dpe's run launcher asks
  the pool for capacity before it starts the run (no autoscaler sensor in the code location, so only
  the launcher can scale; the probe run's worker process is not started, see `_probe_launcher`);
- sensor: the queue is paused (max_concurrent_runs 0) and the `dpe_autoscaler` sensor, ticking every
  `sensor_interval_s` of the environment, is the only thing that can scale.

    .venv/bin/python bench/latency.py --runs 50
    .venv/bin/python bench/latency.py --quick
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (run_main, write_report, OUT, ROOT, TAG_VAR, BenchError, RunSubmitter, daemon, event_times, machine,  # noqa: E402
                          percentile, wait_for, write_workspace)

POOL = "spot-etl"
PROBE_JOB = "latency_probe"
SENSOR_VAR = "DPE_BENCH_WITH_SENSOR"
# Cluster Autoscaler's published scalability figures (clusters under 100 nodes): scale-up decision
# about 5 s on average, at most 30 s.
CA_MEAN_S, CA_MAX_S = 5.0, 30.0


# -- the code location the daemon loads: one trivial job on the pool (+ the sensor when asked) ----
def _definitions():
    from dagster import Definitions, job, op

    from dpe_dagster.scaling.sensor import build_autoscaler_sensor
    from dpe_dagster.tags import pool_tags
    from resources import repository_environment

    @op
    def probe():
        return None

    @job(name=PROBE_JOB, tags=pool_tags(POOL, cpus=2))
    def latency_probe():
        probe()

    sensors = [build_autoscaler_sensor(repository_environment("aws-sim"))] if os.environ.get(SENSOR_VAR) == "1" else []
    return Definitions(jobs=[latency_probe], sensors=sensors)


if os.environ.get("DAGSTER_HOME") and __name__ != "__main__":
    defs = _definitions()


class ProbeRunLauncher:
    """Placeholder; the real class is built on first use (it imports dpe and Dagster)."""


def _probe_launcher():
    """dpe's run launcher (`PoolRunLauncher`) run to the moment it hands the run to a worker
    process: the part the latency covers, unchanged. The worker itself is not started (the probe
    run would do nothing, and starting it loads the 2-core machine between samples); the benchmark
    cancels the probe run once the scale-up call has arrived.

    With DPE_BENCH_SHARED_CLIENTS=1 it also applies the change proposed for `aws_asg.make_clients`
    (one boto3 client pair per AWS settings and process instead of a new session and two clients per
    pool opened), in that daemon only. dpe's code is not changed."""
    import functools
    from unittest import mock

    from dagster import DefaultRunLauncher

    import dpe_dagster.pools.aws.asg as aws_asg
    from dpe_dagster.launch.local import PoolRunLauncher

    if os.environ.get("DPE_BENCH_SHARED_CLIENTS") == "1" and not hasattr(aws_asg.make_clients, "cache_info"):
        aws_asg.make_clients = functools.lru_cache(maxsize=None)(aws_asg.make_clients)

    class Launcher(PoolRunLauncher):
        def launch_run(self, context) -> None:
            with mock.patch.object(DefaultRunLauncher, "launch_run", lambda *_: None):
                super().launch_run(context)

    Launcher.__name__ = Launcher.__qualname__ = "ProbeRunLauncher"
    return Launcher


if os.environ.get("DPE_BENCH_PROBE_LAUNCHER") == "1":
    ProbeRunLauncher = _probe_launcher()  # noqa: F811


# -- a recording proxy in front of the AWS emulator ------------------------------------------------
@dataclass
class Call:
    at: float
    action: str
    params: dict


@dataclass
class Recorder:
    upstream: str
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)

    def __post_init__(self):
        self.arrived = threading.Condition(self.lock)

    def record(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)
            self.arrived.notify_all()

    def wait_for(self, action: str, since: int, timeout_s: float) -> Call:
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while True:
                for call in self.calls[since:]:
                    if call.action == action:
                        return call
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"no {action} reached the AWS API within {timeout_s:g}s")
                self.arrived.wait(left)


def start_proxy(recorder: Recorder) -> tuple[ThreadingHTTPServer, str]:
    target = urllib.parse.urlparse(recorder.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            arrived = time.time()
            params = dict(urllib.parse.parse_qsl(body.decode(errors="replace"))) if body else {}
            if "Action" in params:
                recorder.record(Call(arrived, params["Action"], params))
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        do_POST = do_GET = _forward

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# -- one phase ---------------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    path: str  # submit | launcher | sensor
    dequeue_interval_s: int
    shared_clients: bool = False
    latencies: list[float] = field(default_factory=list)
    queue_waits: list[float] = field(default_factory=list)  # launcher path: enqueued -> RUN_STARTING (dequeued)

    def summary(self) -> dict:
        lat = self.latencies
        return {"phase": self.name, "path": self.path, "dequeue_interval_s": self.dequeue_interval_s, "runs": len(lat),
                "p50_s": percentile(lat, 50), "p95_s": percentile(lat, 95), "mean_s": sum(lat) / len(lat) if lat else None,
                "max_s": max(lat) if lat else None,
                "queue_wait_p50_s": percentile(self.queue_waits, 50) if self.queue_waits else None,
                "launch_to_call_p50_s": (percentile([a - b for a, b in zip(lat, self.queue_waits)], 50)
                                         if self.queue_waits else None)}


def reset_group(autoscaling, group: str) -> None:
    """Back to 0 nodes, and wait until the group lists none: a node still listed counts towards the
    pool's size, and the next run would find room instead of asking for it."""
    members = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]["Instances"]
    if members:  # dpe protects busy instances from scale-in: lift it, then terminate them
        ids = [m["InstanceId"] for m in members]
        autoscaling.set_instance_protection(AutoScalingGroupName=group, InstanceIds=ids, ProtectedFromScaleIn=False)
        for instance_id in ids:
            autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=instance_id,
                                                                 ShouldDecrementDesiredCapacity=True)
    autoscaling.set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=0, HonorCooldown=False)
    autoscaling.delete_tags(Tags=[{"ResourceId": group, "ResourceType": "auto-scaling-group",
                                   "Key": "dpe:scale-up-since"}])
    wait_for(f"group {group} to list no instances", lambda: not autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[group])["AutoScalingGroups"][0]["Instances"], 60, 0.1)


def run_phase(phase: Phase, runs: int, env, recorder: Recorder, direct_autoscaling, out: Path, progress, task) -> None:
    from dagster import DagsterInstance, DagsterRunStatus

    from dpe_dagster.instance import write_instance

    home = out / phase.name / "dagster"
    shutil.rmtree(home.parent, ignore_errors=True)
    coordinator = {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator",
                   "config": {"max_concurrent_runs": 0 if phase.path == "sensor" else env.max_concurrent_runs,
                              "dequeue_interval_seconds": phase.dequeue_interval_s}}
    if phase.path == "submit":
        coordinator = {"module": "dpe_dagster.launch.coordinator", "class": "PoolRunCoordinator",
                       "config": {**coordinator["config"], "environment": env.name}}
    extra_config = {"run_coordinator": coordinator,
                    "run_launcher": {"module": "bench.latency", "class": "ProbeRunLauncher",
                                     "config": {"environment": env.name}}}
    write_instance(home, env, extra_config)
    workspace = write_workspace(out / phase.name / "workspace.yaml", "bench/latency.py", "latency")
    group = env.pools[POOL].settings["group_name"]
    reset_group(direct_autoscaling, group)
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["DPE_BENCH_PROBE_LAUNCHER"] = "1"
    extra = {SENSOR_VAR: "1" if phase.path == "sensor" else "0", "PYTHONPATH": str(ROOT),
             "DPE_BENCH_SHARED_CLIENTS": "1" if phase.shared_clients else "0", "DPE_BENCH_PROBE_LAUNCHER": "1"}
    ended = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    with DagsterInstance.from_config(str(home)) as instance, \
            daemon(home, workspace, out / phase.name / "daemon.log", extra) as process, \
            RunSubmitter(instance, workspace, "latency", PROBE_JOB) as submitter:
        # Let the daemon come up (code server loaded, first loop done) before timing anything.
        def up():
            if process.poll() is not None:
                raise BenchError(f"dagster-daemon exited with {process.returncode}; see {out / phase.name / 'daemon.log'}")
            return instance.get_daemon_heartbeats()
        wait_for("the daemon's heartbeat", up, 120, 0.5)
        time.sleep(3)
        for i in range(runs):
            # Start at a random offset, so samples fall anywhere in the dequeue / tick cycle.
            time.sleep(random.uniform(0, 1.0))
            since = len(recorder.calls)
            run_id = submitter.submit()
            call = recorder.wait_for("SetDesiredCapacity", since, 120)
            times = event_times(instance, run_id)
            enqueued = times["RUN_ENQUEUED"][0]
            phase.latencies.append(call.at - enqueued)
            if phase.path in ("launcher", "submit"):
                # Handed to the (not started) worker: the launcher is done with it.
                run = wait_for("the launcher to finish with the probe run", lambda: (
                    (r := instance.get_run_by_id(run_id)) and r.status == DagsterRunStatus.STARTING
                    and "ENGINE_EVENT" in event_times(instance, run_id) and r), 120, 0.05)
                times = event_times(instance, run_id)
                phase.queue_waits.append(times["RUN_STARTING"][0] - enqueued)
            time.sleep(0.2)
            run = instance.get_run_by_id(run_id)
            if run.status not in ended:
                instance.report_run_canceled(run)
            reset_group(direct_autoscaling, group)
            progress.update(task, advance=1, description=f"{phase.name}: last {phase.latencies[-1] * 1000:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50, help="runs per phase (>= 2; default 50)")
    parser.add_argument("--paths", default="submit,launcher,sensor",
                        help="comma-separated phases: submit, launcher, sensor (default all three)")
    parser.add_argument("--dequeue-intervals", default="1",
                        help="comma-separated dequeue intervals (s) for the launcher path; the first is dpe's "
                             "configured one (default 1)")
    parser.add_argument("--shared-clients", action="store_true",
                        help="add a launcher phase with one boto3 client pair per process (the change proposed for "
                             "aws_asg.make_clients, applied in that phase's daemon only)")
    parser.add_argument("--quick", action="store_true", help="3 runs per phase: checks that it works, measures nothing")
    parser.add_argument("--out", type=Path, default=OUT / "latency", help="working folder (default bench/out/latency)")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs
    if runs < 2:
        parser.error("--runs: must be at least 2")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = [p for p in paths if p not in ("submit", "launcher", "sensor")]
    if bad or not paths:
        parser.error(f"--paths: unknown phase(s) {bad or '(none)'}; allowed: submit, launcher, sensor")
    try:
        intervals = [int(x) for x in args.dequeue_intervals.split(",")]
    except ValueError:
        parser.error(f"--dequeue-intervals: must be comma-separated whole seconds (Dagster's setting is an "
                     f"integer); got {args.dequeue_intervals!r}")
    if any(x < 1 for x in intervals):
        parser.error("--dequeue-intervals: every interval must be >= 1 s (0 would make the daemon spin)")

    import boto3
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from dpe_dagster.pools.aws.emulator import emulated_aws
    from resources import repository_environment

    console = Console()
    os.environ.setdefault(TAG_VAR, f"latency-{uuid.uuid4().hex[:8]}")
    env = repository_environment("aws-sim")
    phases = []
    if "submit" in paths:
        phases.append(Phase(f"submit-dequeue-{intervals[0]:g}s", "submit", intervals[0]))
    if "launcher" in paths:
        phases += [Phase(f"launcher-dequeue-{d:g}s", "launcher", d) for d in intervals]
        if args.shared_clients:
            phases.append(Phase(f"launcher-shared-clients-dequeue-{intervals[0]:g}s", "launcher", intervals[0], True))
    if "sensor" in paths:
        phases.append(Phase("sensor", "sensor", intervals[0]))
    args.out.mkdir(parents=True, exist_ok=True)
    console.print(f"machine: {machine()}")
    started = time.time()
    with emulated_aws(env) as aws:
        recorder = Recorder(aws.url)
        server, proxy_url = start_proxy(recorder)
        direct = boto3.client("autoscaling", endpoint_url=aws.url, region_name=aws.region)
        os.environ["AWS_ENDPOINT_URL"] = proxy_url  # the daemon (and its launcher) talk through the proxy
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console) as progress:
                for phase in phases:
                    task = progress.add_task(phase.name, total=runs)
                    run_phase(phase, runs, env, recorder, direct, args.out, progress, task)
        finally:
            server.shutdown()
    table = Table(title=f"Reaction latency, run enqueued -> SetDesiredCapacity at the AWS API ({runs} runs per path)")
    for col in ("path", "p50 s", "p95 s", "mean s", "max s", "mean vs CA 5 s", "queue wait p50 s",
                "launch->call p50 s"):
        table.add_column(col, justify="right" if col != "path" else "left")
    results = []
    for phase in phases:
        s = phase.summary()
        results.append(s)
        table.add_row(phase.name, f"{s['p50_s']:.3f}", f"{s['p95_s']:.3f}", f"{s['mean_s']:.3f}", f"{s['max_s']:.3f}",
                      f"{CA_MEAN_S / s['mean_s']:.1f}x faster",
                      f"{s['queue_wait_p50_s']:.3f}" if s["queue_wait_p50_s"] is not None else "-",
                      f"{s['launch_to_call_p50_s']:.3f}" if s["launch_to_call_p50_s"] is not None else "-")
    console.print(table)
    path = write_report(args.out, "latency", started, results=results,
                        samples={p.name: p.latencies for p in phases})
    console.print(f"results: {path}")
    return 0


if __name__ == "__main__":
    run_main("latency", main)
