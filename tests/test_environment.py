"""Where a project's dpe configuration comes from: a YAML file it owns, a Python object, DPE_CONFIG
or its pyproject.toml; values from environment variables; one object per process."""

from __future__ import annotations

import textwrap

import pytest

from dpe_dagster.config import ConfigError
from dpe_dagster.environment import load_environment

POOLS = """
sensor_interval_s: 7
pools:
  etl:
    provider: local
    max_size: 3
    node_cpus: 2
    node_memory_gb: 4
    price_per_node_hour: 0.05
    idle_timeout_s: {env: TEST_IDLE_S, default: 30}
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DPE_CONFIG", raising=False)
    monkeypatch.delenv("DPE_ENV", raising=False)
    monkeypatch.delenv("TEST_IDLE_S", raising=False)
    (tmp_path / "pools.yaml").write_text(POOLS)
    return tmp_path


def test_a_yaml_file_with_a_default_and_an_environment_variable(project, monkeypatch):
    env = load_environment("pools.yaml")
    assert env.name == "pools" and env.source == str(project / "pools.yaml")
    assert env.sensor_interval_s == 7 and env.pool("etl").idle_timeout_s == 30
    monkeypatch.setenv("TEST_IDLE_S", "45")
    assert load_environment("pools.yaml").pool("etl").idle_timeout_s == 45


def test_one_object_per_process_until_the_file_or_the_variables_change(project, monkeypatch):
    first = load_environment("pools.yaml")
    assert load_environment(str(project / "pools.yaml")) is first
    monkeypatch.setenv("TEST_IDLE_S", "5")
    assert load_environment("pools.yaml") is not first


def test_dpe_config_then_the_projects_pyproject(project, monkeypatch):
    with pytest.raises(ConfigError, match=r"DPE_CONFIG: no dpe configuration: set DPE_CONFIG .*\[tool.dpe\]"):
        load_environment()
    (project / "pyproject.toml").write_text('[tool.dpe]\nconfig = "pools.yaml"\n')
    assert list(load_environment().pools) == ["etl"]
    (project / "other.yaml").write_text(POOLS.replace("etl:", "batch:"))
    monkeypatch.setenv("DPE_CONFIG", "other.yaml")
    assert list(load_environment().pools) == ["batch"]


def test_named_environments_in_pyproject_and_dpe_env(project, monkeypatch):
    (project / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.dpe]
        default = "dev"
        [tool.dpe.environments]
        dev = "pools.yaml"
        prod = "prod_pools:CONFIG"
    """))
    (project / "prod_pools.py").write_text(
        "from dagster import EnvVar\n"
        "CONFIG = {'pools': {'etl': {'provider': 'local', 'max_size': EnvVar('TEST_MAX'), 'node_cpus': 4,\n"
        "          'node_memory_gb': 16, 'price_per_node_hour': 0.2}}}\n")
    monkeypatch.syspath_prepend(str(project))
    assert load_environment().name == "dev"
    monkeypatch.setenv("DPE_ENV", "prod")
    with pytest.raises(ConfigError, match=r"pools.etl.max_size: environment variable TEST_MAX is not set"):
        load_environment()
    monkeypatch.setenv("TEST_MAX", "9")
    env = load_environment()
    assert env.name == "prod" and env.pool("etl").max_size == 9 and env.source == "prod_pools:CONFIG"
    monkeypatch.setenv("DPE_ENV", "qa")
    with pytest.raises(ConfigError, match=r"DPE_ENV: unknown environment 'qa'; allowed: dev, prod"):
        load_environment()


@pytest.mark.parametrize("text, message", [
    ("pools: [", r"pools.yaml: not valid YAML"),
    ("- a list", r"pools.yaml: must be a YAML mapping with at least `pools`"),
    (POOLS.replace("max_size: 3", "max_size: 0"), r"pools.etl.max_size: must be an integer >= 1; got 0"),
    (POOLS + "colour: blue\n", r"unknown field\(s\) colour"),
    (POOLS.replace("{env: TEST_IDLE_S, default: 30}", "{env: TEST_IDLE_S}"),
     r"pools.etl.idle_timeout_s: environment variable TEST_IDLE_S is not set"),
])
def test_bad_files_name_the_field(project, text, message):
    (project / "pools.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_environment("pools.yaml")


def test_missing_file_and_bad_python_object(project):
    with pytest.raises(ConfigError, match=r"nope.yaml: no such dpe configuration file"):
        load_environment("nope.yaml")
    with pytest.raises(ConfigError, match=r"no_such_module:CONFIG: cannot load the dpe configuration"):
        load_environment("no_such_module:CONFIG")
