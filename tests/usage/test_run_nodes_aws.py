"""Which node each run holds on an aws_asg pool: from Kubernetes (the run's pod and its executor
pods, by their `dagster/run-id` label, through the real kubernetes client against the loopback API
of test_k8s_nodes), and in aws-sim from the emulator's own model (moto on loopback, real run storage)."""

from __future__ import annotations

import urllib.parse

import pytest
from dagster import DagsterEventType

from dpe_dagster.kube.nodes import KubeNodes
from dpe_dagster.pools import open_pool
from dpe_dagster.pools.aws.asg import instance_id
from dpe_dagster.pools.aws.emulator import create_groups
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.spark.kubernetes import RUN_ID_LABEL, executor_run_labels
from tests.fakes.kube_api import LoopbackKubeApi, _fields_match, core_api
from tests.reliability.harness import advance, queue_run
from tests.support.aws import aws, clients, dagster, environment, kube_pool, moto  # noqa: F401  (fixtures and helpers)

RUN_A = "0f3a9c2e-1b2d-4e5f-8a9b-0c1d2e3f4a5b"
RUN_B = "7c1e5d4a-9b8f-4a3e-b2c1-d0e9f8a7b6c5"


class LabelledPodsApi(LoopbackKubeApi):
    """The loopback API, answering pod lists by label selector too (`key` exists, `key=value`),
    as the API server does."""

    def __init__(self):
        super().__init__()
        api = self
        base = self.server.RequestHandlerClass

        class Handler(base):
            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                if url.path != "/api/v1/pods":
                    return super().do_GET()
                query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                api.requests.append(("GET", self.path))
                items = [p for p in api.pods
                         if _fields_match(p, query.get("fieldSelector")) and _has_labels(p, query.get("labelSelector"))]
                self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                                 "items": items})

        self.server.RequestHandlerClass = Handler

    def add_run_pod(self, name: str, node: str, run_id: str, cpu: str | None, role: str, phase: str = "Running"):
        self.add_pod(name, node, owner_kind="Job" if role == "run" else None, phase=phase)
        pod = self.pods[-1]
        pod["metadata"]["labels"] = {RUN_ID_LABEL: run_id, "spark-role": role}
        if cpu is not None:
            pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": cpu, "memory": "1Gi"}}


def _has_labels(pod: dict, selector: str | None) -> bool:
    labels = pod["metadata"].get("labels", {})
    for term in (selector or "").split(","):
        if "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value:
                return False
        elif term and term not in labels:
            return False
    return True


@pytest.fixture
def kube_api():
    api = LabelledPodsApi()
    yield api
    api.close()


def test_a_run_maps_to_the_pool_node_where_its_pods_ask_for_the_most_cpu(kube_api):
    pool_nodes = {"ip-10-0-1-1": "i-000000000000000a1", "ip-10-0-1-2": "i-000000000000000a2",
                  "ip-10-0-1-3": "i-000000000000000a3"}
    for name, iid in pool_nodes.items():
        kube_api.add_node(name, iid)
    kube_api.add_node("ip-10-0-9-9", "i-000000000000000b9")  # another pool's node
    # Run A: its own pod (the driver) on a1; executors: 2 x 1.5 CPUs on a2, 2 CPUs on a3.
    kube_api.add_run_pod("dagster-run-a", "ip-10-0-1-1", RUN_A, "500m", "run")
    kube_api.add_run_pod("a-exec-1", "ip-10-0-1-2", RUN_A, "1.5", "executor")
    kube_api.add_run_pod("a-exec-2", "ip-10-0-1-2", RUN_A, "1500m", "executor")
    kube_api.add_run_pod("a-exec-3", "ip-10-0-1-3", RUN_A, "2", "executor")
    kube_api.add_run_pod("a-exec-old", "ip-10-0-1-3", RUN_A, "8", "executor", phase="Succeeded")  # gone
    # Run B: only on another pool's node; a pod of someone else without the label.
    kube_api.add_run_pod("b-exec-1", "ip-10-0-9-9", RUN_B, "2", "executor")
    kube_api.add_pod("someones-job", "ip-10-0-1-3")
    kube = KubeNodes(core_api(kube_api.url), None, instance_id)
    assert kube.run_instances(pool_nodes.values()) == {RUN_A: "i-000000000000000a2"}
    # Seen from the driver pool (a1 only), run A holds a1 through its own pod.
    assert kube.run_instances(["i-000000000000000a1"]) == {RUN_A: "i-000000000000000a1"}


def test_executor_pods_carry_the_run_id_label_the_lookup_reads():
    assert executor_run_labels(RUN_A) == {"spark.kubernetes.executor.label.dagster/run-id": RUN_A}
    assert len(RUN_A) <= 63  # a Kubernetes label value


def test_aws_asg_pool_with_kubernetes_busy_source_reports_run_nodes(kube_pool, kube_api):
    pool, (first, second), _ = kube_pool
    kube_api.add_run_pod("a-exec-1", "ip-10-0-2-1", RUN_A, "2", "executor")
    kube_api.add_run_pod("b-exec-1", "ip-10-0-2-0", RUN_B, "1", "executor")
    assert pool.run_nodes() == {RUN_A: second, RUN_B: first}
    kube_api.close()  # the API is gone: no run is known to hold a node, and the tick goes on
    assert pool.run_nodes() == {}


def test_aws_sim_reports_the_emulators_own_placement_and_demand_carries_it(aws, dagster):  # noqa: F811
    env = environment(aws.url)  # spot-etl: 2-CPU nodes, busy_source dagster_runs
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    config = env.pool("spot-etl")
    pool = open_pool(config, env)
    pool.set_target(2)
    oldest, newest = [n.id for n in sorted(pool.nodes(), key=lambda n: (n.launched_at, n.id))]
    small = [queue_run(dagster, "spot-etl", cpus=1) for _ in range(2)]
    big = queue_run(dagster, "spot-etl", cpus=2)
    waiting = queue_run(dagster, "spot-etl", cpus=2)
    for run_id in (*small, big):
        advance(dagster, run_id, DagsterEventType.RUN_START)
    placed = pool.run_nodes()
    # The same model that makes instances busy: the 2-CPU run first, on the oldest, the two
    # 1-CPU runs together on the next; a queued run holds nothing.
    assert placed == {big: oldest, small[0]: newest, small[1]: newest}
    assert {n.id for n in pool.nodes() if n.busy} == {oldest, newest}
    demand = {run.run_id: run.node_id for run in read_demand(dagster, env, {"spot-etl": pool}).of("spot-etl")}
    assert demand == {**placed, waiting: None}
