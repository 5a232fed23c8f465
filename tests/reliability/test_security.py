"""Secrets never reach logs or errors; user label and tag values are validated before they reach
Kubernetes or AWS; no shell is ever spawned (so no user string can reach one)."""

from __future__ import annotations

import ast
import copy
import logging
from pathlib import Path

import pytest

from dpe_dagster.config import ConfigError, parse_environment
from dpe_dagster.paths import PROJECT_ROOT
from dpe_dagster.pools import open_pool
from dpe_dagster.pools.base import PoolError
from dpe_dagster.scaling.tags import POOL_TAG, TagError, pool_request
from resources import aws_sim
from tests.reliability.harness import KEY_ID, SECRET

SOURCES = ["dpe_dagster", "resources", "assets", "bench"]


def _python_files():
    for folder in SOURCES:
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            if not any(part.startswith(".") or part in ("venv", "__pycache__") for part in path.parts):
                yield path


def test_no_shell_is_spawned_anywhere():
    """No os.system/os.popen, no subprocess call with shell=True, no string command line."""
    found = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            where = f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}"
            if name in ("os.system", "os.popen", "os.execl", "os.execlp", "commands.getoutput"):
                found.append(f"{where} {name}")
            if name.startswith("subprocess.") or name in ("Popen", "run", "check_output", "check_call", "call"):
                for keyword in node.keywords:
                    if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                        found.append(f"{where} {name}(shell=...)")
                if name.startswith("subprocess.") and node.args and isinstance(node.args[0], (ast.JoinedStr, ast.BinOp)):
                    found.append(f"{where} {name} with a string command line")
    assert len(list(_python_files())) > 20
    assert found == []


@pytest.mark.parametrize("value", ["has space", "x" * 64, "-leading", "semi;colon", "new\nline", "$(id)", 3])
def test_bad_label_values_are_refused_before_kubernetes(value):
    raw = copy.deepcopy(aws_sim.environment())
    raw["pools"]["spot-etl"]["labels"] = {"dpe.io/pool": value}
    with pytest.raises(ConfigError, match=r"pools\.spot-etl\.labels"):
        parse_environment("aws-sim", raw)


@pytest.mark.parametrize("pool", ["spot-etl; rm -rf /", "../spot-etl", "spot-etl\n", "SPOT-ETL", "x" * 300])
def test_pool_tag_values_are_refused_before_aws(pool):
    env = parse_environment("aws-sim", aws_sim.environment())
    with pytest.raises(TagError, match="tag dpe/node_pool"):
        pool_request({POOL_TAG: pool}, env)


def test_aws_errors_and_logs_never_show_the_secret(monkeypatch):
    """With the secret in the environment, every AWS failure path (an unreachable endpoint, a
    refused endpoint) gives a message and log lines without it, also at DEBUG."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    raw = copy.deepcopy(aws_sim.environment())
    raw["aws"] = {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:9", "max_attempts": 2}
    env = parse_environment("aws-sim", raw)
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # botocore's DEBUG logs show requests: they must not show the secret either
    monkeypatch.setattr(root, "level", level, raising=False)
    messages = []
    for call in (lambda p: p.target(), lambda p: p.nodes(), lambda p: p.set_target(1)):
        with pytest.raises(PoolError) as error:
            call(open_pool(env.pool("spot-etl"), env))
        messages.append(str(error.value))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://autoscaling.us-east-1.amazonaws.com")
    emulator = parse_environment("aws-sim", aws_sim.environment())
    with pytest.raises(PoolError) as error:
        open_pool(emulator.pool("spot-etl"), emulator).target()
    messages.append(str(error.value))
    root.removeHandler(handler)
    text = "\n".join(messages) + stream.getvalue()
    assert "botocore" in text.lower() or "DescribeAutoScalingGroups" in text
    assert "127.0.0.1:9" in text  # the errors did say what failed
    assert SECRET not in text
