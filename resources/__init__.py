"""This repository's environments: the list lives in pyproject.toml (`[tool.dpe.environments]`),
`DPE_ENV` picks one (default `local`). `local` is a YAML file (`resources/local.yaml`); `aws-sim`,
`staging` and `prod` are Python objects, because they compute settings (Spark on Kubernetes from
the pool shapes, names from the deployment's variables). Each is validated once by dpe's loader."""

from __future__ import annotations

import os
from pathlib import Path

from dpe_dagster.config import ConfigError, Environment
from dpe_dagster.environment import load_environment, project_environments

PROJECT = Path(__file__).resolve().parents[1]
ENVIRONMENTS, DEFAULT_ENVIRONMENT = project_environments(PROJECT)


def environment_name() -> str:
    return os.environ.get("DPE_ENV") or DEFAULT_ENVIRONMENT


def repository_environment(name: str | None = None) -> Environment:
    """One of this repository's environments by name (default: DPE_ENV, else the project's
    default), wherever the process runs from."""
    return load_environment(name=name or environment_name(), root=PROJECT)


def tpch_scale_factor(env: Environment) -> float:
    """The TPC-H scale factor this repository's example pipelines use: DPE_TPCH_SCALE_FACTOR, else
    1 on the clusters and 0.01 elsewhere."""
    raw = os.environ.get("DPE_TPCH_SCALE_FACTOR")
    if raw is None:
        return 1.0 if env.name in ("staging", "prod") else 0.01
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ConfigError(f"DPE_TPCH_SCALE_FACTOR: must be a number > 0; got {raw!r}")
    return value
