"""`DPE_ENV=eks-sim make demo`: the staging/prod path, end to end, on this machine.

The demo starts the AWS emulator and the eks-sim sandbox (a real control plane, nodes joining as
instances launch, the stand-in kubelet running pods as processes), queues a TPC-H run, and the
daemon's k8s run launcher (acting as the control plane's ServiceAccount) makes its Job; the
scheduler binds the pod to the node that joined for the pool's instance; the run succeeds there;
the pool goes back to zero; the usage record names the node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.build import GoMissing, build
from tests.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built():
    try:
        return build(quiet=True)
    except GoMissing as error:
        if os.environ.get("DPE_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"DPE_REQUIRE_CLUSTER=1 and {error}")
        pytest.skip(f"eks-sim needs the Kubernetes control plane: {error}")


def dpe(*args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "dpe"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=PROJECT_ROOT)


def test_the_eks_sim_demo_runs_the_whole_cycle_through_the_real_control_plane(built, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG"))}
    env.update(DPE_ENV="eks-sim", DPE_HOME=str(tmp_path / "dpe"), DAGSTER_HOME=str(tmp_path / "dagster"),
               DPE_IDLE_TIMEOUT_S="5")
    demo = dpe("demo", env=env)
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    for step in ("sandbox tests.cluster.sandbox:eks_sandbox started", "scaling up for the queued run",
                 "running the pipeline: SUCCESS", "recording usage in the event log", "scaling down after the idle timeout"):
        assert step in demo.stdout, demo.stdout
    [record] = json.loads(dpe("usage", "--json", env=env).stdout)
    assert (record["pool"], record["status"], record["lifecycle"]) == ("spot-etl", "SUCCESS", "spot")
    # The node the scheduler bound the run's pod to: an instance of the pool's group, read from the
    # pod's node through the Kubernetes API while the run ran.
    [node] = record["nodes"]
    assert node["node_id"].startswith("i-") and node["instance_type"].endswith(".xlarge")
    lifetimes = json.loads(dpe("usage", "--nodes", "--json", env=env).stdout)
    [lifetime] = [n for n in lifetimes if n["node_id"] == node["node_id"]]
    assert lifetime["removed_because"] == "idle" and lifetime["busy_seconds"] > 0
    assert lifetime["paid_usd"] >= record["cost_usd"] > 0
