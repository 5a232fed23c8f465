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
