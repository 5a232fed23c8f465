"""Every tag name dpe reads or writes, in one place: the run tags through which a run asks for room
on a node pool (and their validation), the tags dpe and Dagster set on runs, and the tags dpe
writes on cloud resources."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from dpe_dagster.config import POOL_NAME, ConfigError, Environment, PoolConfig

POOL_TAG = "dpe/node_pool"
CPU_TAG = "dpe/cpu"
MEMORY_TAG = "dpe/memory"
# How long this run may wait for room (seconds), instead of its pool's `wait_target_s`.
WAIT_TARGET_TAG = "dpe/wait_target_s"
MAX_CPUS = 4096
MAX_WAIT_TARGET_S = 86_400.0
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(g|gb|gi|m|mb|mi)?\s*$", re.IGNORECASE)


class TagError(ConfigError):
    """A run tag has a value dpe cannot use; the message names the tag and what is allowed."""


@dataclass(frozen=True)
class PoolRequest:
    pool: str
    cpus: float
    memory_gb: float
    wait_target_s: float | None = None  # how long the run may wait for room (None: the pool's)


def parse_cpus(value: str) -> float:
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        cpus = float("nan")
    if not (0 < cpus <= MAX_CPUS):
        raise TagError(f"tag {CPU_TAG}: must be a number of CPUs in (0, {MAX_CPUS}], like '2' or '0.5'; got {value!r}")
    return cpus


def requested_cpus(tags: Mapping[str, str], default: float) -> float:
    """The CPUs a run with these tags asks for: its `dpe/cpu` tag, else `default` (its pool's)."""
    return parse_cpus(tags[CPU_TAG]) if CPU_TAG in tags else default


def parse_memory_gb(value: str) -> float:
    match = _MEMORY.match(value or "")
    if not match or float(match.group(1)) <= 0:
        raise TagError(f"tag {MEMORY_TAG}: must be a positive size like '4g', '512m' or '2Gi' (a bare number is GB); "
                       f"got {value!r}")
    amount, unit = float(match.group(1)), (match.group(2) or "g").lower()
    return amount / 1024 if unit.startswith("m") else amount


def parse_wait_target_s(value: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not (0 <= seconds <= MAX_WAIT_TARGET_S):
        raise TagError(f"tag {WAIT_TARGET_TAG}: must be a number of seconds in [0, {MAX_WAIT_TARGET_S:g}], like '600'; "
                       f"got {value!r}")
    return seconds


def pool_request(tags: Mapping[str, str], env: Environment) -> PoolRequest | None:
    """What a run with these tags asks of which pool; None when it names no pool."""
    pool_name = tags.get(POOL_TAG)
    if pool_name is None:
        return None
    if not POOL_NAME.match(pool_name) or pool_name not in env.pools:
        raise TagError(f"tag {POOL_TAG}: {pool_name!r} is not a node pool of environment {env.name!r}; "
                       f"allowed: {', '.join(sorted(env.pools))}")
    return request_on(tags, env.pools[pool_name])


def request_on(tags: Mapping[str, str], pool: PoolConfig) -> PoolRequest:
    """What a run with these tags asks of `pool` (the pool they name)."""
    cpus = requested_cpus(tags, pool.default_run_cpus)
    memory = parse_memory_gb(tags[MEMORY_TAG]) if MEMORY_TAG in tags else pool.default_run_memory_gb
    wait = parse_wait_target_s(tags[WAIT_TARGET_TAG]) if WAIT_TARGET_TAG in tags else None
    return PoolRequest(pool.name, cpus, memory, wait)


def pool_tags(pool: str, cpus: float | None = None, memory: str | None = None,
              wait_target_s: float | None = None) -> dict[str, str]:
    """Run tags that place a job on a node pool (and, with `wait_target_s`, say how long its runs
    may wait for room, e.g. a backfill longer than its pool's target); checked here so a typo
    fails at load time."""
    if not POOL_NAME.match(pool):
        raise TagError(f"tag {POOL_TAG}: {pool!r} is not a valid pool name (lowercase letters, digits, '-')")
    tags = {POOL_TAG: pool}
    if cpus is not None:
        parse_cpus(str(cpus))
        tags[CPU_TAG] = f"{cpus:g}"
    if memory is not None:
        parse_memory_gb(memory)
        tags[MEMORY_TAG] = memory
    if wait_target_s is not None:
        parse_wait_target_s(str(wait_target_s))
        tags[WAIT_TARGET_TAG] = f"{wait_target_s:g}"
    return tags


TEAM_TAG = "dpe/team"
# Set on a run whose node got a spot interruption warning while the run held it: "<instance id> <event time>".
INTERRUPTED_TAG = "dpe/interrupted"

# A container asset's ask for room, recorded on its own run while its pod waits or runs, so the
# control plane (not the run pod, which holds no cloud credentials) sizes the pool for it: one tag
# per container, "<pool> <cpus> <memory GB>"; an empty value once the container has ended.
CONTAINER_TAG_PREFIX = "dpe/container/"


def container_ask_tag(demand_id: str, pool: str, cpus: float, memory_gb: float) -> dict[str, str]:
    return {CONTAINER_TAG_PREFIX + demand_id: f"{pool} {cpus:g} {memory_gb:g}"}


def container_asks(tags: Mapping[str, str], env: Environment) -> dict[str, PoolRequest]:
    """The open container asks among a run's tags, by container id, on this environment's pools."""
    asks = {}
    for key, value in tags.items():
        if not key.startswith(CONTAINER_TAG_PREFIX) or not value:
            continue
        parts = value.split()
        try:
            pool, cpus, memory_gb = parts[0], float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            cpus = memory_gb = float("nan")
        if len(parts) != 3 or not (cpus > 0 and memory_gb > 0):
            raise TagError(f"tag {key}: must be '<pool> <cpus> <memory GB>' with positive numbers, or empty; "
                           f"got {value!r}")
        if pool in env.pools:
            asks[key.removeprefix(CONTAINER_TAG_PREFIX)] = PoolRequest(pool, cpus, memory_gb)
    return asks


# Set by placement when a run moves to a fallback pool: the pool the run first asked for.
REQUESTED_POOL_TAG = "dpe/requested_pool"
# A pool over its daily budget holds its queued runs with these (usage/budget.py).
HOLD_TAG = "dpe/hold"
HOLD_REASON_TAG = "dpe/hold_reason"

# Set by Dagster: on a retried run (1 for the first retry), and on a partitioned run.
RETRY_NUMBER_TAG = "dagster/retry_number"
PARTITION_SET_TAG = "dagster/partition_set"

# Kubernetes labels and annotations dpe puts on the pods it makes: the pool's label (a pool's
# nodes carry it too, `labels` in its configuration), and which asset and run a container pod is for.
POOL_LABEL = "dpe.io/pool"
ASSET_ANNOTATION = "dpe.io/asset"
RUN_ID_ANNOTATION = "dpe.io/run-id"
# The label a pool's nodes carry for their lifecycle (spot / on-demand), set by their launch
# template (or its provider's equivalent).
LIFECYCLE_LABEL = "dpe.io/lifecycle"
# The label dagster-k8s puts on a run's pod; executors carry it too (set per session,
# `spark.kubernetes.executor_run_labels`), so one label query finds every pod of a run and the
# nodes it holds.
RUN_ID_LABEL = "dagster/run-id"
