"""The run launcher for environments without Kubernetes: Dagster's default launcher (each run a
subprocess of its code server), plus an immediate scale-up of the run's node pool."""

from __future__ import annotations

from typing import Any, Mapping

from dagster import DefaultRunLauncher
from dagster._core.launcher.base import LaunchRunContext
from dagster._serdes.config_class import ConfigurableClassData

from dpe_dagster.environment import CONFIG_FIELDS, load_environment
from dpe_dagster.launch.capacity import ask_for_capacity


class PoolRunLauncher(DefaultRunLauncher):
    def __init__(self, inst_data: ConfigurableClassData | None = None, config: str | None = None,
                 environment: str | None = None):
        super().__init__(inst_data=inst_data)
        self._config = config
        self._environment = environment

    @classmethod
    def config_type(cls):
        return CONFIG_FIELDS

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, config=config_value.get("config"), environment=config_value.get("environment"))

    def launch_run(self, context: LaunchRunContext) -> None:
        env = load_environment(self._config, name=self._environment)
        if ask_for_capacity(self._instance, context.dagster_run, env):
            super().launch_run(context)
