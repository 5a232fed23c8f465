"""This repository's code location: its example pipelines (`assets/`) with dpe's part, for the
environment `DPE_ENV` picks (`resources/`, default `local`)."""

from __future__ import annotations

from dagster import Definitions

from assets.containers import ASSETS as CONTAINER_ASSETS, containers_job
from assets.tpch import ASSETS, CHECKS, tpch_daily, tpch_job
from assets.tpch.data import TpchData
from dpe_dagster.config import Environment
from dpe_dagster.definitions import dpe_definitions
from dpe_dagster.paths import dpe_home
from resources import repository_environment, tpch_scale_factor


def build_definitions(env: Environment) -> Definitions:
    pipelines = Definitions(
        assets=[*ASSETS, *CONTAINER_ASSETS],
        asset_checks=CHECKS,
        jobs=[tpch_job, containers_job],
        schedules=[tpch_daily],
        resources={"tpch": TpchData(scale_factor=tpch_scale_factor(env), root=str(dpe_home() / "data" / "tpch"))},
    )
    return Definitions.merge(dpe_definitions(env), pipelines)


defs = build_definitions(repository_environment())
