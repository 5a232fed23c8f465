"""What a container asks of a pool, validated before anything is scaled or created.

A container runs in one pod on one node, so it must fit one node of its pool's shape: unlike a
run (whose Spark executors spread over nodes), a pod larger than a node would wait forever.
Every error names the argument and what is allowed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Sequence

from dpe_dagster.config import ConfigError, Environment, PoolConfig
from dpe_dagster.tags import TagError, parse_cpus, parse_memory_gb


class ContainerError(ConfigError):
    """A container's arguments cannot be used; the message names the argument."""


@dataclass(frozen=True)
class ContainerRequest:
    pool: str
    image: str
    command: tuple[str, ...]
    cpus: float
    memory_gb: float


def _node_shape(pool: PoolConfig) -> str:
    return f"one node of pool {pool.name} has {pool.room_cpus:g} CPUs and {pool.room_memory_gb:g} GB for runs"


def container_cpus(pool: PoolConfig, value: float | int | str | None) -> float:
    if value is None:
        return min(pool.default_run_cpus, pool.room_cpus)
    allowed = (f"must be a number in (0, {pool.room_cpus:g}] (a container runs on one node; {_node_shape(pool)}); "
               f"got {value!r}")
    try:
        cpus = parse_cpus(str(value))  # a bool reads as 'True': not a number
    except TagError:
        raise ContainerError(f"cpus: {allowed}") from None
    if cpus > pool.room_cpus:
        raise ContainerError(f"cpus: {allowed}")
    return cpus


def container_memory(pool: PoolConfig, value: float | int | str | None) -> float:
    if value is None:
        return min(pool.default_run_memory_gb, pool.room_memory_gb)
    allowed = (f"must be a size like '4g', '512m' or '2Gi' (a bare number is GB) of at most "
               f"{pool.room_memory_gb:g} GB (a container runs on one node; {_node_shape(pool)})")
    if isinstance(value, bool):
        raise ContainerError(f"memory: {allowed}; got {value!r}")
    try:
        memory = parse_memory_gb(str(value))
    except TagError:
        raise ContainerError(f"memory: {allowed}; got {value!r}") from None
    if memory > pool.room_memory_gb:
        raise ContainerError(f"memory: {allowed}; got {value!r}")
    return memory


def parse_command(value: str | Sequence[str]) -> tuple[str, ...]:
    command = tuple(shlex.split(value)) if isinstance(value, str) else tuple(value or ())
    if not command or not all(isinstance(part, str) and part for part in command):
        raise ContainerError(f"command: must be a non-empty list of non-empty strings (or one shell-style "
                             f"string); got {value!r}")
    return command


def container_request(env: Environment, pool: str, image: str, command: str | Sequence[str],
                      cpus: float | str | None = None, memory: float | str | None = None) -> ContainerRequest:
    if not isinstance(pool, str) or pool not in env.pools:
        raise ContainerError(f"pool: {pool!r} is not a node pool of environment {env.name!r}; "
                             f"allowed: {', '.join(sorted(env.pools))}")
    config = env.pools[pool]
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise ContainerError(f"image: must be an image reference like 'python:3.11-slim' or "
                             f"'registry.example.com/team/tool:1.2'; got {image!r}")
    return ContainerRequest(pool, image, parse_command(command), container_cpus(config, cpus),
                            container_memory(config, memory))
