"""The local variant: the command as a subprocess on this machine, through `PipesSubprocessClient`.

The image is ignored: there is no container runtime to count on here. `python` on the command's
PATH is this project's interpreter, which has dagster-pipes.

It does not ask the pool for room, on purpose. The local pool's nodes are Spark standalone
workers; a plain process cannot run on them, it runs beside the run on this machine. Starting a
worker for it would add an idle JVM that the sensor removes after its idle timeout and the ledger
charges as idle, while the process ran elsewhere. So the process is recorded in the ledger with
its pool, requests and times, and charged no node-seconds: it held no pool node.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, PipesSubprocessClient

from dpe_dagster.config import Environment
from dpe_dagster.containers.request import ContainerRequest
from dpe_dagster.containers.resource import PoolContainers, Ran, new_id


class LocalPoolContainers(PoolContainers):
    """Containers as local subprocesses (the environments without Kubernetes). The image is not used."""

    def _execute(self, context: AssetExecutionContext, environment: Environment, request: ContainerRequest,
                 env: dict[str, str], extras: dict[str, Any], ran: Ran) -> None:
        ran.pod = new_id("process")
        ran.charged_on_nodes = False
        context.log.info(f"dpe: {environment.name} runs containers as local processes: image {request.image} is not "
                         f"used; pool {request.pool} is recorded, not asked for room")
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        client = PipesSubprocessClient(env={"PATH": path})
        ran.started_at = time.time()
        ran.invocation = client.run(context=context, command=list(request.command), extras=extras, env=env)
        ran.ended_at = time.time()
