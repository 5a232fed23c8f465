"""`PoolContainers`: the resource assets call; the variants differ only in how the command runs."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from dagster import (
    AssetExecutionContext, ConfigurableResource, DagsterInstance, Failure, MaterializeResult, MetadataValue,
)
from dagster._core.pipes.client import PipesClientCompletedInvocation
from pydantic import Field

from dpe_dagster.config import Environment
from dpe_dagster.containers.request import ContainerRequest, container_request
from dpe_dagster.pools.base import PoolError
from dpe_dagster.tags import TEAM_TAG
from dpe_dagster.usage.records import UNASSIGNED
from dpe_dagster.usage.pods import PodSpan, record_pod_span, record_pod_usage
from dpe_dagster.usage.records import (
    ASSET_COST, ASSET_COST_BASIS, ASSET_NODE_SECONDS, ASSET_POD, ASSET_POOL, UsageRecord, shown,
)

PIPES_VERSION = "1.13.27"  # dagster-pipes, as locked for this project
SCRIPT_ENV = "DPE_PIPES_SCRIPT"


# Run by `python -c` (no shell: the script travels in the environment, never in a command line):
# install dagster-pipes if the image lacks it, then become a fresh interpreter running the script.
_PIPES_BOOTSTRAP = f"""
import os, subprocess, sys
try:
    import dagster_pipes
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir",
                    "--disable-pip-version-check", "dagster-pipes=={PIPES_VERSION}"], stdout=sys.stderr, check=True)
os.execv(sys.executable, [sys.executable, "-c", os.environ["{SCRIPT_ENV}"]])
"""


def python_with_pipes(script: str) -> tuple[list[str], dict[str, str]]:
    """A command (and its env) that runs a Python script speaking Pipes in any image with `python`
    and `pip` (e.g. the public `python:3.11-slim`): dagster-pipes is installed first if missing.
    Locally `python` is this project's interpreter, which has it, so nothing is installed."""
    return ["python", "-c", _PIPES_BOOTSTRAP], {SCRIPT_ENV: script}


@dataclass
class Ran:
    """What a variant reports back: the Pipes invocation and when the container held its room."""

    pod: str
    pool: str
    invocation: PipesClientCompletedInvocation | None = None
    started_at: float | None = None  # on a node / process started; None: it never started
    ended_at: float | None = None
    charged_on_nodes: bool = True
    error: BaseException | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerRun:
    invocation: PipesClientCompletedInvocation
    usage: UsageRecord | None
    pool: str
    pod: str

    def cost_metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {ASSET_POOL: MetadataValue.text(self.pool), ASSET_POD: MetadataValue.text(self.pod)}
        if self.usage is not None:
            metadata[ASSET_COST] = shown(ASSET_COST, self.usage.cost_usd)
            metadata[ASSET_NODE_SECONDS] = shown(ASSET_NODE_SECONDS, self.usage.node_seconds)
            metadata[ASSET_COST_BASIS] = MetadataValue.text(
                f"ledger: the container's share of pool {self.pool}'s nodes while it ran "
                f"(price source: {self.usage.price_source})")
        return metadata

    def materialize_result(self) -> MaterializeResult:
        """The container's reported materialization, plus where it ran and what it cost."""
        result = self.invocation.get_materialize_result()
        return result._replace(metadata={**(result.metadata or {}), **self.cost_metadata()})


class PoolContainers(ConfigurableResource):
    """Runs a container (any image, any command speaking Dagster Pipes) as an asset, on a node pool.

    The variant is chosen per environment; assets see only `run`."""

    config: str | None = Field(default=None, description="the dpe configuration: a pools YAML file or "
                               "'module:attribute' (default: this process's, else DPE_CONFIG or [tool.dpe])")
    environment: str | None = Field(default=None, description="one of the project's [tool.dpe.environments] by "
                                    "name, when config is unset")
    node_wait_s: float | None = Field(
        default=None, description="how long a container may wait for a node before it fails; default: the pool's "
        "boot_timeout_s")

    def load_environment(self) -> Environment:
        from dpe_dagster.environment import current, load_environment

        if self.config is None and self.environment is None:
            return current()
        return load_environment(self.config, name=self.environment)

    def run(self, context: AssetExecutionContext, *, pool: str, image: str, command: str | Sequence[str],
            cpus: float | str | None = None, memory: float | str | None = None,
            env: Mapping[str, str] | None = None, extras: Mapping[str, Any] | None = None) -> ContainerRun:
        """Run `command` in `image` on a node of `pool`, asking for `cpus` and `memory` (e.g. '2g';
        the pool's defaults otherwise, at most one node). Raises a clear error for bad arguments and
        dagster.Failure when no node comes in time or the container fails."""
        environment = self.load_environment()
        request = container_request(environment, pool, image, command, cpus, memory)
        ran = Ran(pod="", pool=request.pool)
        try:
            self._execute(context, environment, request, dict(env or {}), dict(extras or {}), ran)
        except BaseException as error:  # noqa: BLE001 - charged, then raised as it was
            ran.error = error
        if ran.started_at is not None:
            ran.ended_at = ran.ended_at or time.time()
        usage = self._record(context, environment, request, ran)
        if ran.error is not None:
            raise ran.error
        assert ran.invocation is not None
        return ContainerRun(ran.invocation, usage, ran.pool, ran.pod)

    def _execute(self, context: AssetExecutionContext, environment: Environment, request: ContainerRequest,
                 env: dict[str, str], extras: dict[str, Any], ran: Ran) -> None:
        raise NotImplementedError

    def _live_nodes(self, environment: Environment, pool: str):
        from dpe_dagster.pools import open_pool
        from dpe_dagster.usage.pricing import pricer_for

        return open_pool(environment.pool(pool), environment).nodes(), pricer_for(environment)

    def _record(self, context: AssetExecutionContext, environment: Environment, request: ContainerRequest,
                ran: Ran) -> UsageRecord | None:
        if ran.started_at is None:
            return None  # it never held room: nothing to charge
        instance: DagsterInstance = context.instance
        span = PodSpan(
            run_id=context.run.run_id, job_name=context.run.job_name, pod=ran.pod,
            asset=context.asset_key.to_user_string(), pool=ran.pool, cpus=request.cpus,
            memory_gb=request.memory_gb, started_at=ran.started_at, ended_at=ran.ended_at or time.time(),
            status="FAILURE" if ran.error is not None else "SUCCESS", team=_team(context),
        )
        live, pricer = None, None
        if ran.charged_on_nodes:
            try:
                live, pricer = self._live_nodes(environment, ran.pool)
            except PoolError as error:  # a run pod holds no cloud credentials: the asset still succeeds
                record_pod_span(instance, span)
                context.log.info(f"dpe: container {ran.pod} on pool {ran.pool}: this run cannot read the pool's "
                                 f"nodes ({error}); the control plane prices it when the run ends")
                return None
        usage = record_pod_usage(instance, environment, span, live, pricer)
        if usage is not None:
            context.log.info(f"dpe: container {ran.pod} on pool {ran.pool}: {usage.node_seconds:.1f} node-s, "
                             f"${usage.cost_usd:.6f}")
        return usage


def _team(context: AssetExecutionContext) -> str:
    team = context.run.tags.get(TEAM_TAG)
    if team:
        return team
    try:
        owners = context.assets_def.specs_by_key[context.asset_key].owners
    except Exception:  # noqa: BLE001 - an op without a spec has no owners
        owners = ()
    return next((o.removeprefix("team:") for o in owners if o.startswith("team:")), UNASSIGNED)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def fail(message: str) -> Failure:
    return Failure(description=message)
