"""The configuration file's JSON schema: shipped with the package, current with the models, and it
accepts every configuration this repository ships while refusing what dpe refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

import dpe_dagster
from dpe_dagster.config import ConfigError, parse_environment, schema
from tests.paths import PROJECT_ROOT

SHIPPED = Path(dpe_dagster.__file__).parent / "pools.schema.json"
YAML_CONFIGS = [PROJECT_ROOT / "resources" / "local.yaml", PROJECT_ROOT / "tests" / "adopt_project" / "pools.yaml"]


def validator() -> jsonschema.Draft202012Validator:
    document = json.loads(SHIPPED.read_text())
    jsonschema.Draft202012Validator.check_schema(document)
    return jsonschema.Draft202012Validator(document)


def test_the_shipped_schema_is_what_dpe_schema_prints():
    printed = subprocess.run([sys.executable, "-m", "dpe_dagster.cli", "schema"], capture_output=True, text=True,
                             check=True).stdout
    assert json.loads(printed) == schema() == json.loads(SHIPPED.read_text()), (
        "dpe_dagster/pools.schema.json is stale: regenerate it with `dpe schema > dpe_dagster/pools.schema.json`")


@pytest.mark.parametrize("path", YAML_CONFIGS, ids=lambda p: p.name)
def test_the_repository_yaml_files_match_the_schema_as_written(path):
    # As an editor sees it: `{env: NAME, default: ...}` values unresolved.
    errors = [error.message for error in validator().iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize("name", ["aws_sim", "staging", "prod"])
def test_the_python_environments_match_the_schema(name):
    import importlib

    raw = importlib.import_module(f"resources.{name}").environment()
    assert [error.message for error in validator().iter_errors(raw)] == []


def _with_causes(errors):
    """Schema errors and, inside `anyOf` (a value or `{env: ...}`), why each branch failed."""
    for error in errors:
        yield error
        yield from _with_causes(error.context or [])


BAD = {
    "max_size: 0": ("pools.etl.max_size: must be an integer >= 1; got 0", ["pools", "etl", "max_size"]),
    "lifecycle: preemptible": ("pools.etl.lifecycle: must be one of spot, on-demand; got 'preemptible'",
                               ["pools", "etl", "lifecycle"]),
    "colour: blue": ("pools.etl: unknown field(s) colour; allowed:", ["pools", "etl"]),
    "taints: [{key: dpe.io/spot, effect: Sometimes}]": (
        "pools.etl.taints[0].effect: must be one of NoSchedule, PreferNoSchedule, NoExecute; got 'Sometimes'",
        ["pools", "etl", "taints", 0, "effect"]),
    # a provider's own settings, by the provider's model: in the schema, and checked at load
    "settings: {master_port: 80}": ("pools.etl.settings.master_port: must be a port number 1024-65000; got 80",
                                    ["pools", "etl", "settings", "master_port"]),
    "settings: {group_name: x}": ("pools.etl.settings: unknown field(s) group_name; allowed: daemon_memory",
                                  ["pools", "etl", "settings"]),
}


@pytest.mark.parametrize("line", BAD)
def test_a_bad_field_is_refused_by_the_schema_and_by_dpe_naming_the_same_field(line, tmp_path):
    message, path = BAD[line]
    text = ("pools:\n  etl:\n    provider: local\n    max_size: 2\n    node_cpus: 2\n    node_memory_gb: 2\n"
            "    price_per_node_hour: 0.035\n")
    text = text.replace("    max_size: 2\n", "") if line.startswith("max_size") else text
    raw = yaml.safe_load(text + f"    {line}\n")
    schema_errors = list(validator().iter_errors(raw))
    assert schema_errors
    assert path in [list(error.absolute_path) for error in _with_causes(schema_errors)]
    with pytest.raises(ConfigError) as raised:
        parse_environment("team", raw)
    assert message in str(raised.value)


def test_dpe_schema_check_reports_every_bad_field_without_a_traceback(tmp_path):
    config = tmp_path / "pools.yaml"
    config.write_text("pools:\n  etl:\n    provider: local\n    max_size: 0\n    node_cpus: two\n"
                      "    node_memory_gb: 2\n    price_per_node_hour: 0.035\n"
                      "    taints: [{key: dpe.io/spot, effect: Sometimes}]\n")
    result = subprocess.run([sys.executable, "-m", "dpe_dagster.cli", "schema", "--check", str(config)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for named in ("pools.etl.max_size: must be an integer >= 1; got 0",
                  "pools.etl.node_cpus: must be a number > 0; got 'two'",
                  "pools.etl.taints[0].effect: must be one of NoSchedule"):
        assert named in result.stderr
    good = subprocess.run([sys.executable, "-m", "dpe_dagster.cli", "schema", "--check", str(YAML_CONFIGS[1])],
                          capture_output=True, text=True)
    assert good.returncode == 0 and "valid; pools: etl" in good.stdout, good.stderr


def test_an_aws_pool_s_settings_and_the_aws_block_are_checked_when_the_configuration_loads():
    raw = {"aws": {"region": "us-east-1", "max_attempts": 50},
           "pools": {"spot": {"provider": "aws_asg", "max_size": 2, "node_cpus": 2, "node_memory_gb": 8,
                              "price_per_node_hour": 0.035, "settings": {"group_name": "dpe:spot", "busy_source": "ec2"}}}}
    assert [list(error.absolute_path) for error in _with_causes(validator().iter_errors(raw))
            if list(error.absolute_path) in (["aws", "max_attempts"], ["pools", "spot", "settings", "busy_source"])]
    with pytest.raises(ConfigError) as raised:
        parse_environment("team", raw)  # no pool opened, no AWS call: the file alone is wrong
    assert str(raised.value).splitlines() == [
        "pools.spot.settings.group_name: must be the Auto Scaling group's name (1-255 characters, no ':'); got 'dpe:spot'",
        "pools.spot.settings.busy_source: must be one of kubernetes, dagster_runs; got 'ec2'",
        "aws.max_attempts: must be an integer 1-20; got 50",
    ]


def test_a_top_level_key_is_a_field_or_a_block_an_installed_provider_owns():
    pools = {"spot": {"provider": "local", "max_size": 1, "node_cpus": 2, "node_memory_gb": 2,
                      "price_per_node_hour": 0.02}}
    with pytest.raises(ConfigError, match=r"^team: unknown field\(s\) gcp; allowed: .*\baws\b.*pools.*sensor_interval_s.* "
                                          r"\(blocks of the installed providers included\)$"):
        parse_environment("team", {"gcp": {"project": "p"}, "pools": pools})
    env = parse_environment("team", {"aws": {"region": "eu-west-1"}, "pools": pools})
    assert env.block("aws") == {"region": "eu-west-1"} and env.block("elsewhere") == {}
    with pytest.raises(ConfigError, match=r"unknown field\(s\) blocks"):
        parse_environment("team", {"blocks": {}, "pools": pools})  # dpe fills it in from the file


def test_one_pool_parsed_alone_has_its_settings_checked_too():
    from dpe_dagster.config import parse_pool

    with pytest.raises(ConfigError, match=r"^pools\.spot\.settings\.group_name: is required$"):
        parse_pool("spot", {"provider": "aws_asg", "max_size": 2, "node_cpus": 2, "node_memory_gb": 8,
                            "price_per_node_hour": 0.035})
