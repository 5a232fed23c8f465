"""The provider contract (tests/pools/contract.py), for aws_asg and clusterapi."""

from tests.pools.contract import *  # noqa: F401,F403  (the contract's tests and its fixtures)
from tests.support.aws import aws, moto  # noqa: F401  (fixtures)
from tests.support.cluster import cluster, kube  # noqa: F401  (fixtures)
from tests.support.cluster_api import capi  # noqa: F401  (fixtures)
