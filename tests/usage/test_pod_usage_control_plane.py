"""A container's pod in staging/prod, where its run cannot read the pool's nodes: the run writes
the unpriced span, and the control plane's ledger sensor prices it once when the run ends (real
Dagster instance, the aws-sim pools in a moto server on loopback; for the container itself, eks-sim's
pools in the AWS emulator and the session's Kubernetes control plane, where the pod runs on a node of
the pool: tests/support/pods.py)."""

from __future__ import annotations

import time

from dagster import DagsterEventType, DagsterRunStatus
from dagster._core.events import DagsterEvent

from assets.containers import word_count
from dpe_dagster.containers import KubernetesPoolContainers
from dpe_dagster.pools import open_pool
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.usage.eventlog import read_pod_usage
from dpe_dagster.usage.pods import NO_NODE, POD_SPAN_KEY, PodSpan, record_pod_span
from tests.reliability.harness import advance, new_run, queue_run
from tests.support.ledger import ledger_tick
from tests.support.cluster import node_ready, wait_for
from tests.support.pods import (  # noqa: F401 (fixtures and helpers)
    RUN_USER, admissions, cluster, eks_sim, instance, kube, pool_of_node, pools, run_pod,
)

POOL = "spot-etl"


def pending_spans(instance, run_id):
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_OBSERVATION).records
    observations = [r.event_log_entry.dagster_event.event_specific_data.asset_observation for r in records]
    return [o for o in observations if o.asset_key == POD_SPAN_KEY]


def test_a_pending_pod_span_is_priced_by_the_ledger_sensor_when_its_run_ends_and_only_once(aws_sim):
    env, instance, _ = aws_sim(idle_timeout_s=600)
    config = env.pool(POOL)
    pool = open_pool(config, env)
    run_id = queue_run(instance, POOL, cpus=1)
    scale_pool(instance, config, pool, read_demand(instance, env).of(POOL), {}, time.time())
    (node,) = pool.nodes()
    advance(instance, run_id, DagsterEventType.RUN_START)
    started = time.time()
    time.sleep(2)
    span = PodSpan(run_id=run_id, job_name="tpch", pod="word-count-1", asset="word_count", pool=POOL, cpus=0.5,
                   memory_gb=0.5, started_at=started, ended_at=time.time(), status="SUCCESS")
    record_pod_span(instance, span)
    assert read_pod_usage(instance) == []  # pending: nothing priced while the run is on
    instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.RUN_SUCCESS.value, job_name="tpch"),
                                  run_id=run_id)

    cursor = ledger_tick(env, instance, None)
    (usage,) = read_pod_usage(instance)
    assert usage.run_id == f"{run_id}/word-count-1" and usage.assets == ("word_count",) and usage.pool == POOL
    assert usage.node_seconds > 0 and usage.cost_usd > 0
    assert usage.price_source != NO_NODE  # priced on the pool's nodes, not recorded as a local process
    assert usage.started_at == span.started_at and usage.ended_at == span.ended_at

    ledger_tick(env, instance, cursor)
    ledger_tick(env, instance, None)  # a replay from scratch writes nothing again
    assert read_pod_usage(instance) == [usage]


def test_a_pod_span_of_a_run_on_no_pool_is_priced_on_the_pool_it_ran_on(aws_sim):
    """The `containers` job names no pool: its run is read once per tick, its span priced on the
    pool its pod ran on, with that pool's nodes."""
    env, instance, _ = aws_sim(idle_timeout_s=600)
    other = "ondemand-etl"
    config = env.pool(other)
    pool = open_pool(config, env)
    holder = queue_run(instance, other, cpus=1)  # keeps a node of the pod's pool up, and never ends
    scale_pool(instance, config, pool, read_demand(instance, env).of(other), {}, time.time())
    assert len(pool.nodes()) == 1
    run_id = new_run(instance, {}, DagsterRunStatus.STARTED).run_id
    started = time.time()
    time.sleep(2)
    record_pod_span(instance, PodSpan(run_id=run_id, job_name="containers", pod="word-count-2", asset="word_count",
                                      pool=other, cpus=0.5, memory_gb=0.5, started_at=started, ended_at=time.time(),
                                      status="SUCCESS"))
    ledger_tick(env, instance, None)
    assert read_pod_usage(instance) == []  # the run has not ended
    instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.RUN_SUCCESS.value,
                                               job_name="containers"), run_id=run_id)

    cursor = ledger_tick(env, instance, None)
    (usage,) = read_pod_usage(instance)
    assert usage.run_id == f"{run_id}/word-count-2" and usage.pool == other
    assert usage.node_seconds > 0 and usage.cost_usd > 0 and usage.price_source != NO_NODE
    ledger_tick(env, instance, cursor)
    assert read_pod_usage(instance) == [usage]
    assert instance.get_run_by_id(holder).status == DagsterRunStatus.QUEUED


def test_a_run_without_cloud_credentials_leaves_its_pod_span_for_the_control_plane(eks_sim, pools, admissions,
                                                                                    run_pod, instance, kube,
                                                                                    tmp_path, monkeypatch):
    # A node of the pool is up (the autoscaler, which has the credentials, brought it earlier).
    spot = pools[POOL]
    spot.set_target(1)
    core = kube.core()
    node = wait_for("a node of the pool ready", lambda: next(
        (n.metadata.name for n in core.list_node(label_selector=f"dpe.io/pool={POOL}").items
         if node_ready(core, n.metadata.name)), None), timeout_s=60)

    # The run's pod: no cloud credentials, and the run's own ServiceAccount for the API server.
    with monkeypatch.context() as in_the_pod:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            in_the_pod.delenv(key, raising=False)
        in_the_pod.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        in_the_pod.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        in_the_pod.setenv("AWS_EC2_METADATA_DISABLED", "true")
        in_the_pod.setenv("KUBECONFIG", str(run_pod.kubeconfig))
        containers = KubernetesPoolContainers(environment="eks-sim", namespace="dagster", load_incluster_config=False,
                                              kubeconfig_file=str(run_pod.kubeconfig), poll_interval_s=0.1,
                                              node_wait_s=30)
        result = run_pod.materialize([word_count], resources={"containers": containers}, instance=instance)
    assert result.success

    # The pod ran on the pool's node, and its time waits, unpriced, for the control plane.
    [pod] = admissions.created
    name = pod["metadata"]["name"]
    assert admissions.deleted_by(RUN_USER) == [name]
    assert admissions.last_seen(name)["spec"]["nodeName"] == node and pool_of_node(core, node)[0] == POOL
    (span,) = pending_spans(instance, result.run_id)
    assert span.metadata["pool"].value == POOL and span.metadata["asset"].value == "word_count"
    assert span.metadata["pod"].value == name
    assert span.metadata["ended_at"].value >= span.metadata["started_at"].value > 0
    assert read_pod_usage(instance) == []
    messages = [e.message or "" for e in instance.all_logs(result.run_id)]
    assert any("the control plane prices it when the run ends" in m and "no AWS credentials" in m for m in messages)

    # The run has ended: the control plane's ledger sensor (its credentials, its account) prices it
    # on the pool's node.
    env, _ = eks_sim
    ledger_tick(env, instance, None)
    (usage,) = read_pod_usage(instance)
    assert usage.run_id == f"{result.run_id}/{name}" and usage.pool == POOL and usage.assets == ("word_count",)
    assert usage.cost_usd > 0 and usage.price_source != NO_NODE
