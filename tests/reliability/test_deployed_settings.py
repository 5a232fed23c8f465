"""The suite's daemons run on the instance dpe deploys: the same `dagster.yaml` sections that
`dpe_dagster.instance` writes for the environment (run retries with failed steps not retried, run
monitoring with the deployed start timeout), only on a database of their own."""

from __future__ import annotations

import yaml

from dpe_dagster.instance import instance_config
from tests.fakes.aws_faults import FaultRates


def test_the_suite_instance_is_the_deployed_instance(deploy):
    d = deploy(FaultRates())
    written = yaml.safe_load((d.home / "dagster.yaml").read_text())
    assert written.pop("storage") == {"postgres": {"postgres_url": d.postgres_url}}
    assert written == instance_config(d.env)
    assert written["run_retries"]["retry_on_asset_or_op_failure"] is False
