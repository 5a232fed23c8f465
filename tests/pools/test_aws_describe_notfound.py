"""Real EC2 fails `DescribeInstances(InstanceIds=[...])` as a whole with InvalidInstanceID.NotFound
when one id is not listed by EC2 yet (an instance the group launched seconds ago); moto does not.
Here a botocore hook on the pool's EC2 client makes moto's answer behave like EC2's for one
instance EC2 does not know yet: the call with its id fails as a whole, and any other listing
leaves it out."""

from __future__ import annotations

import boto3
from botocore.exceptions import ClientError

from dpe_dagster.pools import open_pool
from dpe_dagster.pools.aws.emulator import create_groups
from tests.support.aws import REGION, aws, clients, environment, moto  # noqa: F401  (fixtures)


def ec2_that_does_not_list_yet(url: str, hidden: set[str]):
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=url)
    seen = []

    def fail_for_unknown_ids(params, **_):
        seen.append(dict(params))
        unknown = sorted(set(params.get("InstanceIds") or ()) & hidden)
        if unknown:
            raise ClientError({"Error": {"Code": "InvalidInstanceID.NotFound",
                                         "Message": f"The instance ID '{', '.join(unknown)}' does not exist"}},
                              "DescribeInstances")

    def leave_out_unknown(parsed, **_):
        for reservation in parsed.get("Reservations", []):
            reservation["Instances"] = [i for i in reservation["Instances"] if i["InstanceId"] not in hidden]

    ec2.meta.events.register("before-parameter-build.ec2.DescribeInstances", fail_for_unknown_ids)
    ec2.meta.events.register("after-call.ec2.DescribeInstances", leave_out_unknown)
    return ec2, seen


def test_nodes_lists_the_others_when_ec2_does_not_know_a_new_instance_yet(aws):  # noqa: F811
    env = environment(aws.url)
    autoscaling, _ = clients(aws.url)
    create_groups(env, autoscaling, _)
    pool = open_pool(env.pool("spot-etl"), env)
    pool.set_target(3)
    ids = sorted(i["InstanceId"] for i in autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=["test-spot"])["AutoScalingGroups"][0]["Instances"])
    assert len(ids) == 3
    newest = ids[0]
    pool.ec2, calls = ec2_that_does_not_list_yet(aws.url, {newest})

    nodes = {n.id: n for n in pool.nodes()}
    assert sorted(nodes) == ids
    # EC2 knows the two others: they are running, with their types; the one it does not list yet
    # is on its way (pending), not dropped and not an error.
    assert {i: nodes[i].state for i in ids} == {newest: "pending", ids[1]: "running", ids[2]: "running"}
    assert all(nodes[i].instance_type in ("m6i.large", "m5.large", "m5a.large") for i in ids[1:])
    assert any("InstanceIds" in c for c in calls), "the by-id call was tried first"
