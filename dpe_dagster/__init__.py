"""dpe: node pools that scale for Dagster runs (spot first, back to zero when the queue is idle),
and a usage ledger of what every run used and cost, in Dagster's event log.

`dpe_dagster.NodePools` is the Dagster Component; `dpe_dagster.definitions.dpe_definitions` the
same in Python; `dpe_dagster.environment.load_environment` reads a pools configuration."""


def __getattr__(name: str):
    # Lazy: importing any dpe module (a run worker, the CLI) must not build the Component's imports.
    if name == "NodePools":
        from dpe_dagster.component import NodePools

        return NodePools
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])  # so Dagster's component registry sees NodePools


__all__ = ["NodePools"]
