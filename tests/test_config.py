"""Bad configuration and bad tags fail at load, with a message naming the field and what is allowed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dpe_dagster.config import ConfigError, parse_environment
from dpe_dagster.tags import TagError, pool_request, pool_tags
from resources import repository_environment

GOOD_POOL = {"provider": "local", "max_size": 2, "node_cpus": 1, "node_memory_gb": 1, "price_per_node_hour": 0.01}


def env_with(**pool_fields):
    return parse_environment("local", {"pools": {"spot-etl": {**GOOD_POOL, **pool_fields}}})


def test_the_default_environment_is_local_and_valid(monkeypatch):
    monkeypatch.delenv("DPE_ENV", raising=False)
    env = repository_environment()
    assert env.name == "local"
    assert env.pools["spot-etl"].provider == "local"


def test_unknown_environment_names_the_allowed_ones(monkeypatch):
    monkeypatch.setenv("DPE_ENV", "prdo")
    with pytest.raises(ConfigError, match=r"DPE_ENV: unknown environment 'prdo'; allowed: .*local"):
        repository_environment()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"provider": "gce"}, r"pools\.spot-etl\.provider: must be one of [a-z_, ]*; got 'gce' \(providers are registered under "
                            r"the entry point group dpe\.providers\)"),
        ({"max_size": -1}, r"pools\.spot-etl\.max_size: must be an integer >= 1; got -1"),
        ({"min_size": 3}, r"pools\.spot-etl\.max_size: must be an integer >= 3; got 2"),
        ({"node_cpus": 0}, r"pools\.spot-etl\.node_cpus: must be a number > 0; got 0"),
        ({"node_cpus": "four"}, r"pools\.spot-etl\.node_cpus: must be a number > 0; got 'four'"),
        ({"lifecycle": "preemptible"}, r"pools\.spot-etl\.lifecycle: must be one of spot, on-demand"),
        ({"price_per_node_hour": float("nan")}, r"pools\.spot-etl\.price_per_node_hour: must be a number >= 0"),
        ({"idle_timeout_s": True}, r"pools\.spot-etl\.idle_timeout_s: must be a number >= 0; got True"),
        ({"backoff_s": 0}, r"pools\.spot-etl\.backoff_s: must be a number > 0; got 0"),
        ({"fallback": "ondemand-etl"}, r"pools\.spot-etl\.fallback: 'ondemand-etl' is not a defined pool"),
        ({"labels": {"dpe.io/pool": "no spaces"}}, r"pools\.spot-etl\.labels\.dpe\.io/pool: value 'no spaces'"),
        ({"taints": [{"key": "dpe.io/spot", "effect": "Sometimes"}]},
         r"pools\.spot-etl\.taints\[0\]\.effect: must be one of NoSchedule, PreferNoSchedule, NoExecute"),
        ({"colour": "blue"}, r"pools\.spot-etl: unknown field\(s\) colour; allowed: .*max_size"),
        ({"settings": {"master_port": 80}}, r"pools\.spot-etl\.settings\.master_port: must be a port number"),
        ({"settings": {"daemon_memory": "lots"}},
         r"pools\.spot-etl\.settings\.daemon_memory: must be a JVM heap size such as 512m or 1g; got 'lots'"),
        ({"reserved_cpus": 1.5}, r"pools\.spot-etl\.reserved_cpus: must be less than node_cpus \(1\): runs need "
                                 r"room on a node; got 1\.5"),
        ({"reserved_memory_gb": -1}, r"pools\.spot-etl\.reserved_memory_gb: must be a number >= 0; got -1"),
    ],
)
def test_bad_pool_fields_are_named(fields, message):
    with pytest.raises(ConfigError, match=message):
        env = env_with(**fields)
        # Provider settings are validated when the provider is opened.
        from dpe_dagster.pools import open_pool

        open_pool(env.pools["spot-etl"], env)


def test_missing_required_field_and_bad_pool_name():
    with pytest.raises(ConfigError, match=r"pools\.spot-etl\.max_size: is required"):
        parse_environment("local", {"pools": {"spot-etl": {k: v for k, v in GOOD_POOL.items() if k != "max_size"}}})
    with pytest.raises(ConfigError, match=r"pool name 'Spot_ETL' is not allowed"):
        parse_environment("local", {"pools": {"Spot_ETL": GOOD_POOL}})
    with pytest.raises(ConfigError, match=r"spark\.master: must start with one of spark://, local, k8s://"):
        parse_environment("local", {"pools": {"spot-etl": GOOD_POOL}, "spark": {"master": "yarn"}})


def test_bad_environment_variable_override_is_named(monkeypatch):
    monkeypatch.setenv("DPE_IDLE_TIMEOUT_S", "big")
    with pytest.raises(ConfigError, match=r"pools.spot-etl.idle_timeout_s: must be a number >= 0; got 'big'"):
        repository_environment("local")


def test_the_example_pipelines_scale_factor_is_checked(monkeypatch):
    from resources import tpch_scale_factor

    monkeypatch.setenv("DPE_TPCH_SCALE_FACTOR", "big")
    with pytest.raises(ConfigError, match=r"DPE_TPCH_SCALE_FACTOR: must be a number > 0; got 'big'"):
        tpch_scale_factor(repository_environment("local"))


@pytest.mark.parametrize(
    "tags, message",
    [
        ({"dpe/node_pool": "gpu"}, r"tag dpe/node_pool: 'gpu' is not a node pool of environment 'local'; allowed: spot-etl"),
        ({"dpe/node_pool": "spot-etl", "dpe/cpu": "lots"}, r"tag dpe/cpu: must be a number of CPUs in \(0, 4096\]"),
        ({"dpe/node_pool": "spot-etl", "dpe/cpu": "-1"}, r"tag dpe/cpu: .*got '-1'"),
        ({"dpe/node_pool": "spot-etl", "dpe/memory": "2 TB"}, r"tag dpe/memory: must be a positive size like '4g'"),
        ({"dpe/node_pool": "spot-etl", "dpe/wait_target_s": "soon"},
         r"tag dpe/wait_target_s: must be a number of seconds in \[0, 86400\], like '600'; got 'soon'"),
    ],
)
def test_bad_run_tags_are_named(tags, message):
    with pytest.raises(TagError, match=message):
        pool_request(tags, env_with())


def test_what_runs_can_have_of_a_node_is_the_node_less_what_is_reserved():
    """A local pool's node is the runs' whole; an aws_asg pool on Kubernetes keeps EKS's share for
    the kubelet and the DaemonSets (a 2-vCPU, 8 GiB node: 1.805 CPUs for runs); a pool may say."""
    from dpe_dagster.config import parse_pool

    local = env_with().pools["spot-etl"]
    assert (local.room_cpus, local.reserved_cpus, local.default_run_cpus) == (local.node_cpus, 0, local.node_cpus)
    eks = parse_pool("p", {"provider": "aws_asg", "max_size": 2, "node_cpus": 2, "node_memory_gb": 8,
                           "price_per_node_hour": 0.1, "settings": {"group_name": "g"}})
    assert (round(eks.room_cpus, 3), eks.default_run_cpus) == (1.805, eks.room_cpus)
    assert 7.3 < eks.room_memory_gb < 7.4
    said = parse_pool("p", {"provider": "aws_asg", "max_size": 2, "node_cpus": 2, "node_memory_gb": 8,
                            "price_per_node_hour": 0.1, "settings": {"group_name": "g"}, "reserved_cpus": 0.5})
    assert said.room_cpus == 1.5 and said.reserved_memory_gb == eks.reserved_memory_gb
    no_cluster = parse_pool("p", {"provider": "aws_asg", "max_size": 2, "node_cpus": 2, "node_memory_gb": 8,
                                  "price_per_node_hour": 0.1,
                                  "settings": {"group_name": "g", "busy_source": "dagster_runs"}})
    assert no_cluster.room_cpus == 2


@pytest.mark.parametrize("raw, message", [
    ({"sandbox": "not a module"}, r"sandbox: must be 'package\.module:attribute'; got 'not a module'"),
    ({"spark": {"executor_conf": {"gpu": {"spark.executor.cores": "2"}}}},
     r"spark\.executor_conf\.gpu: 'gpu' is not a defined pool; defined pools: spot-etl"),
    ({"spark": {"executor_conf": {"spot-etl": {"cores": "2"}}}},
     r"spark\.executor_conf\.spot-etl: key must be a Spark setting starting with 'spark\.'"),
    ({"kubernetes": {"namespace": "Not_A_Namespace"}}, r"kubernetes\.namespace: must be a Kubernetes namespace name"),
])
def test_bad_environment_fields_are_named(raw, message):
    from dpe_dagster.config import parse_environment

    pool = {"provider": "local", "max_size": 2, "node_cpus": 2, "node_memory_gb": 2, "price_per_node_hour": 0.1}
    with pytest.raises(ConfigError, match=message):
        parse_environment("t", {"pools": {"spot-etl": pool}, **raw})


def test_tags_default_to_the_pool_shape_and_parse_units():
    env = env_with(default_run_cpus=0.5, default_run_memory_gb=0.75)
    assert pool_request({"dpe/node_pool": "spot-etl"}, env).cpus == 0.5
    assert pool_request({"dpe/node_pool": "spot-etl", "dpe/memory": "512m"}, env).memory_gb == 0.5
    assert pool_request({"dpe/node_pool": "spot-etl", "dpe/memory": "2Gi"}, env).memory_gb == 2
    assert pool_request({"other": "x"}, env) is None
    assert pool_tags("spot-etl", cpus=2, memory="4g") == {"dpe/node_pool": "spot-etl", "dpe/cpu": "2",
                                                          "dpe/memory": "4g"}
    assert pool_request({"dpe/node_pool": "spot-etl"}, env).wait_target_s is None  # the pool's
    backfill = pool_tags("spot-etl", wait_target_s=1800)
    assert backfill["dpe/wait_target_s"] == "1800" and pool_request(backfill, env).wait_target_s == 1800


def test_cli_reports_a_bad_environment_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dpe_dagster.cli", "pools"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "DPE_ENV": "nowhere", "DPE_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "DPE_ENV: unknown environment 'nowhere'" in result.stderr
    assert "Traceback" not in result.stderr
