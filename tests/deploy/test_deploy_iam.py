"""deploy/iam-policy.json grants exactly the AWS actions dpe's production code calls.

Two views of "calls": every `<obj>.autoscaling.<op>` / `<obj>.ec2.<op>` in dpe_dagster/ (mapped to
API names by botocore's own service model), and the operations recorded by a botocore event hook
while a pool goes through its whole life against the emulator. The emulator module is excluded:
its calls (creating launch templates and groups) only ever reach moto; in AWS, CloudFormation
creates the groups.

What the policy allows is read by `evaluate`, AWS's evaluation logic for identity policies
(allow when an Allow statement matches and no Deny does) for the condition operators the policy
uses; any other operator is an error, not a guess. There is no IAM here to ask: moto checks only
`StringEquals` and treats an Allow whose condition fails as an explicit Deny.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import boto3

from dpe_dagster.pools.aws.tags import BACKOFF_REASON_TAG, BACKOFF_UNTIL_TAG, SCALE_UP_SINCE_TAG
from tests.support.aws import aws, dagster, moto  # noqa: F401  (fixtures and helpers)

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "deploy" / "iam-policy.json"
SERVICES = {"autoscaling": "autoscaling", "ec2": "ec2", "sqs": "sqs"}
EXCLUDED = {ROOT / "dpe_dagster" / "pools" / "aws" / "emulator.py"}
# A production group as the CloudFormation template in deploy/ makes it.
PROD_GROUP_ARN = ("arn:aws:autoscaling:us-east-1:111122223333:autoScalingGroup:"
                  "0f6e2e1c-5a3e-4d7b-9c43-2f5b8e7a1d10:autoScalingGroupName/dpe-prod-spot-etl")
PROD_GROUP_TAGS = {"dpe:managed": "true", "dpe:pool": "spot-etl"}


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


def _values(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _matches(pattern: str, value: str, like: bool, case: bool = True) -> bool:
    if not case:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value, pattern) if like else value == pattern


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, Sequence[str]]) -> bool:
    present = {k.lower(): list(v) for k, v in context.items()}.get(key.lower())
    qualifier, _, base = operator.rpartition(":")
    if base == "Null":
        return (present is None or present == []) == (str(expected).lower() == "true")
    if base not in ("StringEquals", "StringLike"):
        raise AssertionError(f"the evaluator does not know condition operator {operator!r}: add it with AWS's rule")
    like = base == "StringLike"
    patterns = _values(expected)

    def one(value: str) -> bool:
        return any(_matches(p, value, like) for p in patterns)

    if qualifier == "ForAllValues":
        return all(one(v) for v in present or [])  # no values: true, as in AWS (hence the Null check)
    if qualifier == "ForAnyValue":
        return any(one(v) for v in present or [])
    if qualifier:
        raise AssertionError(f"unknown set qualifier in {operator!r}")
    return present is not None and len(present) == 1 and one(present[0])


def evaluate(policy: Mapping[str, Any], action: str, resource: str, context: Mapping[str, Sequence[str]]) -> bool:
    """Whether an identity policy allows `action` on `resource` in a request with these condition
    keys (multi-valued keys as lists, single-valued as one-element lists)."""
    allowed = False
    for statement in policy["Statement"]:
        if "NotAction" in statement or "NotResource" in statement:
            raise AssertionError("the evaluator does not know NotAction / NotResource")
        if not any(_matches(p, action, like=True, case=False) for p in _values(statement["Action"])):
            continue
        if not any(_matches(p, resource, like=True) for p in _values(statement["Resource"])):
            continue
        if all(_condition_holds(op, key, expected, context)
               for op, block in statement.get("Condition", {}).items() for key, expected in block.items()):
            if statement["Effect"] == "Deny":
                return False
            allowed = True
    return allowed


def tag_request(action: str, tags: Sequence[Mapping[str, str]], group_tags: Mapping[str, str] = PROD_GROUP_TAGS
                ) -> bool:
    """Whether the policy allows this CreateOrUpdateTags / DeleteTags request (its `Tags` list)
    on a production group carrying `group_tags`."""
    context: dict[str, list[str]] = {"aws:TagKeys": [t["Key"] for t in tags]}
    context.update({f"aws:ResourceTag/{k}": [v] for k, v in group_tags.items()})
    if action == "CreateOrUpdateTags":
        context.update({f"aws:RequestTag/{t['Key']}": [t.get("Value", "")] for t in tags})
    return evaluate(json.loads(POLICY.read_text()), f"autoscaling:{action}", PROD_GROUP_ARN, context)


def test_policy_grants_exactly_what_the_code_calls():
    called, granted = code_actions(), policy_actions()
    assert "autoscaling:SetDesiredCapacity" in called  # the scan sees the code at all
    assert not any("*" in a for a in granted), "no wildcard actions"
    assert called - granted == set(), f"the code calls actions the policy lacks: {sorted(called - granted)}"
    assert granted - called == set(), f"the policy grants actions the code never calls: {sorted(granted - called)}"


def test_every_call_a_pool_makes_at_run_time_is_granted(aws, dagster):  # noqa: F811
    from dpe_dagster.pools import open_pool
    from dpe_dagster.pools.aws.emulator import create_groups
    from tests.support.aws import clients, environment

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


def test_tags_dpe_writes_are_allowed_and_no_other_tag(aws, dagster):  # noqa: F811
    """Every tag request a pool makes through its life (scale-up bookkeeping, back-off) is allowed on
    dpe's groups; the role can neither rewrite nor delete `dpe:managed`, which is what makes a
    group dpe's, nor any other tag."""
    from dpe_dagster.pools import open_pool
    from dpe_dagster.pools.aws.emulator import create_groups
    from tests.support.aws import clients, environment

    env = environment(aws.url, boot_timeout_s=1)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    requests: list[tuple[str, list[dict]]] = []
    spot = open_pool(env.pool("spot-etl"), env)
    for action in ("CreateOrUpdateTags", "DeleteTags"):
        spot.autoscaling.meta.events.register(
            f"before-parameter-build.auto-scaling.{action}",
            lambda params, _a=action, **kw: requests.append((_a, [dict(t) for t in params["Tags"]])))
    spot.set_target(2)
    spot.nodes()
    spot.scale_up_health()
    spot.back_off("recording")
    spot.set_target(0)
    spot.set_target(3)
    time.sleep(1.1)
    spot.scale_up_health()

    written = {t["Key"] for a, tags in requests if a == "CreateOrUpdateTags" for t in tags}
    deleted = {t["Key"] for a, tags in requests if a == "DeleteTags" for t in tags}
    assert written == {SCALE_UP_SINCE_TAG, BACKOFF_UNTIL_TAG, BACKOFF_REASON_TAG}, written
    assert deleted == {SCALE_UP_SINCE_TAG}, deleted
    for action, tags in requests:
        assert tag_request(action, tags), f"{action} {tags} is denied, and dpe makes it"

    for forged in ([{"Key": "dpe:managed", "Value": "false"}], [{"Key": "Name", "Value": "x"}],
                   [{"Key": BACKOFF_UNTIL_TAG, "Value": "0"}, {"Key": "dpe:managed", "Value": "false"}],
                   [{"Key": "k8s.io/cluster-autoscaler/node-template/label/dpe.io/pool", "Value": "other"}]):
        assert not tag_request("CreateOrUpdateTags", forged), f"the role may write {forged}"
    for forged in ([{"Key": "dpe:managed"}], [{"Key": "dpe:pool"}], [{"Key": BACKOFF_UNTIL_TAG}],
                   [{"Key": SCALE_UP_SINCE_TAG}, {"Key": "dpe:managed"}]):
        assert not tag_request("DeleteTags", forged), f"the role may delete {forged}"
    # Only on dpe's groups: a group without dpe:managed is nobody's to tag.
    assert not tag_request("CreateOrUpdateTags", [{"Key": BACKOFF_UNTIL_TAG, "Value": "0"}], {"team": "other"})


