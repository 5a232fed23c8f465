"""A real dagster-daemon killed with SIGKILL in the middle of a scale-up and of a scale-down, then
started again; and a spot instance taken away under a running run. After each, dpe works from what
AWS reports (not from what the dead daemon knew): every run ends, no instance is left running, every
run and node is in the ledger exactly once, and no scale action reaches AWS twice."""

from __future__ import annotations

import pytest
from dagster import DagsterEventType, DagsterRunStatus

from dpe_dagster.instance import start_timeout_s
from dpe_dagster.pools import open_pool
from dpe_dagster.scaling.cursor import AUTOSCALER_SENSOR, load_cursor
from dpe_dagster.tags import POOL_TAG, REQUESTED_POOL_TAG
from dpe_dagster.usage.eventlog import read_node_lifetimes, read_run_usage
from tests.fakes.aws_faults import FaultRates
from tests.reliability.daemons import Deployment
from tests.reliability.harness import wait_for

pytestmark = pytest.mark.slow
NO_FAULTS = FaultRates()


def first_action(d: Deployment, action: str, matches=lambda params: True, timeout_s: float = 300) -> dict:
    """Wait for the first `action` that reached AWS (through the injector) and return its parameters."""
    def seen():
        return next((params for name, _, params, _ in d.injector.actions if name == action and matches(params)), None)

    return wait_for(f"{action} to reach AWS", seen, timeout_s, 0.1, lambda: d.logs()[-4000:])


def autoscaler_saw_it_running(d: Deployment, node_id: str) -> bool:
    """The autoscaler's saved cursor holds the node, seen at a tick after its launch: from here its
    loss is charged up to that tick. (A node that AWS launches and takes away between two ticks is
    never seen: moto keeps no trace of terminated group members to reconcile from; real EC2 lists
    them for about an hour with their group tag.)"""
    for state in d.instance.all_instigator_state():
        cursor = getattr(state.instigator_data, "cursor", None) if state.name == AUTOSCALER_SENSOR else None
        memory = load_cursor(cursor).get("spot-etl", {}).get(node_id) if cursor else None
        if memory is not None and memory.last_seen is not None and memory.last_seen > memory.launched_at:
            return True
    return False


def test_daemon_killed_right_after_a_scale_up_reconciles_on_restart(deploy):
    d = deploy(NO_FAULTS, runs=3, run_s=4)
    daemon = d.start_daemon()
    first_action(d, "SetDesiredCapacity", lambda params: int(params["DesiredCapacity"]) > 0)
    d.kill(daemon)
    d.start_daemon()
    # A run the dead daemon was launching (scaled up for, run worker not started yet) is left
    # STARTING; run monitoring ends it after the deployed start timeout. Every other run succeeds.
    d.settle(2, timeout_s=start_timeout_s(d.env) + 120)
    for run in d.runs():
        assert run.status == DagsterRunStatus.SUCCESS or (
            run.status == DagsterRunStatus.FAILURE and run.tags.get("dagster/failure_reason") == "START_TIMEOUT"), run


def test_daemon_killed_right_after_a_scale_down_terminate_reconciles_on_restart(deploy):
    d = deploy(NO_FAULTS, runs=2, run_s=3)
    daemon = d.start_daemon()
    terminated = first_action(d, "TerminateInstanceInAutoScalingGroup", timeout_s=400)["InstanceId"]
    d.kill(daemon)
    d.start_daemon()
    audit = d.settle(2)
    assert audit["lifetimes"][terminated] == 1, "the node terminated just before the crash is recorded once"


def test_spot_loss_under_a_run_fails_over_to_on_demand_and_both_attempts_are_charged(deploy, monkeypatch):
    """The node goes for real under a running run, with the instance settings dpe deploys (run
    retries on, failed steps not retried): EC2 terminates the instance the run is on and the run
    worker dies with it. Dagster fails the run and retries it, dpe puts the retry on the on-demand
    fallback, and both attempts and the lost node are charged once."""
    d = deploy(NO_FAULTS, runs=1, run_s=90)
    d.start_daemon()
    # This process reads the pool as the daemon does: the emulator's placement of runs on instances.
    monkeypatch.setenv("AWS_ENDPOINT_URL", d.moto.url)
    monkeypatch.setenv("DAGSTER_HOME", str(d.home))
    spot = open_pool(d.env.pool("spot-etl"), d.env)

    def working_on_spot():
        for run in d.runs(DagsterRunStatus.STARTED):
            node = spot.run_nodes().get(run.run_id)
            if node and d.run_worker_pid(run.run_id):
                return run.run_id, node
        return None

    first_id, lost = wait_for("the run to be working on a spot instance", working_on_spot, 400, 1,
                              lambda: d.logs()[-4000:])
    # The run has been on it for at least one autoscaler tick (runs last longer than a tick; a node
    # that comes and goes between two ticks is the limit noted in autoscaler_saw_it_running).
    wait_for(f"the autoscaler to have seen {lost} running", lambda: autoscaler_saw_it_running(d, lost), 60, 0.5)
    assert d.instance.get_run_by_id(first_id).status == DagsterRunStatus.STARTED
    d.lose_node(lost, first_id)

    audit = d.settle(1)
    first = d.instance.get_run_by_id(first_id)
    assert first.status == DagsterRunStatus.FAILURE
    # What the user reads on the failed run: its process was killed; no step failed (the code is
    # not at fault, which is why the deployed retry policy retries it).
    messages = [e.message or "" for e in d.instance.all_logs(first_id)]
    assert any(f"Run execution process for {first_id} was terminated by signal 9" in m for m in messages), messages
    assert not d.instance.all_logs(first_id, of_type=DagsterEventType.STEP_FAILURE)
    [retry] = [r for r in d.runs() if r.tags.get("dagster/parent_run_id") == first_id]
    assert retry.status == DagsterRunStatus.SUCCESS
    assert retry.tags[POOL_TAG] == "ondemand-etl" and retry.tags[REQUESTED_POOL_TAG] == "spot-etl"

    usage = {u.run_id: u for u in read_run_usage(d.instance)}
    assert usage[first_id].pool == "spot-etl" and usage[first_id].status == "FAILURE"
    # Not asserted yet: that the failed run's record names the lost node. The ledger writes the run's
    # record before the autoscaler has recorded the node's lifetime, and then names the group's
    # replacement instead (a run's record is written even when one of its nodes is not accounted for
    # yet).
    # The capacity came back on the fallback: the retry ran on an on-demand node.
    assert usage[retry.run_id].pool == "ondemand-etl" and usage[retry.run_id].status == "SUCCESS"
    assert [n["lifecycle"] for n in usage[retry.run_id].nodes] == ["on-demand"]
    assert usage[first_id].cost_usd > 0 and usage[retry.run_id].cost_usd > 0
    assert audit["usage"][first_id] == 1 and audit["usage"][retry.run_id] == 1
    [record] = [n for n in read_node_lifetimes(d.instance) if n.node_id == lost]
    assert record.pool == "spot-etl" and record.lifecycle == "spot"
    assert record.removed_at > record.launched_at and record.price_per_node_hour > 0  # its paid time is charged
