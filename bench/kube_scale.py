"""The autoscaler's tick and the launcher's scale-up call on the real Kubernetes API server, at scale.

A real control plane (kube-apiserver, etcd, kube-controller-manager, kube-scheduler; kwok for the
nodes: tests/cluster/) and the AWS emulator (moto's server) hold `--pools` aws_asg pools on
Kubernetes (busy_source kubernetes), `--nodes` nodes that joined as instances of their groups (the
EKS DaemonSets on each), and `--pods` run pods bound across them (`--pods-per-run` per run: a
driver and its executors, labelled with their run's id as dagster-k8s and dpe's executors are),
for the active runs in a SQLite Dagster instance. Measured,
as medians after a warm-up:

- `tick`: one `dpe_autoscaler` tick, the real sensor function (every pool looked at, planned,
  nothing to change), and the Kubernetes requests it sends (the pods come from the process's
  watch of them, kube/watch.py, after its first list);
- `launch`: the scale-up call the k8s run launcher makes for a new run (`request_capacity`, the
  pool looked at and its target raised);
- the baseline, in the same run: busy detection as it was, one pod list per node (field selector
  `spec.nodeName`, client models), over every pool's nodes, against dpe's one list per tick (JSON).

Goals (issue 21): a tick under 2 s and a launch's scale-up call under 1 s at 20 pools, 1,000 nodes
and 5,000 pods, on this 2-core machine.

    .venv/bin/python bench/kube_scale.py                 # 20 pools, 1,000 nodes, 5,000 pods
    .venv/bin/python bench/kube_scale.py --quick         # 4 pools, 100 nodes, 500 pods
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT, autoscaler_ticks, machine, median, run_main, wait_for, write_report  # noqa: E402


def environment(n_pools: int, nodes_per_pool: int):
    from dpe_dagster.config import parse_environment

    def pool(name: str) -> dict:
        return {"provider": "aws_asg", "min_size": 0, "max_size": nodes_per_pool + 5, "node_cpus": 2,
                "node_memory_gb": 8, "lifecycle": "spot", "price_per_node_hour": 0.035, "idle_timeout_s": 3600,
                "boot_timeout_s": 600, "default_run_cpus": 0.1, "default_run_memory_gb": 0.1,
                "labels": {"dpe.io/pool": name},
                "taints": [{"key": "dpe.io/pool", "value": name, "effect": "NoSchedule"}],
                "settings": {"group_name": f"dpe-bench-{name}", "busy_source": "kubernetes",
                             "instance_types": ["m6i.large"]}}

    return parse_environment("bench", {"sensor_interval_s": 15, "aws": {"region": "us-east-1", "max_attempts": 3},
                                       "pools": {f"p{i:02d}": pool(f"p{i:02d}") for i in range(n_pools)}})


class Requests:
    """Counts the requests the kubernetes client sends, by method and path kind."""

    def __init__(self):
        from kubernetes.client import rest

        self.counts: dict[str, int] = {}
        original = rest.RESTClientObject.request

        def counting(client_self, method, url, *args, **kwargs):
            path = url.split("?")[0].split("/api/v1/")[-1]
            kind = "/".join(part for part in path.split("/") if part in ("nodes", "pods", "namespaces")) or path
            key = f"{method} {kind}"
            self.counts[key] = self.counts.get(key, 0) + 1
            return original(client_self, method, url, *args, **kwargs)

        rest.RESTClientObject.request = counting

    def since(self, before: dict[str, int]) -> dict[str, int]:
        return {k: v - before.get(k, 0) for k, v in sorted(self.counts.items()) if v - before.get(k, 0)}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build(args, stack: ExitStack, work: Path):
    """The cluster, the emulator, the pools at their size, the pods bound, the active runs."""
    from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

    from dpe_dagster.instance import write_instance
    from dpe_dagster.pools import open_pool
    from dpe_dagster.pools.aws.emulator import MotoServer, create_groups
    from dpe_dagster.tags import pool_tags
    from tests.cluster.build import build as build_binaries
    from tests.cluster.control_plane import ControlPlane
    from tests.cluster.eks import EksNodes, install_daemonsets

    say("starting the control plane and the AWS emulator")
    cluster = stack.enter_context(ControlPlane(build_binaries().folder, work / "cluster"))
    moto = stack.enter_context(MotoServer())
    os.environ.update(AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      KUBECONFIG=str(cluster.kubeconfig))
    per_pool = args.nodes // args.pools
    env = environment(args.pools, per_pool)
    create_groups(env)
    if args.daemonsets:
        install_daemonsets(cluster)
    say(f"{args.pools} pools x {per_pool} instances, joining as nodes")
    for config in env.pools.values():
        open_pool(config, env).set_target(per_pool)
    nodes = EksNodes(cluster, moto.url, boot_s=0.0)
    nodes.sync()
    core = cluster.core()
    wait_for(f"{args.nodes} nodes Ready", lambda: sum(
        any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
        for n in core.list_node().items) >= args.nodes, timeout_s=600, interval_s=2)
    node_names = {name: [n.metadata.name for n in core.list_node(label_selector=f"dpe.io/pool={name}").items]
                  for name in env.pools}
    home = work / "dagster"
    write_instance(home, env)
    instance = stack.enter_context(DagsterInstance.from_config(str(home)))
    per_run = args.pods_per_run
    say(f"{args.pods} run pods bound to them ({args.pods // per_run} active runs, {per_run} pods each: a driver "
        "and its executors)")
    names = list(env.pools)
    for i in range(args.pods // per_run):
        pool = names[i % len(names)]
        run = instance.add_run(DagsterRun(job_name="etl", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                                          tags=pool_tags(pool, cpus=0.1, memory="100m")))
        for k in range(per_run):
            node = node_names[pool][(i // len(names) * per_run + k) % len(node_names[pool])]
            core.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": f"run-{run.run_id[:8]}-{k}", "labels": {"dagster/run-id": run.run_id, "dpe.io/pool": pool}},
                "spec": {"nodeName": node, "containers": [{"name": "main", "image": "dpe:1", "resources": {
                    "requests": {"cpu": "50m", "memory": "50Mi"}}}]}})
    wait_for("every pod running", lambda: sum(p.status.phase == "Running" for p in core.list_pod_for_all_namespaces(
        field_selector="status.phase=Running").items) >= args.pods, timeout_s=900, interval_s=5)
    total = len(core.list_pod_for_all_namespaces().items)
    say(f"ready: {len(core.list_node().items)} nodes, {total} pods in all (DaemonSets included)")
    return env, instance, cluster, node_names, total


def measure(args, env, instance, cluster, node_names, requests: Requests) -> dict:
    from kubernetes import client

    from dpe_dagster.kube.nodes import KubeNodes, begin_look
    from dpe_dagster.pools.aws.asg import node_instance_id
    from dpe_dagster.scaling.control import request_capacity

    tick = autoscaler_ticks(instance, env)
    say("ticks")
    tick()
    before = dict(requests.counts)
    ticks = [tick() for _ in range(args.repeat)]
    tick_requests = {k: v / args.repeat for k, v in requests.since(before).items()}

    say("launches' scale-up calls")
    first = next(iter(env.pools))
    launches = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        request_capacity(instance, env, first, lambda message: None)
        launches.append(time.perf_counter() - started)

    say("busy detection over every pool: one pod list per node (as it was), one list per tick, the watch")
    core = cluster.core()
    api = client.CoreV1Api(cluster.api_client())
    per_node, per_list, per_watch = [], [], []
    for _ in range(max(3, args.repeat // 2)):
        started = time.perf_counter()
        for name, names in node_names.items():
            api.list_node(label_selector=f"dpe.io/pool={name}")
            for node in names:
                api.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node},status.phase!=Succeeded,"
                                                               "status.phase!=Failed")
        per_node.append(time.perf_counter() - started)
        for times, read in ((per_list, lambda kube: kube._all_active_pods()), (per_watch, None)):
            started = time.perf_counter()
            begin_look()
            pools = [KubeNodes(core, f"dpe.io/pool={name}", node_instance_id) for name in node_names]
            if read is not None:
                read(pools[0])  # what each look cost before the watch: the whole list, once
            for kube in pools:
                kube.busy_by_instance(list(kube.nodes_by_instance(fresh=False)))
            times.append(time.perf_counter() - started)
    return {"tick_s": median(ticks), "tick_max_s": max(ticks), "tick_requests": tick_requests,
            "launch_s": median(launches), "launch_max_s": max(launches),
            "busy_per_node_s": median(per_node), "busy_one_list_s": median(per_list),
            "busy_watch_s": median(per_watch)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pools", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--pods-per-run", type=int, default=10, help="pods of one run (a driver and its executors)")
    parser.add_argument("--repeat", type=int, default=7, help="ticks and launches measured (after a warm-up)")
    parser.add_argument("--no-daemonsets", dest="daemonsets", action="store_false",
                        help="leave out kube-proxy and aws-node (two pods per node)")
    parser.add_argument("--quick", action="store_true", help="4 pools, 100 nodes, 500 pods")
    args = parser.parse_args()
    if args.quick:
        args.pools, args.nodes, args.pods = 4, 100, 500
    for flag in ("pools", "nodes", "pods", "pods_per_run", "repeat"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: must be >= 1")
    if args.nodes < args.pools:
        parser.error("--nodes: at least one per pool")
    started = time.time()
    OUT.mkdir(parents=True, exist_ok=True)
    requests = Requests()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="dpe-kube-scale-") as work:
        env, instance, cluster, node_names, total = build(args, stack, Path(work))
        result = measure(args, env, instance, cluster, node_names, requests)
    result.update(pools=args.pools, nodes=args.nodes, run_pods=args.pods, pods_in_cluster=total, machine=machine())
    print(f"\n{args.pools} pools, {args.nodes} nodes, {total} pods ({args.pods} of runs) on the real API server; "
          f"{machine()}")
    print(f"tick (dpe_autoscaler sensor, every pool): median {result['tick_s']:.2f} s, max {result['tick_max_s']:.2f} s; "
          f"Kubernetes requests per tick: {json.dumps(result['tick_requests'])}")
    print(f"launch's scale-up call (request_capacity): median {result['launch_s']:.2f} s, max {result['launch_max_s']:.2f} s")
    base = result["busy_per_node_s"]
    print(f"busy detection over every pool: one pod list per node {base:.2f} s (1.00x); one list per tick "
          f"{result['busy_one_list_s']:.2f} s ({result['busy_one_list_s'] / base:.3f}x); the watch "
          f"{result['busy_watch_s']:.2f} s ({result['busy_watch_s'] / base:.3f}x)")
    goals = [("tick < 2 s", result["tick_s"] < 2.0), ("launch < 1 s", result["launch_s"] < 1.0)]
    print("goals: " + ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in goals))
    write_report(OUT, "kube_scale", started, **result)
    return 0


if __name__ == "__main__":
    run_main("kube_scale", main)
