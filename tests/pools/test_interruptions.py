"""Spot interruptions end to end against moto's server: an EventBridge rule routes EC2's events to
an SQS queue (moto's server does route them), dpe's reader long-polls it and asks for the
replacement at once. moto never interrupts an instance itself: the test puts the event as AWS
sends it (source aws.ec2, the detail-type AWS uses)."""

from __future__ import annotations

import json
import time

from dagster import DagsterEventType

from dpe_dagster.pools.aws.emulator import create_groups
from dpe_dagster.pools.aws.interruptions import WARNING, InterruptionReader
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.demand import read_demand
from tests.reliability.harness import advance, queue_run
from tests.support.aws import (  # noqa: F401  (fixtures and helpers)
    REGION,
    aws,
    clients,
    dagster,
    environment,
    group,
    interruption_queue,
    moto,
    pools_of,
    warn,
)


def test_warning_during_a_run_asks_for_the_replacement_within_a_second(aws, dagster):
    env = environment(aws.url)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    pools = pools_of(env)
    run_id = queue_run(dagster, "spot-etl")
    scale_pool(dagster, env.pool("spot-etl"), pools["spot-etl"], read_demand(dagster, env).of("spot-etl"), {},
               time.time())
    advance(dagster, run_id, DagsterEventType.RUN_START)
    [node] = pools["spot-etl"].nodes()
    assert node.busy and group(autoscaling, "test-spot")["DesiredCapacity"] == 1

    sqs, events, queue = interruption_queue(aws.url)
    cordoned = []
    reader = InterruptionReader(sqs, queue, env, pools, cordon=cordoned.extend)
    sent = time.time()
    warn(events, node.id)
    actions = reader.poll_once(wait_s=1)
    assert group(autoscaling, "test-spot")["DesiredCapacity"] == 2, "the replacement is asked for at once"
    late = actions[0].asked_at - sent
    assert late < 1.0, f"replacement asked for {late:.2f}s after the warning"
    assert cordoned == [node.id]
    assert [(a.pool, a.instance_id, a.grow_pool) for a in actions] == [("spot-etl", node.id, "spot-etl")]
    # Handled: deleted, so a second reader does not act twice.
    assert sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0).get("Messages") is None
    assert group(autoscaling, "test-spot")["DesiredCapacity"] == 2


def test_full_pool_asks_its_fallback(aws, dagster):
    env = environment(aws.url, max_size=1)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    pools = pools_of(env)
    pools["spot-etl"].set_target(1)
    [node] = pools["spot-etl"].nodes()
    sqs, events, queue = interruption_queue(aws.url)
    warn(events, node.id)
    [action] = InterruptionReader(sqs, queue, env, pools).poll_once(wait_s=1)
    assert action.grow_pool == "ondemand-etl"
    assert group(autoscaling, "test-ondemand")["DesiredCapacity"] == 1
    assert group(autoscaling, "test-spot")["DesiredCapacity"] == 1


def test_foreign_and_malformed_messages_are_dropped_without_acting(aws, dagster, caplog):
    env = environment(aws.url)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    pools = pools_of(env)
    sqs, events, queue = interruption_queue(aws.url)
    warn(events, "i-0123456789abcdef0")  # no pool of dpe's owns it
    sqs.send_message(QueueUrl=queue, MessageBody="not json")
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"source": "aws.ec2", "detail-type": WARNING,
                                                              "detail": {}}))
    reader = InterruptionReader(sqs, queue, env, pools)
    actions = []
    for _ in range(3):
        actions += reader.poll_once(wait_s=1)
    assert actions == []
    assert group(autoscaling, "test-spot")["DesiredCapacity"] == 0
    assert sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0).get("Messages") is None
    assert "message body is not JSON" in caplog.text
    assert "detail.instance-id: must be an EC2 instance id" in caplog.text


def test_queue_url_is_read_from_the_aws_settings_and_validated(aws, dagster):
    import pytest

    from dpe_dagster.config import ConfigError, parse_environment
    from dpe_dagster.pools.aws.interruptions import reader_for

    env = environment(aws.url)
    with pytest.raises(ConfigError, match=r"aws\.interruption_queue_url: not set"):
        reader_for(env)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    sqs, events, queue = interruption_queue(aws.url)
    raw = {"aws": {**dict(env.block("aws")), "interruption_queue_url": queue},
           "pools": {name: _raw_pool(env.pool(name)) for name in env.pools}}
    configured = parse_environment("test", raw)
    reader = reader_for(configured)
    assert reader.queue_url == queue
    pools_of(configured)["spot-etl"].set_target(1)
    [node] = reader.pools["spot-etl"].nodes()
    warn(events, node.id)
    [action] = reader.poll_once(wait_s=1)
    assert action.instance_id == node.id and group(autoscaling, "test-spot")["DesiredCapacity"] == 2

    bad = {**raw, "aws": {**raw["aws"], "interruption_queue_url": "sqs://nowhere"}}
    with pytest.raises(ConfigError, match=r"aws\.interruption_queue_url: must be an SQS queue URL"):
        reader_for(parse_environment("test", bad))


def _raw_pool(pool) -> dict:
    fields = ("provider", "min_size", "max_size", "node_cpus", "node_memory_gb", "lifecycle", "price_per_node_hour",
              "idle_timeout_s", "default_run_cpus", "default_run_memory_gb", "fallback")
    raw = {f: getattr(pool, f) for f in fields if getattr(pool, f, None) is not None}
    raw["settings"] = dict(pool.settings)
    return raw


def test_prod_environment_reads_the_queue_url_the_deployment_sets(monkeypatch):
    import yaml

    from dpe_dagster.pools.aws.interruptions import queue_url
    from resources import repository_environment
    from tests.support.deploy import DEPLOY

    [deployment] = yaml.safe_load_all((DEPLOY / "k8s" / "interruptions.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["dpe", "interruptions"]
    values = {var["name"]: var["value"] for var in container["env"] if "value" in var}  # not the secret's
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    assert queue_url(repository_environment("prod")) == values["DPE_INTERRUPTION_QUEUE_URL"]


def test_queue_template_passes_cfn_lint_and_routes_what_the_reader_reads():
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from dpe_dagster.pools.aws.interruptions import DETAIL_TYPES
    from tests.support.deploy import DEPLOY, CloudFormationLoader

    template_path = DEPLOY / "cloudformation" / "interruption-queue.yaml"
    result = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(template_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    template = yaml.load(template_path.read_text(), Loader=CloudFormationLoader)
    pattern = template["Resources"]["Rule"]["Properties"]["EventPattern"]
    assert pattern == {"source": ["aws.ec2"], "detail-type": list(DETAIL_TYPES)}
    # The queue name is the one deploy/iam-policy.json lets dpe read, nothing wider.
    policy = json.loads((DEPLOY / "iam-policy.json").read_text())
    [sqs_statement] = [s for s in policy["Statement"] if any(a.startswith("sqs:") for a in s["Action"])]
    assert sqs_statement["Resource"] == "arn:aws:sqs:*:*:dpe-*-interruptions"
    assert template["Resources"]["Queue"]["Properties"]["QueueName"] == {"Sub": "${ClusterName}-interruptions"}
    assert template["Parameters"]["ClusterName"]["AllowedPattern"] == "^dpe-[a-z0-9-]+$"
