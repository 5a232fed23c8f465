"""A node AWS is taking away is drained on the real control plane before it goes.

- A spot interruption warning cordons the node and evicts, through the Eviction API, every pod that
  does not go with the node (a Spark executor's preStop hook then decommissions it), within the
  two-minute notice; a PodDisruptionBudget can refuse, as for any drain.
- A termination AWS starts itself (a health replacement, an operator; not capacity rebalancing,
  which node-pool.yaml turns off) waits in the group's lifecycle hook: `dpe interruptions`
  drains the node and completes the lifecycle action once nothing but DaemonSets is left.
- dpe suspends the Auto Scaling processes that would resize its groups behind its back.

AWS's side is moto's server; it does not implement CompleteLifecycleAction, so the test's proxy
answers that one call as AWS does and records it (tests/fakes/aws_faults.py `stand_ins`): what is
checked is the call dpe makes, not its effect in AWS. The notification is put on the queue as Auto
Scaling sends it (moto does not send lifecycle notifications)."""

from __future__ import annotations

import json
import time

import pytest

from dpe_dagster.pools.aws.emulator import create_groups
from dpe_dagster.pools.aws.interruptions import TEST_NOTIFICATION, reader_for
from tests.fakes.aws_faults import FaultProxy
from tests.support.aws import (  # noqa: F401  (fixtures and helpers)
    aws,
    clients,
    environment,
    group,
    interruption_queue,
    moto,
    pools_of,
    warn,
)
from tests.support.cluster import cluster, eks, kube, node_ready, pods_on, wait_for  # noqa: F401  (fixtures)

HOOK = "dpe-drain"
TOKEN = "71ef2c4a-5b3d-4e8f-9a10-2b3c4d5e6f70"  # Auto Scaling's tokens are UUIDs


@pytest.fixture
def spot(aws, eks, kube):
    """eks nodes for a spot pool of two instances, the pool's AWS calls through a proxy, and the
    interruption queue: (env with its queue, pools, instance ids, node names, proxy, sqs, events)."""
    proxy = FaultProxy(aws.url)
    proxy.stand_ins.add("CompleteLifecycleAction")
    sqs, events, queue = interruption_queue(aws.url)
    env = environment(proxy.url, labels={"dpe.io/pool": "spot-etl"},
                      taints=[{"key": "dpe.io/pool", "value": "spot-etl", "effect": "NoSchedule"}],
                      settings={"group_name": "test-spot", "busy_source": "kubernetes",
                                "instance_types": ["m6i.large", "m5.large"]})
    env = env.model_copy(update={"blocks": {**env.blocks, "aws": {**env.block("aws"), "interruption_queue_url": queue}}})
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    autoscaling.put_lifecycle_hook(LifecycleHookName=HOOK, AutoScalingGroupName="test-spot",
                                   LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING", HeartbeatTimeout=180,
                                   DefaultResult="CONTINUE")
    pools = pools_of(env)
    pools["spot-etl"].set_target(2)
    ids = sorted(n.id for n in pools["spot-etl"].nodes())
    names = [eks.node_name(iid) for iid in ids]
    for name in names:
        wait_for(f"node {name} ready with its DaemonSets", lambda: node_ready(kube.core(), name) and sum(
            p.status.phase == "Running" for p in pods_on(kube.core(), name)) >= 2)
    try:
        yield env, pools, ids, names, proxy, sqs, events
    finally:
        proxy.close()


def _pod(name: str, node: str, **spec) -> dict:
    labels = spec.pop("labels", {})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "tolerations": [{"key": "dpe.io/pool", "operator": "Exists"}],
                     "containers": [{"name": "main", "image": "dpe:1"}], **spec}}


def _gone_or_going(core, name: str) -> bool:
    pods = [p for p in core.list_namespaced_pod("default").items if p.metadata.name == name]
    return not pods or pods[0].metadata.deletion_timestamp is not None


