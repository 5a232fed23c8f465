"""Spark standalone workers on this machine as a node pool (provider `local`)."""

from __future__ import annotations

from dpe_dagster.providers import Provider


class LocalProvider(Provider):
    name = "local"
    starts_processes_here = True

    def open(self, pool, env):
        from dpe_dagster.pools.local.standalone import LocalSparkPool

        return LocalSparkPool.from_config(pool)

    def settings_model(self):
        from dpe_dagster.pools.local.standalone import LocalSparkSettings

        return LocalSparkSettings

    def spark_master(self, pool):
        from dpe_dagster.pools.local.standalone import LocalSparkPool

        return LocalSparkPool.from_config(pool).master_url


PROVIDER = LocalProvider()
