"""`dpe_dagster.NodePools`: dpe as a Dagster Component. In a `dg` project, a `defs.yaml`

    type: dpe_dagster.NodePools
    attributes:
      config: pools.yaml

adds the node pools' sensors, the usage ledger's assets and checks and dpe's resources
(`dpe_dagster.definitions.dpe_definitions`) for the configuration in `pools.yaml` (relative to the
`defs.yaml` folder; or `module:attribute`)."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from dpe_dagster.definitions import dpe_definitions
from dpe_dagster.environment import is_python_source, load_environment


@dataclass
class NodePools(dg.Component, dg.Resolvable):
    """Node pools that scale for the project's runs, and the usage ledger of what every run cost.

    `config`: the pools file (YAML, relative to this component's folder) or `module:attribute`."""

    config: str

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        source = self.config if is_python_source(self.config) else str((context.path / self.config).resolve())
        return dpe_definitions(load_environment(source))
