"""`dpe_dagster.NodePools`: dpe as a Dagster Component. In a `dg` project, a `defs.yaml`

    type: dpe_dagster.NodePools

adds the node pools' sensors, the usage ledger's assets and checks and dpe's resources
(`dpe_dagster.definitions.dpe_definitions`) for the project's configuration (`[tool.dpe] config = "pools.yaml"` in its
pyproject.toml, or `DPE_CONFIG`), or the one its `config` attribute names (a YAML file relative to
the `defs.yaml` folder, or `module:attribute`)."""


from dataclasses import dataclass
from typing import Optional

import dagster as dg

from dpe_dagster.definitions import dpe_definitions
from dpe_dagster.environment import is_python_source, load_environment


@dataclass
class NodePools(dg.Component, dg.Resolvable):
    """Node pools that scale for the project's runs, and the usage ledger of what every run cost.

    `config`: the pools file (YAML, relative to this component's folder) or `module:attribute`;
    by default the project's (`[tool.dpe]` in pyproject.toml, or `DPE_CONFIG`)."""

    config: Optional[str] = None  # a runtime annotation: Dagster reads it to build the YAML schema

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        if self.config is None:
            return dpe_definitions(load_environment(root=context.project_root))
        source = self.config if is_python_source(self.config) else str((context.path / self.config).resolve())
        return dpe_definitions(load_environment(source))
