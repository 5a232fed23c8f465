"""The AWS emulator behind the `aws-sim` environment: moto's server on a loopback port.

`emulated_aws(env)` starts the server as a subprocess in its own session, points boto3 at it
through the standard environment variables (so subprocesses such as the Dagster daemon and code
server inherit it), creates a launch template and an Auto Scaling group for every `aws_asg` pool
of the environment at its MinSize, and on exit stops the server and restores the environment.
Dummy credentials exist only inside that block, and only as environment variables.

moto is lenient where AWS is not (it does not enforce MaxSize, returns no scaling activities,
ignores most of MixedInstancesPolicy); dpe must not rely on that, and does not: it clamps to
MaxSize itself. One gap is filled here, in the emulator process only, because the ledger reports
it: moto launches every instance on-demand with the launch template's type, so the server is
started with a small shim that gives a mixed-instances group's new instances the types of its
overrides in turn and marks them spot according to its InstancesDistribution, as AWS would.

Busy-ness in aws-sim: Spark runs in local mode, so no work lands on a simulated instance. An
instance counts as busy while it holds an active run: the pool's STARTING and STARTED runs (from
Dagster's run storage) are packed with the policy's own first-fit onto the pool's serving
instances, oldest first; the instances that hold at least one run are busy. Runs that are still
QUEUED hold no instance. See `pools/run_model.py`, the `dagster_runs` busy source.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from dpe_dagster.config import Environment, PoolConfig
from dpe_dagster.pools.aws.eks import node_labels, node_user_data
from dpe_dagster.pools.base import PoolError
from dpe_dagster.pools.aws.tags import GROUP_MANAGED_TAG, GROUP_POOL_TAG

# moto accepts any AMI id of the right shape; this one is in its default image list.
EMULATOR_AMI = "ami-12c6146b"
EMULATOR_CLUSTER = "dpe-sim"
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "dpe-emulator", "AWS_SECRET_ACCESS_KEY": "dpe-emulator"}
# Variables that could send emulated calls elsewhere or to a real account: unset inside the block.
_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """moto's server on 127.0.0.1, a subprocess in its own session; `stop` ends it and its children."""

    def __init__(self, log_dir: Path | None = None):
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._log_dir = log_dir
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "MotoServer":
        if self._log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dpe-aws-emulator-")
            self._log_dir = Path(self._tmp.name)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # the free port may be taken between picking and binding it
            self.port = free_port()
            log_path = self._log_dir / "moto.log"
            with open(log_path, "ab") as log_file:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "dpe_dagster.pools.aws.emulator", "--port", str(self.port)],
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with urllib.request.urlopen(f"{self.url}/moto-api/reset", data=b"", timeout=2):
                        return self
                except (urllib.error.URLError, OSError):
                    time.sleep(0.1)
            self.stop()
        tail = (self._log_dir / "moto.log").read_text(errors="replace")[-2000:]
        raise PoolError(f"the AWS emulator did not start on 127.0.0.1 within {timeout_s:g}s:\n{tail}")

    def stop(self, grace_s: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp, self._log_dir = None, None

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- groups ----------------------------------------------------------------------------------
def _zones(region: str) -> list[str]:
    return [f"{region}{suffix}" for suffix in "abc"]


def create_group(autoscaling, ec2, pool: PoolConfig, region: str) -> str:
    """A launch template and a mixed-instances group for one pool, at its MinSize, as the
    CloudFormation template in deploy/ makes them in AWS."""
    from dpe_dagster.pools.aws.asg import AsgSettings

    settings = AsgSettings.parse(pool.name, dict(pool.settings))
    types = list(settings.instance_types) or ["m6i.large"]
    template = f"dpe-{pool.name}"
    spot = pool.lifecycle == "spot"
    ec2.create_launch_template(
        LaunchTemplateName=template,
        LaunchTemplateData={
            "ImageId": EMULATOR_AMI, "InstanceType": types[0],
            # What the node's kubelet registers with (labels, taints), as the CloudFormation template writes it.
            "UserData": node_user_data(EMULATOR_CLUSTER, node_labels(pool),
                                       [(t.key, t.value, t.effect) for t in pool.taints]),
            # Run pods must not reach the instance role through the metadata service: one hop only.
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
        },
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=settings.group_name,
        MinSize=pool.min_size,
        MaxSize=pool.max_size,
        DesiredCapacity=pool.min_size,
        AvailabilityZones=_zones(region),
        CapacityRebalance=spot,
        MixedInstancesPolicy={
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateName": template, "Version": "$Latest"},
                "Overrides": [{"InstanceType": t} for t in types],
            },
            "InstancesDistribution": {
                "OnDemandBaseCapacity": 0,
                "OnDemandPercentageAboveBaseCapacity": 0 if spot else 100,
                "SpotAllocationStrategy": "price-capacity-optimized",
            },
        },
        Tags=[{"Key": GROUP_POOL_TAG, "Value": pool.name, "PropagateAtLaunch": True},
              {"Key": GROUP_MANAGED_TAG, "Value": "true", "PropagateAtLaunch": False}],
    )
    return settings.group_name