def test_interruption_mark_is_the_only_instance_tag_dpe_may_write(aws, dagster):  # noqa: F811
    """`dpe interruptions` marks a warned instance with one tag; the role may write that key on the
    instances of dpe's groups (`aws:autoscaling:groupName`, which AWS sets on them) and nothing else."""
    from dpe_dagster.pools import open_pool
    from dpe_dagster.pools.aws.emulator import create_groups
    from dpe_dagster.pools.aws.tags import INSTANCE_INTERRUPTED_TAG as INTERRUPTED_TAG
    from tests.support.aws import clients, environment

    env = environment(aws.url)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    spot = open_pool(env.pool("spot-etl"), env)
    requests: list[list[dict]] = []
    spot.ec2.meta.events.register("before-parameter-build.ec2.CreateTags",
                                  lambda params, **kw: requests.append([dict(t) for t in params["Tags"]]))
    spot.set_target(1)
    [node] = spot.nodes()
    spot.mark_interrupted(node.id, "spot-interruption", time.time())
    assert [[t["Key"] for t in tags] for tags in requests] == [[INTERRUPTED_TAG]]

    policy = json.loads(POLICY.read_text())
    instance_arn = "arn:aws:ec2:us-east-1:111122223333:instance/i-0123456789abcdef0"
    dpe_instance = {"aws:ResourceTag/aws:autoscaling:groupName": ["dpe-prod-spot-etl"]}

    def allowed(keys: list[str], resource_tags: Mapping[str, list[str]] = dpe_instance) -> bool:
        return evaluate(policy, "ec2:CreateTags", instance_arn, {"aws:TagKeys": keys, **resource_tags})

    assert allowed([INTERRUPTED_TAG])
    assert not allowed([INTERRUPTED_TAG, "Name"]) and not allowed(["dpe:pool"]) and not allowed([])
    assert not allowed([INTERRUPTED_TAG], {"aws:ResourceTag/aws:autoscaling:groupName": ["other-team"]})
    assert not allowed([INTERRUPTED_TAG], {})
    assert not evaluate(policy, "ec2:CreateTags", "arn:aws:ec2:us-east-1:111122223333:volume/vol-1",
                        {"aws:TagKeys": [INTERRUPTED_TAG], **dpe_instance})


def test_evaluator_follows_aws_rules_for_the_operators_it_knows():
    policy = {"Statement": [{"Effect": "Allow", "Action": "autoscaling:CreateOrUpdateTags", "Resource": "*",
                             "Condition": {"ForAllValues:StringLike": {"aws:TagKeys": ["dpe:*"]}}}]}
    assert evaluate(policy, "autoscaling:CreateOrUpdateTags", "x", {"aws:TagKeys": ["dpe:a", "dpe:b"]})
    assert not evaluate(policy, "autoscaling:CreateOrUpdateTags", "x", {"aws:TagKeys": ["dpe:a", "Name"]})
    assert evaluate(policy, "autoscaling:CreateOrUpdateTags", "x", {}), "ForAllValues of no values holds, as in AWS"
    assert not evaluate(policy, "autoscaling:DeleteTags", "x", {"aws:TagKeys": ["dpe:a"]})
    deny = {"Statement": [*policy["Statement"], {"Effect": "Deny", "Action": "*", "Resource": "*"}]}
    assert not evaluate(deny, "autoscaling:CreateOrUpdateTags", "x", {"aws:TagKeys": ["dpe:a"]})


