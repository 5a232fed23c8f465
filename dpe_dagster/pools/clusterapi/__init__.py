"""Cluster API MachineDeployments as node pools (provider `clusterapi`): `pool.py`. The kubernetes
client is imported only when a pool is opened."""

from __future__ import annotations

from dpe_dagster.providers import Provider


class ClusterApiProvider(Provider):
    name = "clusterapi"

    def open(self, pool, env):
        from dpe_dagster.pools.clusterapi.pool import ClusterApiPool

        return ClusterApiPool.from_config(pool)

    def settings_model(self):
        from dpe_dagster.pools.clusterapi.pool import ClusterApiSettings

        return ClusterApiSettings

    def node_id(self, node):
        """The Machine a Node is: Cluster API annotates each Node it joined with its Machine's name."""
        from dpe_dagster.pools.clusterapi.pool import machine_of

        return machine_of(node)

    def look_ahead(self, pools):
        from dpe_dagster.kube.nodes import begin_look

        begin_look()  # a tick reads the cluster's pods afresh, once, for all its pools


PROVIDER = ClusterApiProvider()