def create_groups(env: Environment, autoscaling=None, ec2=None) -> list[str]:
    from dpe_dagster.pools.aws.asg import AwsSettings, make_clients

    aws = AwsSettings.parse(dict(env.block("aws")))
    if autoscaling is None or ec2 is None:
        autoscaling, ec2 = make_clients(aws)
    return [create_group(autoscaling, ec2, pool, aws.region)
            for pool in env.pools.values() if pool.provider == "aws_asg"]


@dataclass
class EmulatedAws:
    url: str
    region: str
    groups: list[str] = field(default_factory=list)
    server: MotoServer | None = None


@contextlib.contextmanager
def emulated_aws(env: Environment) -> Iterator[EmulatedAws]:
    """Run the block against a fresh AWS emulator holding this environment's groups.

    Sets AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION (and
    unsets AWS_PROFILE and other credential sources) for the block only; restores them and stops
    the server on exit, also when the block or the group creation fails."""
    from dpe_dagster.pools.aws.asg import AwsSettings

    region = AwsSettings.parse(dict(env.block("aws"))).region
    saved = {key: os.environ.get(key) for key in
             ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", *DUMMY_CREDENTIALS, *_CLEARED)}
    server = MotoServer()
    try:
        server.start()
        for key in _CLEARED:
            os.environ.pop(key, None)
        os.environ.update(DUMMY_CREDENTIALS, AWS_ENDPOINT_URL=server.url, AWS_DEFAULT_REGION=region)
        groups = create_groups(env)
        yield EmulatedAws(server.url, region, groups, server)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- the server process ------------------------------------------------------------------------
def _patch_mixed_instances() -> None:
    """Give new instances of a mixed-instances group the override types in turn and the spot /
    on-demand lifecycle its InstancesDistribution asks for (moto launches every instance on-demand
    with the template's type). Capacity is never pretended: moto still launches whatever is asked."""
    from moto.autoscaling.models import FakeAutoScalingGroup

    original = FakeAutoScalingGroup.replace_autoscaling_group_instances

    def replace(self, count_needed, propagated_tags):
        before = {state.instance.id for state in self.instance_states}
        original(self, count_needed, propagated_tags)
        policy = self.mixed_instances_policy or {}
        types = [o["InstanceType"] for o in policy.get("LaunchTemplate", {}).get("Overrides", []) if o.get("InstanceType")]
        distribution = policy.get("InstancesDistribution", {})
        base = int(distribution.get("OnDemandBaseCapacity", 0))
        percent = int(distribution.get("OnDemandPercentageAboveBaseCapacity", 100))
        on_demand = sum(1 for s in self.instance_states
                        if s.instance.id in before and getattr(s.instance, "instance_lifecycle", None) != "spot")
        placed = len(before)
        for state in self.instance_states:
            if state.instance.id in before:
                continue
            if types:
                state.instance.instance_type = state.instance_type = types[placed % len(types)]
            above_base = placed + 1 - base
            if on_demand < base or (above_base > 0 and on_demand - base < round(above_base * percent / 100)):
                on_demand += 1
            else:
                state.instance.instance_lifecycle = "spot"
            placed += 1

    FakeAutoScalingGroup.replace_autoscaling_group_instances = replace


def _serve(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="dpe's AWS emulator (moto's server on loopback)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        _patch_mixed_instances()
    except (ImportError, AttributeError) as error:  # a moto without that hook: plain moto
        print(f"dpe: mixed-instances shim not applied: {error}", file=sys.stderr)
    from moto.server import main

    main(["-H", "127.0.0.1", "-p", str(args.port)])


if __name__ == "__main__":
    _serve()