def test_a_spot_warning_cordons_and_drains_the_node_through_the_eviction_api(spot, kube, caplog):
    env, pools, (warned, other), (warned_node, other_node), proxy, sqs, events = spot
    core = kube.core()
    # A Spark executor of a run (what Spark makes with decommissioning on: a preStop hook and a
    # grace period), and a pod a PodDisruptionBudget protects.
    core.create_namespaced_pod("default", _pod(
        "executor-1", warned_node, labels={"dagster/run-id": "r1", "dpe.io/pool": "spot-etl"},
        terminationGracePeriodSeconds=120,
        containers=[{"name": "spark-executor", "image": "dpe:1",
                     "lifecycle": {"preStop": {"exec": {"command": ["/opt/decom.sh"]}}}}]))
    core.create_namespaced_pod("default", _pod("guarded", warned_node, labels={"app": "guarded"}))
    kube.apply([{"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                 "metadata": {"name": "guarded", "namespace": "default"},
                 "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}}])
    from kubernetes import client

    wait_for("the budget observed", lambda: client.PolicyV1Api(kube.api_client()).read_namespaced_pod_disruption_budget(
        "guarded", "default").status.current_healthy == 1)
    daemons = {p.metadata.name for p in pods_on(core, warned_node) if p.metadata.namespace == "kube-system"}

    reader = reader_for(env)
    sent = time.monotonic()
    warn(events, warned)
    [action] = reader.poll_once(wait_s=1)
    assert action.grow_pool == "spot-etl" and group(clients(env.block("aws")["endpoint_url"])[0], "test-spot")[
        "DesiredCapacity"] == 3
    assert core.read_node(warned_node).spec.unschedulable is True
    wait_for("the executor evicted", lambda: _gone_or_going(core, "executor-1"), timeout_s=10)
    assert time.monotonic() - sent < 10, "drained well inside the two-minute notice"
    # The budget refused its pod's eviction (HTTP 429): it stays, and the drain said so.
    assert not _gone_or_going(core, "guarded")
    assert "could not evict pod default/guarded" in caplog.text and "429" in caplog.text
    # DaemonSet pods go with the node, not before it; the other node is untouched.
    assert daemons <= {p.metadata.name for p in pods_on(core, warned_node)}
    assert not core.read_node(other_node).spec.unschedulable


def test_a_termination_aws_starts_waits_in_the_hook_until_the_node_is_drained(spot, kube):
    env, pools, (going, staying), (going_node, staying_node), proxy, sqs, events = spot
    core = kube.core()
    kube.apply([{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "dagster-run-1", "namespace": "default"},
                 "spec": {"template": {"metadata": {"labels": {"dpe.io/pool": "spot-etl"}}, "spec": {
                     "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": going_node},
                     "tolerations": [{"key": "dpe.io/pool", "operator": "Exists"}],
                     "containers": [{"name": "main", "image": "dpe:1"}]}}}}])
    wait_for("the run's pod running", lambda: any(
        p.metadata.name.startswith("dagster-run-1") and p.status.phase == "Running" for p in pods_on(core, going_node)))
    queue = env.block("aws")["interruption_queue_url"]
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"Event": TEST_NOTIFICATION, "AutoScalingGroupName": "test-spot"}))
    notification = {
        "Origin": "EC2", "Destination": "AutoScalingGroup", "Service": "AWS Auto Scaling",
        "AccountId": "123456789012", "RequestId": "9c1d", "Time": "2026-12-06T04:00:00.000Z",
        "LifecycleHookName": HOOK, "AutoScalingGroupName": "test-spot", "EC2InstanceId": going,
        "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
        "LifecycleActionToken": TOKEN}
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(notification))
    reader = reader_for(env)
    actions = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(a[0] == "CompleteLifecycleAction" for a in proxy.actions):
        actions += reader.poll_once(wait_s=1)
    assert [(a.pool, a.instance_id, a.reason) for a in actions] == [("spot-etl", going, "termination (lifecycle hook)")]
    assert core.read_node(going_node).spec.unschedulable is True
    assert not [p for p in pods_on(core, going_node) if p.metadata.namespace == "default"], "drained first"
    [(action, group_name, params, _)] = [a for a in proxy.actions if a[0] == "CompleteLifecycleAction"]
    assert group_name == "test-spot" and params["InstanceId"] == going and params["LifecycleHookName"] == HOOK
    assert params["LifecycleActionResult"] == "CONTINUE" and params["LifecycleActionToken"] == TOKEN
    assert reader.terminating == {}
    assert sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0).get("Messages") is None
    assert not core.read_node(staying_node).spec.unschedulable


def test_dpe_suspends_the_processes_that_would_resize_its_groups(spot, aws):
    env, pools, *_ = spot
    autoscaling, _ = clients(aws.url)
    suspended = {p["ProcessName"] for p in group(autoscaling, "test-spot")["SuspendedProcesses"]}
    assert {"AZRebalance", "AlarmNotification", "ScheduledActions"} <= suspended
    assert "Launch" not in suspended and "Terminate" not in suspended
