"""deploy/iam-policy.json grants exactly the AWS actions dpe's production code calls.

Two views of "calls": every `<obj>.autoscaling.<op>` / `<obj>.ec2.<op>` in dpe_dagster/ (mapped to
API names by botocore's own service model), and the operations recorded by a botocore event hook
while a pool goes through its whole life against the emulator. The emulator module is excluded:
its calls (creating launch templates and groups) only ever reach moto; in AWS, CloudFormation
creates the groups.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "deploy" / "iam-policy.json"
SERVICES = {"autoscaling": "autoscaling", "ec2": "ec2", "sqs": "sqs"}
EXCLUDED = {ROOT / "dpe_dagster" / "pools" / "aws_emulator.py"}


def policy_actions() -> set[str]:
    policy = json.loads(POLICY.read_text())
    actions = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        listed = statement["Action"]
        actions |= {listed} if isinstance(listed, str) else set(listed)
    return actions


def code_actions() -> set[str]:
    mapping = {svc: boto3.client(svc, region_name="us-east-1").meta.method_to_api_mapping for svc in SERVICES}
    found = set()
    for path in (ROOT / "dpe_dagster").rglob("*.py"):
        if path in EXCLUDED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                    and node.value.attr in SERVICES and not node.attr.startswith("_") and node.attr != "meta":
                api = mapping[node.value.attr].get(node.attr)
                assert api, f"{path.name}: {node.value.attr}.{node.attr} is not a boto3 operation"
                found.add(f"{SERVICES[node.value.attr]}:{api}")
    return found


def test_policy_grants_exactly_what_the_code_calls():
    called, granted = code_actions(), policy_actions()
    assert "autoscaling:SetDesiredCapacity" in called  # the scan sees the code at all
    assert not any("*" in a for a in granted), "no wildcard actions"
    assert called - granted == set(), f"the code calls actions the policy lacks: {sorted(called - granted)}"
    assert granted - called == set(), f"the policy grants actions the code never calls: {sorted(granted - called)}"


def test_every_call_a_pool_makes_at_run_time_is_granted(aws, dagster):  # noqa: F811
    from test_aws_asg import clients, environment

    from dpe_dagster.pools import open_pool
    from dpe_dagster.pools.aws_emulator import create_groups

    env = environment(aws.url, boot_timeout_s=1)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    recorded: set[str] = set()
    pools = [open_pool(env.pool(name), env) for name in ("spot-etl", "ondemand-etl")]
    for pool in pools:
        for client in (pool.autoscaling, pool.ec2):
            prefix = client.meta.service_model.endpoint_prefix
            client.meta.events.register(
                "before-call.*.*", lambda model, _p=prefix, **kw: recorded.add(f"{_p}:{model.name}"))
    spot = pools[0]
    spot.set_target(2)
    nodes = spot.nodes()
    spot.remove_nodes([nodes[0].id])
    spot.scale_up_health()
    spot.back_off("recording")
    spot.backoff()
    assert {"autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup",
            "ec2:DescribeInstances", "autoscaling:CreateOrUpdateTags"} <= recorded
    assert recorded <= policy_actions(), sorted(recorded - policy_actions())


from test_aws_asg import aws, dagster, moto  # noqa: E402,F401  (fixtures)
