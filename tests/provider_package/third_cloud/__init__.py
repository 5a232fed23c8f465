"""The `third` provider: a cloud whose machines are records in a folder (`settings.machines_dir`).

A machine is asked for by writing it; the cloud's agent (the test) boots it and says whether it
holds work. Everything dpe needs of a provider is here: the pool, its settings and environment
models, its price list, its node ids on Kubernetes and a command of its own."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from dpe_dagster.config import ConfigModel
from dpe_dagster.pools.base import PENDING, RUNNING, Node, PoolError, Price
from dpe_dagster.pools.removal import SafeRemoval
from dpe_dagster.providers import Provider

LOOKED_AHEAD: list[list[str]] = []


class ThirdSettings(ConfigModel):
    """`pools.<name>.settings` of a `third` pool."""

    machines_dir: str
    min_size: int = 0


class ThirdEnvironment(ConfigModel):
    """The environment's `third:` block."""

    region: str
    price_per_hour: Optional[float] = None


class Machines:
    """The cloud's records of one pool's machines: {id: {"launched_at", "booted", "busy"}}."""

    def __init__(self, folder: Path):
        self.file = folder / "machines.json"
        folder.mkdir(parents=True, exist_ok=True)

    def read(self) -> dict[str, dict]:
        return json.loads(self.file.read_text()) if self.file.exists() else {}

    def write(self, machines: dict[str, dict]) -> None:
        self.file.write_text(json.dumps(machines))


class ThirdPool(SafeRemoval):
    def __init__(self, config, settings: ThirdSettings):
        self.name, self.config, self.settings = config.name, config, settings
        self.machines = Machines(Path(settings.machines_dir))

    def target(self) -> int:
        return len(self.machines.read())

    def set_target(self, size: int) -> None:
        machines = self.machines.read()
        size = min(max(size, self.settings.min_size), self.config.max_size)
        for number in range(len(machines), size):
            machines[f"third-{time.time_ns()}-{number}"] = {"launched_at": time.time(), "booted": False, "busy": False}
        self.machines.write(machines)

    def nodes(self) -> list[Node]:
        return [Node(id=node_id, state=RUNNING if machine["booted"] else PENDING, launched_at=machine["launched_at"],
                     busy=machine["busy"], lifecycle=self.config.lifecycle, instance_type="t1.small", zone="zone-a")
                for node_id, machine in sorted(self.machines.read().items())]

    def run_nodes(self) -> dict[str, str]:
        return {}

    # the removal sequence's primitives
    def removal_members(self) -> tuple[list[str], int, int]:
        machines = self.machines.read()
        return list(machines), len(machines), self.settings.min_size

    def busy_now(self, node_ids):
        return {node_id: machine["busy"] for node_id, machine in self.machines.read().items() if node_id in node_ids}

    def terminate(self, node_id: str, lower_target: bool) -> None:
        machines = self.machines.read()
        if node_id not in machines:
            raise PoolError(f"pool {self.name}: machine {node_id} is gone already")
        del machines[node_id]
        if not lower_target:
            machines[f"third-{time.time_ns()}"] = {"launched_at": time.time(), "booted": False, "busy": False}
        self.machines.write(machines)


def third_machines(pool: str = typer.Argument(..., help="A pool of provider third.")) -> None:
    """List a third pool's machines."""
    from dpe_dagster.environment import load_environment

    env = load_environment()
    for node in ThirdProvider().open(env.pool(pool), env).nodes():
        print(node.id, node.state, "busy" if node.busy else "idle")


class ThirdProvider(Provider):
    name = "third"

    def open(self, pool, env):
        return ThirdPool(pool, ThirdSettings.model_validate(dict(pool.settings)))

    def settings_model(self):
        return ThirdSettings

    def environment_models(self):
        return {"third": ThirdEnvironment}

    def look_ahead(self, pools):
        LOOKED_AHEAD.append([p.name for p in pools])

    def pricer(self, env):
        listed = env.block("third").get("price_per_hour")
        return None if listed is None else (lambda pool, node: Price(float(listed), "third-price-list"))

    def node_id(self, node):
        provider_id = (node.get("spec") or {}).get("providerID") or ""
        return provider_id.removeprefix("third://") if provider_id.startswith("third://") else None

    def commands(self):
        return (third_machines,)


PROVIDER = ThirdProvider()
