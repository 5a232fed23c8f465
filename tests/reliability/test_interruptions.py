"""A spot interruption warning during a run, end to end against moto's server: EventBridge routes
the event (as AWS sends it) to the SQS queue, `dpe interruptions`' reader asks for the replacement
within a second, the instance goes, the run's retry lands on the fallback pool and finishes, and the
lost node is charged exactly once, its record saying it was interrupted. moto never interrupts an
instance itself: the test puts the event and then terminates the instance, as EC2 would two
minutes later."""

from __future__ import annotations

import time

from dagster import DagsterEventType

from dpe_dagster.launch.pool_choice import place_on_pool
from dpe_dagster.pools import open_pool
from dpe_dagster.pools.aws.interruptions import InterruptionReader
from dpe_dagster.tags import INTERRUPTED_TAG
from dpe_dagster.usage.eventlog import read_node_lifetimes
from tests.reliability.harness import advance, aws_env, group, queue_run, tick  # noqa: F401  (fixtures and helpers)
from tests.support.aws import interruption_queue, moto, warn  # noqa: F401  (fixtures and helpers)


def test_warning_during_a_run_replaces_the_node_at_once_and_charges_it_once(aws_env, measured):
    env, instance, autoscaling, ec2 = aws_env
    spot_group = env.pool("spot-etl").settings["group_name"]
    pools = {name: open_pool(env.pool(name), env) for name in env.pools}
    pool = pools["spot-etl"]
    run_id = queue_run(instance, "spot-etl")
    now = time.time()
    _, memory = tick(instance, env, pool, {}, now)
    [warned] = pool.nodes()
    advance(instance, run_id, DagsterEventType.RUN_START)
    _, memory = tick(instance, env, pool, memory, now + 5)

    url = autoscaling.meta.endpoint_url
    sqs, events, queue = interruption_queue(url)
    cordoned: list[str] = []
    reader = InterruptionReader(sqs, queue, env, pools, cordon=cordoned.extend, instance=instance)
    sent = time.time()
    warn(events, warned.id)
    actions = reader.poll_once(wait_s=1)
    measured.add(interruption_warnings_handled=len(actions))
    [action] = actions
    assert group(autoscaling, spot_group)["DesiredCapacity"] == 2
    assert action.asked_at - sent < 1.0, f"replacement asked for {action.asked_at - sent:.2f}s after the warning"
    assert cordoned == [warned.id]
    # The run that held the node says so: a tag and a line in its event log.
    assert instance.get_run_by_id(run_id).tags[INTERRUPTED_TAG].startswith(warned.id)
    logged = [e.message for e in instance.all_logs(run_id) if e.is_dagster_event]
    assert any("spot interruption warning" in (m or "") and warned.id in (m or "") for m in logged), logged

    # The autoscaler's next tick does not undo the replacement while the warned node still runs.
    after, memory = tick(instance, env, pool, memory, now + 6)
    assert group(autoscaling, spot_group)["DesiredCapacity"] == 2, (after.plan.reason, after.state.nodes)

    # Two minutes later EC2 takes the instance; the run's worker dies with it; Dagster retries it.
    autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=warned.id, ShouldDecrementDesiredCapacity=True)
    advance(instance, run_id, DagsterEventType.RUN_FAILURE)
    retry = queue_run(instance, "spot-etl")
    instance.add_run_tags(retry, {"dagster/retry_number": "1", "dagster/parent_run_id": run_id})
    assert place_on_pool(instance, env, instance.get_run_by_id(retry)) == "ondemand-etl"
    advance(instance, retry, DagsterEventType.RUN_START)
    advance(instance, retry, DagsterEventType.RUN_SUCCESS)
    measured.add(runs_completed=1)
    for step in (10, 15, 20):
        _, memory = tick(instance, env, pool, memory, now + step)
    records = [n for n in read_node_lifetimes(instance) if n.node_id == warned.id]
    measured.add(records_lost=int(not records), records_duplicated=max(0, len(records) - 1))
    assert len(records) == 1, records
    assert records[0].interrupted == "spot-interruption", "the lost node's record says EC2 took it"
    assert sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0).get("Messages") is None
