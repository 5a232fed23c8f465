"""AWS Auto Scaling groups as node pools (provider `aws_asg`): the groups (`asg.py`), their node
prices (`pricing.py`), spot interruption warnings (`interruptions.py`), and the AWS emulator behind
the aws-sim configuration (`emulator.py`). boto3 is imported only when a pool is opened."""

from __future__ import annotations

from dpe_dagster.providers import Provider


class AwsAsgProvider(Provider):
    name = "aws_asg"

    def open(self, pool, env):
        from dpe_dagster.pools.aws.asg import AwsAsgPool

        return AwsAsgPool.from_config(pool, env)

    def settings_model(self):
        from dpe_dagster.pools.aws.asg import AsgSettings

        return AsgSettings

    def environment_models(self):
        from dpe_dagster.pools.aws.asg import AwsSettings

        return {"aws": AwsSettings}

    def look_ahead(self, pools):
        from dpe_dagster.kube.nodes import begin_look
        from dpe_dagster.pools.aws.asg import describe_groups

        describe_groups(pools)
        begin_look()  # a tick reads the cluster's pods afresh, once, for all its pools

    def pricer(self, env):
        from dpe_dagster.pools.aws.pricing import aws_pricer

        return aws_pricer(env)

    def node_reserved(self, pool):
        """On Kubernetes (busy_source kubernetes, the default), what EKS's kubelet and DaemonSets take
        of a node of the pool's shape; with busy_source dagster_runs nothing runs but the runs."""
        from dpe_dagster.pools.aws.eks import reserved_for_shape

        if (pool.settings or {}).get("busy_source", "kubernetes") != "kubernetes":
            return 0.0, 0.0
        return reserved_for_shape(pool.node_cpus, pool.node_memory_gb)

    def commands(self):
        from dpe_dagster.pools.aws.commands import interruptions

        return (interruptions,)

    def stand_in(self, env):
        """The AWS emulator on loopback, for an environment whose `aws.emulator` says so (aws-sim)."""
        if not env.block("aws").get("emulator"):
            return None
        from dpe_dagster.pools.aws.emulator import emulated_aws

        return emulated_aws(env)

    def node_id(self, node):
        from dpe_dagster.pools.aws.asg import node_instance_id

        return node_instance_id(node)


PROVIDER = AwsAsgProvider()
