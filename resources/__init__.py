"""Per-environment wiring. `DPE_ENV` picks one (default `local`); each module holds one plain
dict, validated once by `dpe_dagster.config.parse_environment`."""

from __future__ import annotations

import importlib
import os

from dpe_dagster.config import ConfigError, Environment, parse_environment

ENVIRONMENTS = {
    "local": "resources.local",
    "aws-sim": "resources.aws_sim",
    "staging": "resources.staging",
    "prod": "resources.prod",
}
DEFAULT_ENVIRONMENT = "local"


def environment_name() -> str:
    return os.environ.get("DPE_ENV") or DEFAULT_ENVIRONMENT


def load_environment(name: str | None = None) -> Environment:
    name = name or environment_name()
    if name not in ENVIRONMENTS:
        raise ConfigError(f"DPE_ENV: unknown environment {name!r}; allowed: {', '.join(sorted(ENVIRONMENTS))}")
    module = importlib.import_module(ENVIRONMENTS[name])
    return parse_environment(name, module.environment())
