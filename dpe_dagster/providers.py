"""Providers: the kinds of machine pool dpe can size, found by entry point.

A provider is one package registered under the entry point group `dpe.providers` (dpe's own
providers are registered in its pyproject.toml the same way; docs/providers.md shows one whole):

    [project.entry-points."dpe.providers"]
    my_cloud = "my_package.pools:PROVIDER"

and the pool field `provider: my_cloud` picks it. A provider owns everything that differs between
clouds: opening a pool, the model of its pools' `settings` and of the environment blocks it owns,
reading many pools at once before a tick, the price of a node, which of its nodes a Kubernetes node
is, the commands it adds to the CLI and what stands in for its cloud in `dpe demo`. The core
(`pools/removal.py`, `scaling/`) gives every provider's pool the safe removal sequence, back-off
and scale-up health; no module outside a provider's package names a cloud.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Mapping, Sequence

from dpe_dagster.errors import ConfigError

if TYPE_CHECKING:
    from dpe_dagster.config import ConfigModel, Environment, PoolConfig
    from dpe_dagster.pools.base import Node, NodePool, Price

ENTRY_POINT_GROUP = "dpe.providers"


class Provider:
    """What dpe needs of a kind of pool. Subclass it and override what applies; the defaults are
    what a provider without that capability has."""

    name: str = ""
    # Scaling up starts processes on this machine (Spark workers): not in a process that only
    # submits runs (the UI, a sensor), where they would outlive their purpose.
    starts_processes_here: bool = False

    def open(self, pool: PoolConfig, env: Environment) -> NodePool:
        """The pool object for a configured pool; errors in its `settings` name the field."""
        raise NotImplementedError

    def look_ahead(self, pools: Sequence[NodePool]) -> None:
        """Before a tick looks at these pools of this provider (e.g. one API call for all)."""

    def pricer(self, env: Environment) -> Callable[[PoolConfig, Node], Price | None] | None:
        """The price of one node of this provider, when it knows better than the configured
        `price_per_node_hour` (None: it does not)."""
        return None

    def node_id(self, node: Mapping[str, Any]) -> str | None:
        """The id of this provider's node that a Kubernetes Node is (the API's object as a mapping:
        its `spec.providerID`, its annotations), or None for another provider's node."""
        return None

    def node_reserved(self, pool: PoolConfig) -> tuple[float, float]:
        """(CPUs, GB) of each of the pool's nodes that runs cannot have (a kubelet's reservation,
        DaemonSets), when the pool does not say: (0, 0) for a provider whose nodes run nothing else."""
        return 0.0, 0.0

    def spark_master(self, pool: PoolConfig) -> str | None:
        """The Spark master a run on this pool connects to, when the pool provides one."""
        return None

    def settings_model(self) -> type[ConfigModel] | None:
        """The model of a pool's `settings` for this provider (a `dpe_dagster.config.ConfigModel`):
        checked when the configuration loads and shown by `dpe schema`. None: free-form."""
        return None

    def commands(self) -> Sequence[Callable[..., Any]]:
        """Commands this provider adds to the `dpe` CLI: typer command functions, each named as
        its command (a cloud's warnings reader, say). Shown by `dpe --help` when installed."""
        return ()

    def stand_in(self, env: Environment) -> ContextManager[Any] | None:
        """What stands in for this provider's cloud while `dpe demo` runs `env` (an emulator on
        loopback, entered before anything opens a pool), or None: the environment talks to the
        real cloud."""
        return None

    def environment_models(self) -> Mapping[str, type[ConfigModel]]:
        """Blocks of the environment this provider owns, by key (top-level keys of the file, read
        with `Environment.block(key)`), checked when an environment with one of its pools loads."""
        return {}


@lru_cache(maxsize=1)
def providers() -> dict[str, Provider]:
    """The installed providers, by name."""
    found = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        provider = point.load()
        provider = provider() if isinstance(provider, type) else provider
        if not isinstance(provider, Provider):
            raise ConfigError(f"entry point {ENTRY_POINT_GROUP}:{point.name} ({point.value}) is not a "
                              "dpe_dagster.providers.Provider")
        found[point.name] = provider
    return found


def provider(name: str, where: str = "provider") -> Provider:
    """The provider called `name`; an error naming `where` and the installed providers otherwise."""
    installed = providers()
    if name not in installed:
        raise ConfigError(f"{where}: {unknown_provider(name)}")
    return installed[name]


def unknown_provider(name: str) -> str:
    """What is allowed where a provider is named."""
    return (f"must be one of {', '.join(sorted(providers())) or '(none installed)'}; got {name!r} "
            f"(providers are registered under the entry point group {ENTRY_POINT_GROUP})")
