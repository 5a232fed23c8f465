"""Providers come from entry points: a cloud of one's own is installed, not written into dpe.

`tests/provider_package/` is a provider written the way docs/providers.md says (one package, one
entry point); these tests install it with uv, as a user installs one, and run it through dpe:
configuration, opening, look-ahead, prices, its CLI command, and the whole control loop."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from dagster import DagsterEventType

from dpe_dagster.config import ConfigError, parse_environment
from dpe_dagster.pools import look_ahead, open_pool
from dpe_dagster.providers import providers
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.usage.eventlog import read_node_lifetimes
from dpe_dagster.usage.pricing import CONFIG, pricer_for
from tests.paths import PROJECT_ROOT
from tests.reliability.harness import advance, queue_run
from tests.support.aws import dagster  # noqa: F401  (fixture)

PACKAGE = PROJECT_ROOT / "tests" / "provider_package"
UV = (os.environ.get("DPE_UV") or shutil.which("uv") or "python3 -m uv").split()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package installed by uv into a folder of its own (its dist-info carries the entry point)."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([*UV, "pip", "install", "--python", sys.executable, "--no-deps", "--target", str(target),
                           str(PACKAGE)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


@pytest.fixture
def third_cloud(installed, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    providers.cache_clear()
    yield installed
    providers.cache_clear()
    for name in [m for m in sys.modules if m == "third_cloud" or m.startswith("third_cloud.")]:
        del sys.modules[name]


def environment(machines_dir, **third):
    return parse_environment("mixed", {"third": {"region": "north-1", **third}, "pools": {
        "etl": {"provider": "third", "max_size": 4, "node_cpus": 2, "node_memory_gb": 4, "price_per_node_hour": 0.1,
                "lifecycle": "spot", "idle_timeout_s": 1, "idle_timeout_mode": "fixed",
                "settings": {"machines_dir": str(machines_dir)}},
        "local-etl": {"provider": "local", "max_size": 1, "node_cpus": 2, "node_memory_gb": 2,
                      "price_per_node_hour": 0.02},
    }})


def test_an_installed_provider_is_configured_opened_looked_ahead_and_prices_its_nodes(third_cloud, tmp_path):
    import third_cloud as module

    assert {"local", "aws_asg", "third"} <= set(providers())
    env = environment(tmp_path, price_per_hour=0.5)
    pool = open_pool(env.pool("etl"), env)
    pool.set_target(2)
    nodes = pool.nodes()
    assert [(n.state, n.lifecycle, n.busy) for n in nodes] == [("pending", "spot", False)] * 2
    look_ahead([pool, open_pool(env.pool("local-etl"), env)])
    assert module.LOOKED_AHEAD[-1] == ["etl"], "each provider sees only its own pools"
    price = pricer_for(env)
    assert (price(env.pool("etl"), nodes[0]).usd_per_hour, price(env.pool("etl"), nodes[0]).source) == (
        0.5, "third-price-list")
    assert price(env.pool("local-etl"), nodes[0]).source == CONFIG
    assert providers()["third"].node_id({"spec": {"providerID": "third://n-7"}}) == "n-7"
    assert providers()["third"].node_id({"spec": {"providerID": "aws:///zone-a/i-0abc"}}) is None


def test_an_installed_provider_s_settings_and_block_are_checked_by_its_models(third_cloud, tmp_path):
    with pytest.raises(ConfigError) as raised:
        parse_environment("mixed", {"third": {"price_per_hour": "cheap"}, "pools": {"etl": {
            "provider": "third", "max_size": 1, "node_cpus": 2, "node_memory_gb": 4, "price_per_node_hour": 0.1,
            "settings": {"machine_dir": "x"}}}})
    problems = str(raised.value).splitlines()
    assert "pools.etl.settings: unknown field(s) machine_dir; allowed: machines_dir, min_size" in problems, problems
    assert any(p.startswith("third.region") for p in problems) and any(p.startswith("third.price_per_hour")
                                                                       for p in problems), problems


def test_an_installed_provider_adds_its_command_to_the_cli(third_cloud, tmp_path):
    config = tmp_path / "pools.yaml"
    config.write_text(f"third: {{region: north-1}}\npools:\n  etl: {{provider: third, max_size: 2, node_cpus: 2, "
                      f"node_memory_gb: 4, price_per_node_hour: 0.1, settings: {{machines_dir: {tmp_path}}}}}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(third_cloud), str(PROJECT_ROOT)]), "DPE_CONFIG": str(config)}
    shown = subprocess.run([sys.executable, "-m", "dpe_dagster.cli", "--help"], capture_output=True, text=True, env=env)
    assert "third-machines" in shown.stdout, shown.stdout + shown.stderr
    open_pool(environment(tmp_path).pool("etl"), environment(tmp_path)).set_target(1)
    listed = subprocess.run([sys.executable, "-m", "dpe_dagster.cli", "third-machines", "etl"], capture_output=True,
                            text=True, env=env)
    assert listed.returncode == 0 and listed.stdout.split()[1:] == ["pending", "idle"], listed.stdout + listed.stderr


def test_an_installed_provider_runs_the_whole_loop(third_cloud, tmp_path, dagster):
    """A queued run asks for a node; the cloud boots it and the run holds it; once the run ends
    and the node has been idle for its timeout, the core's removal sequence takes it away and its
    lifetime is recorded once, priced by the provider."""
    from third_cloud import Machines

    env = environment(tmp_path / "machines", price_per_hour=0.5)
    config, machines = env.pool("etl"), Machines(tmp_path / "machines")

    def tick(memory):
        pool = open_pool(config, env)  # as the sensor does: the cloud is the truth, not the object
        return scale_pool(dagster, config, pool, read_demand(dagster, env).of("etl"), memory, time.time(),
                          pricer=pricer_for(env))

    run_id = queue_run(dagster, "etl", cpus=1)
    result, memory = tick({})
    [node_id] = machines.read()
    assert result.plan.target == 1 and [n.state for n in open_pool(config, env).nodes()] == ["pending"]

    machines.write({node_id: {**machines.read()[node_id], "booted": True, "busy": True}})  # booted; the run starts
    advance(dagster, run_id, DagsterEventType.RUN_START)
    time.sleep(1.2)
    result, memory = tick(memory)
    assert result.removed == [] and list(machines.read()) == [node_id], "a busy node stays"
    with pytest.raises(Exception, match="refusing to remove busy node"):
        open_pool(config, env).remove_nodes([node_id])

    advance(dagster, run_id, DagsterEventType.RUN_SUCCESS)
    machines.write({node_id: {**machines.read()[node_id], "busy": False}})
    result, memory = tick(memory)  # idle from now
    time.sleep(1.2)
    result, memory = tick(memory)
    assert [(r.node_id, r.removed_because) for r in result.removed] == [(node_id, "idle")]
    assert machines.read() == {}
    result, memory = tick(memory)
    [lifetime] = read_node_lifetimes(dagster)
    assert (lifetime.node_id, lifetime.pool, lifetime.lifecycle, lifetime.removed_because) == (
        node_id, "etl", "spot", "idle")
    assert (lifetime.price_per_node_hour, lifetime.price_source) == (0.5, "third-price-list")


def test_an_unknown_provider_or_block_names_the_field_and_the_installed_ones(tmp_path):
    installed = ", ".join(sorted(providers()))
    pools = {"etl": {"provider": "third", "max_size": 1, "node_cpus": 2, "node_memory_gb": 4, "price_per_node_hour": 0.1}}
    with pytest.raises(ConfigError, match=rf"pools\.etl\.provider: must be one of {installed}; got 'third'"):
        parse_environment("mixed", {"pools": pools})
    with pytest.raises(ConfigError, match=r"mixed: unknown field\(s\) third; allowed: .*\(blocks of the installed "):
        environment(tmp_path)  # the `third:` block belongs to no installed provider
