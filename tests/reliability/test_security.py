"""Secrets never reach logs or errors; user label and tag values are validated before they reach
Kubernetes or AWS; no shell is ever spawned (so no user string can reach one).

"No shell": no process dpe starts is a shell given a command line (`sh -c`, `bash -c`,
`os.system`, `shell=True`); every process starts from an argument vector. Read from the code, and
seen while a whole local run cycle runs: every Python process of it reports each process it starts
(Python's audit events, through audit_site/sitecustomize.py). Spark's own launcher scripts
(bin/spark-class, bin/spark-submit) are shell scripts; they are started with an argument vector and
pass it on as "$@", so no string of ours is parsed by a shell there either."""

from __future__ import annotations

import ast
import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpe_dagster.config import ConfigError, parse_environment
from dpe_dagster.pools import open_pool
from dpe_dagster.pools.base import PoolError
from dpe_dagster.tags import POOL_TAG, TagError, pool_request
from resources import aws_sim
from tests.paths import PROJECT_ROOT
from tests.reliability.harness import KEY_ID, SECRET

SOURCES = ["dpe_dagster", "resources", "assets", "bench"]
AUDIT_SITE = Path(__file__).with_name("audit_site")
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "csh", "tcsh", "fish"}


def _python_files():
    for folder in SOURCES:
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            if not any(part.startswith(".") or part in ("venv", "__pycache__") for part in path.parts):
                yield path


def test_no_shell_is_spawned_anywhere():
    """No os.system/os.popen, no subprocess call with shell=True, no string command line, no
    argument vector that starts a shell on a command line (`["sh", "-c", ...]`)."""
    found = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
                words = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                if words and Path(words[0]).name in SHELLS and "-c" in words[1:]:
                    found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {words[0]} -c")
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


def shell_commands(events: list[dict]) -> list[dict]:
    """The started processes that are a shell handed a command line."""
    return [e for e in events if e["event"] == "os.system" or e.get("unreadable") or (
        e["argv"] and Path(e["argv"][0]).name in SHELLS and "-c" in e["argv"][1:])]


def _started(folder: Path) -> dict[str, str]:
    """The environment of a cycle whose Python processes all report what they start."""
    log = folder / "started.jsonl"
    return dict(os.environ, DPE_HOME=str(folder / "dpe"), DAGSTER_HOME=str(folder / "dagster"), DPE_ENV="local",
                DPE_IDLE_TIMEOUT_S="5", DPE_TEST_PROCESS_LOG=str(log),
                PYTHONPATH=os.pathsep.join([str(AUDIT_SITE), *filter(None, [os.environ.get("PYTHONPATH")])]))


def _events(env: dict[str, str]) -> list[dict]:
    path = Path(env["DPE_TEST_PROCESS_LOG"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_no_shell_starts_in_a_local_run_cycle(tmp_path):
    """`dpe demo` (daemon, sensors, launcher, run worker, Spark on the local pool, scale-down) with
    every Python process in it reporting the processes it starts."""
    env = _started(tmp_path)
    demo = subprocess.run([str(Path(sys.executable).parent / "dpe"), "demo", "--scale-factor", "0.01"], env=env,
                          capture_output=True, text=True, timeout=900, cwd=PROJECT_ROOT)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    events = _events(env)
    # The reports cover the cycle: the pool's daemons, the run's Spark driver, several processes.
    assert any("org.apache.spark.deploy.worker.Worker" in e["argv"] for e in events), events
    assert any(Path(arg).name == "spark-submit" for e in events for arg in e["argv"][:2]), events
    assert len({e["pid"] for e in events}) >= 3, events
    assert shell_commands(events) == []


def test_no_shell_starts_for_a_container_asset_run_locally(tmp_path):
    """The example container asset (`python_with_pipes`, meant for any image with python) run by
    the local variant, through the dagster CLI."""
    env = _started(tmp_path)
    Path(env["DAGSTER_HOME"]).mkdir()
    from dpe_dagster.daemon import dagster_bin

    run = subprocess.run([dagster_bin("dagster"), "asset", "materialize", "--select", "word_count", "-m",
                          "assets.definitions"], env=env, capture_output=True, text=True, timeout=600,
                         cwd=PROJECT_ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    events = _events(env)
    assert any("open_dagster_pipes" in " ".join(e["argv"]) or "DPE_PIPES_SCRIPT" in " ".join(e["argv"])
               for e in events), events
    assert shell_commands(events) == []


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
