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
        from dpe_dagster.pools.aws.asg import describe_groups

        describe_groups(pools)

    def pricer(self, env):
        from dpe_dagster.pools.aws.pricing import aws_pricer

        return aws_pricer(env)

    def node_id(self, kubernetes_provider_id):
        from dpe_dagster.pools.aws.asg import instance_id

        return instance_id(kubernetes_provider_id)


PROVIDER = AwsAsgProvider()
