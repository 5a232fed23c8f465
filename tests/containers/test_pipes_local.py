"""The local variant for real: the container's command as a subprocess through Dagster Pipes, its
metadata and asset check back in the materialization, its time in the ledger; bad arguments
rejected with the field and what is allowed, before anything runs."""

from __future__ import annotations

import pytest
from dagster import asset, materialize

from assets.containers import word_count
from dpe_dagster.containers import LocalPoolContainers, PoolContainers
from dpe_dagster.containers.request import ContainerError, container_request
from dpe_dagster.usage.eventlog import read_pod_usage
from dpe_dagster.usage.pods import NO_NODE
from resources import repository_environment


def test_the_local_variant_runs_the_command_and_reports_back_through_pipes(sqlite_instance):
    result = materialize([word_count], resources={"containers": LocalPoolContainers(environment="local")},
                         instance=sqlite_instance)
    assert result.success
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("word_count")[0].metadata.items()}
    assert metadata["words"] == 18 and metadata["distinct_words"] == 16 and metadata["most_common"] == "the (2)"
    assert metadata["dpe/pool"] == "spot-etl" and metadata["dpe/cost_usd"] == 0.0
    assert [(c.check_name, c.passed) for c in result.get_asset_check_evaluations()] == [("has_words", True)]
    [usage] = read_pod_usage(sqlite_instance)
    assert usage.assets == ("word_count",) and usage.team == "platform" and usage.price_source == NO_NODE
    assert usage.ended_at >= usage.started_at and usage.node_seconds == 0.0


def test_a_failing_command_fails_the_step_and_is_still_recorded(sqlite_instance):
    @asset
    def broken(context, containers: PoolContainers):
        containers.run(context, pool="spot-etl", image="busybox:1.36", command=["sh", "-c", "exit 3"])

    result = materialize([broken], resources={"containers": LocalPoolContainers(environment="local")},
                         instance=sqlite_instance, raise_on_error=False)
    assert not result.success
    [usage] = read_pod_usage(sqlite_instance)
    assert usage.status == "FAILURE" and usage.assets == ("broken",)


@pytest.mark.parametrize("pool, kwargs, expected", [
    ("gpu-xl", {}, "pool: 'gpu-xl' is not a node pool of environment 'staging'; allowed: ondemand-driver, "
                   "ondemand-etl, spot-etl"),
    # What runs can have of staging's 4-vCPU, 16 GiB nodes (EKS's kubelet reservation and DaemonSets left out).
    ("spot-etl", {"cpus": 8}, "cpus: must be a number in (0, 3.795] (a container runs on one node; one node of pool "
                              "spot-etl has 3.795 CPUs and 15.0302 GB for runs); got 8"),
    ("spot-etl", {"cpus": "two"}, "cpus: must be a number in (0, 3.795]"),
    ("spot-etl", {"cpus": True}, "cpus: must be a number in (0, 3.795]"),
    ("spot-etl", {"memory": "lots"}, "memory: must be a size like '4g', '512m' or '2Gi' (a bare number is GB) "
                                     "of at most 15.0302 GB"),
    ("spot-etl", {"memory": "16g"}, "of at most 15.0302 GB"),
    ("spot-etl", {"command": []}, "command: must be a non-empty list"),
    ("spot-etl", {"image": "has space"}, "image: must be an image reference"),
])
def test_bad_arguments_name_the_field_and_what_is_allowed(pool, kwargs, expected):
    env = repository_environment("staging")
    args = {"image": "busybox:1.36", "command": ["true"], **kwargs}
    with pytest.raises(ContainerError) as error:
        container_request(env, pool, **args)
    assert expected in str(error.value)
